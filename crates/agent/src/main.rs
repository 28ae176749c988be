//! `multicloud-agent`: the node-local agent's command line.

use multicloud_agent::{crd, keys};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use multicloud_core::token::Scope;
use multicloud_agent::{admin, edge_file, metrics, reconcile, remote, standalone};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "multicloud-agent", version, about = "Istio Multicloud node-local agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Create the federation Ed25519 keypair at PATH (if absent) and print its public key (PEM).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the IstioMulticloud CRD (YAML), as deploy/ carries it.
    Crd,
    /// Mint a federation token signed with the key at PATH.
    Token {
        #[arg(long)]
        key: PathBuf,
        /// This cluster's UUID (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// The remote cluster's UUID (the token's `aud`).
        #[arg(long)]
        aud: String,
        /// `private-multicluster` or `api`.
        #[arg(long, default_value = "private-multicluster")]
        scope: String,
        /// Lifetime in seconds (at most 60 for metadata tokens).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Standalone mode: read local facts and IstioMulticloud objects from this YAML/JSON file (re-read on change).
    #[arg(long, env = "MULTICLOUD_STANDALONE")]
    standalone: PathBuf,
    /// The federation key (PKCS#8 PEM, mode 0600); generated on first start.
    #[arg(long, env = "MULTICLOUD_KEY")]
    key: PathBuf,
    /// Address of the agent's HTTP port (/healthz, /readyz, /metrics, /status).
    #[arg(long, default_value = "127.0.0.1:15090")]
    http: std::net::SocketAddr,
    /// Write the bound HTTP address here (useful with port 0).
    #[arg(long)]
    http_address_file: Option<PathBuf>,
    /// Write the gateway filter's ECDS resource (binary DiscoveryResponse) here.
    #[arg(long)]
    edge_ecds_file: PathBuf,
    /// Path of the filter module as the gateway sees it.
    #[arg(long)]
    filter_wasm: String,
    /// Also write every object's status to this JSON file.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Steady refresh of healthy peers, seconds.
    #[arg(long, default_value_t = 30)]
    refresh_seconds: u64,
    /// First retry delay after a failure, milliseconds (doubles up to --backoff-cap-ms, with jitter).
    #[arg(long, default_value_t = 1000)]
    backoff_base_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    backoff_cap_ms: u64,
    /// Connect and total timeouts of a metadata fetch, milliseconds.
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    fetch_timeout_ms: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logs(&args.log_format)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run(args))?;
        }
        Command::Keygen { key } => {
            let k = keys::load_or_generate(&key)?;
            print!("{}", multicloud_core::pem::ed25519_public_key_to_pem(&k.verifying_key()));
        }
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Token { key, sub, aud, scope, ttl } => {
            let scope = Scope::parse(&scope).with_context(|| format!("unknown scope {scope:?}: use private-multicluster or api"))?;
            for (name, v) in [("--sub", &sub), ("--aud", &aud)] {
                anyhow::ensure!(multicloud_core::metadata::is_uuid(v), "{name} {v:?} is not a cluster UUID");
            }
            anyhow::ensure!(
                scope != Scope::PrivateMulticluster || (1..=keys::MAX_METADATA_TOKEN_TTL_SECS).contains(&ttl),
                "--ttl must be 1-60 s for metadata tokens"
            );
            let k = keys::load_or_generate(&key)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
            println!("{}", keys::mint(&k, &sub, &aud, scope, now, ttl));
        }
    }
    Ok(())
}

fn init_logs(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format {other:?}: use text or json"),
    }
    Ok(())
}

/// Edge sink that also marks the agent ready once the first configuration is written.
struct ReadyOnApply {
    inner: edge_file::EcdsFile,
    admin: Arc<admin::AdminState>,
}

impl reconcile::EdgeSink for ReadyOnApply {
    fn apply<'a>(&'a self, config: &'a multicloud_core::edge::EdgeConfig) -> multicloud_agent::source::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.apply(config).await?;
            self.admin.ready.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let key = keys::load_or_generate(&args.key)?;
    tracing::info!(key = %args.key.display(), "federation key loaded (public key is published in public.json)");
    let metrics = Arc::new(metrics::Metrics::default());
    let board = Arc::new(standalone::StatusBoard::new(args.status_file.clone()));
    let source_error = Arc::new(Mutex::new(None));
    let admin_state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        board: board.clone(),
        ready: false.into(),
        source_error: source_error.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("cannot listen on --http {}", args.http))?;
    let bound = listener.local_addr()?;
    if let Some(p) = &args.http_address_file {
        standalone::write_atomically(p, bound.to_string().as_bytes())?;
    }
    tracing::info!(address = %bound, "HTTP port: /healthz /readyz /metrics /status");
    tokio::spawn(admin::serve(listener, admin_state.clone()));

    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(standalone::watch_file(args.standalone.clone(), tx, source_error));
    let policy = remote::Policy {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        total_timeout: Duration::from_millis(args.fetch_timeout_ms),
    };
    let reconciler = reconcile::Reconciler {
        key,
        factory: remote::factory(policy),
        status: board,
        edge: Arc::new(ReadyOnApply { inner: edge_file::EcdsFile::new(args.edge_ecds_file, args.filter_wasm), admin: admin_state }),
        metrics,
        timing: reconcile::Timing {
            refresh: Duration::from_secs(args.refresh_seconds.max(1)),
            backoff_base: Duration::from_millis(args.backoff_base_ms.max(10)),
            backoff_cap: Duration::from_millis(args.backoff_cap_ms.max(args.backoff_base_ms)),
            token_ttl_secs: keys::MAX_METADATA_TOKEN_TTL_SECS,
        },
        spiffe: multicloud_core::edge::SpiffeSettings::default(),
    };
    tokio::select! {
        _ = reconciler.run(rx) => Ok(()),
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, exiting"); Ok(()) }
    }
}
