//! `multicloud-agent`: the node-local agent's command line.

use multicloud_agent::cli::inspect as cli;
use multicloud_agent::{crd, keys};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use multicloud_agent::exchange::factory as remote;
use multicloud_agent::sinks::ecds_file as edge_file;
use multicloud_agent::sources::standalone;
use multicloud_agent::{admin, metrics, reconcile};
use multicloud_core::token::Scope;
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
    Run(Box<RunArgs>),
    /// Create the federation Ed25519 keypair at PATH (if absent) and print its public key (PEM).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the IstioMulticloud CRD (YAML), as deploy/ carries it.
    Crd,
    /// Print the objects to install (deploy/'s kustomize base, plus components the flags ask
    /// for) as multi-document YAML with these values in place; pipe it to `kubectl apply -f -`.
    Install(multicloud_agent::cli::install::InstallArgs),
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
    /// One row per peer from a running agent's HTTP port: conditions, last fetch, the peer's root
    /// fingerprint, endpoints pushed, xDS ACK state.
    /// Exit code: 0 every peer Ready, 1 some peer not Ready, 2 the agent cannot be reached.
    Status {
        /// The agent's HTTP port (its --http).
        #[arg(long, default_value = cli::DEFAULT_AGENT)]
        agent: String,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: cli::Output,
    },
    /// Probe one peer end to end: the object, public metadata, private metadata (a fresh token),
    /// the API proxy, the gateways' mesh port. Each step prints PASS/FAIL/SKIP with what to do.
    /// Exit code: 0 when no step fails, 1 otherwise.
    Check {
        /// The IstioMulticloud object naming the peer.
        peer: String,
        /// The agent's HTTP port (used when no --standalone file is given).
        #[arg(long, default_value = cli::DEFAULT_AGENT)]
        agent: String,
        /// The standalone file the agent runs with (objects and this cluster's UUID).
        #[arg(long, env = "MULTICLOUD_STANDALONE", conflicts_with = "kubernetes")]
        standalone: Option<PathBuf>,
        /// Standalone: this cluster's federation key (the agent's --key).
        #[arg(long, env = "MULTICLOUD_KEY", required_unless_present = "kubernetes")]
        key: Option<PathBuf>,
        /// Read the object, this cluster's facts and the key from the API server, as the agent
        /// in Kubernetes mode does (in-cluster config or KUBECONFIG; the Kubernetes flags below
        /// must match the agent's).
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        kube: KubeArgs,
        /// HOST=IP:PORT: reach the API proxy HOST at IP:PORT (like curl --resolve).
        #[arg(long)]
        api_host_override: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: cli::Output,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["standalone", "kubernetes"])))]
struct RunArgs {
    /// Standalone mode: read local facts and IstioMulticloud objects from this YAML/JSON file (re-read on change).
    #[arg(long, env = "MULTICLOUD_STANDALONE")]
    standalone: Option<PathBuf>,
    /// Kubernetes mode: watch IstioMulticloud objects and local facts through the API server.
    #[arg(long)]
    kubernetes: bool,
    /// Standalone mode: the federation key file (PKCS#8 PEM, mode 0600), generated on first start.
    /// Kubernetes mode keeps it in the Secret istio-multicloud-federation-key.
    #[arg(long, env = "MULTICLOUD_KEY", required_if_eq("kubernetes", "false"))]
    key: Option<PathBuf>,
    #[command(flatten)]
    kube: KubeArgs,
    /// Address of the agent's HTTP port (/healthz, /readyz, /metrics, /status).
    #[arg(long, default_value = "127.0.0.1:15090")]
    http: std::net::SocketAddr,
    /// Write the bound HTTP address here (useful with port 0).
    #[arg(long)]
    http_address_file: Option<PathBuf>,
    /// Also write the gateway filter's ECDS resource (binary DiscoveryResponse) here, for a
    /// gateway that reads it from a file instead of ADS.
    #[arg(long)]
    edge_ecds_file: Option<PathBuf>,
    /// Serve xDS (ADS, state of the world and delta) on this node-local TCP address, over
    /// mutual TLS: clients present a certificate chained to this cluster's Istio root.
    #[arg(long)]
    xds: Option<std::net::SocketAddr>,
    /// SPIFFE ID that may receive the gateway's resources (the edge filter's configuration,
    /// the API proxy credential, the mesh listener and gateway certificate). Repeatable.
    #[arg(long = "xds-gateway-identity", default_value = DEFAULT_GATEWAY_IDENTITY, value_parser = parse_spiffe_id)]
    xds_gateway_identity: Vec<String>,
    /// The xDS port's serving certificate chain (PEM); without it a self-signed one is generated at start.
    #[arg(long, requires = "xds_key")]
    xds_cert: Option<PathBuf>,
    #[arg(long, requires = "xds_cert")]
    xds_key: Option<PathBuf>,
    /// Write the bound xDS TCP address here (useful with port 0).
    #[arg(long)]
    xds_address_file: Option<PathBuf>,
    /// SDS name of the workload certificate sidecars present to peers (Istio: "default").
    #[arg(long, default_value = "default")]
    workload_cert_secret: String,
    /// Cluster that serves the workload certificate over SDS (Istio: "sds-grpc"; "ads" = the agent).
    #[arg(long, default_value = "sds-grpc")]
    workload_cert_sds_cluster: String,
    /// Standalone mode without istio-agent: serve this workload certificate chain (PEM) to
    /// sidecars as SDS secret --workload-cert-secret over ADS (use with --workload-cert-sds-cluster ads).
    #[arg(long, requires = "workload_key")]
    workload_cert: Option<PathBuf>,
    #[arg(long, requires = "workload_cert")]
    workload_key: Option<PathBuf>,
    /// Standalone mode without istio-agent: the gateway's own workload certificate chain (PEM),
    /// served to the gateway as SDS secret --workload-cert-secret (identity-enforcing mesh port).
    #[arg(long, requires = "gateway_key")]
    gateway_cert: Option<PathBuf>,
    #[arg(long, requires = "gateway_cert")]
    gateway_key: Option<PathBuf>,
    /// How sidecars share a service between its local endpoints and peers' copies:
    /// balanced (one pool, weighted by ready endpoints) or local-first (peers only when
    /// local endpoints are missing or unhealthy). See docs/traffic.md.
    #[arg(long, default_value = "balanced", value_parser = parse_sameness)]
    sameness: multicloud_proto::traffic::Sameness,
    /// Also serve one cluster per peer and service port (outbound|<port>||<host>|multicloud-<peer>)
    /// besides the merged one (outbound|<port>||<host>|multicloud) that holds every copy.
    #[arg(long)]
    per_peer_clusters: bool,
    /// Serve the gateway's mesh-port listener (LDS, name multicloud-mesh) bound here; the
    /// mode comes from the local facts' meshMode. Leave unset where istiod programs the port.
    #[arg(long)]
    mesh_listen: Option<std::net::SocketAddr>,
    /// The filter module (.wasm) on the agent's filesystem: the agent sends it
    /// inside the filter's ECDS resource, so the gateway needs no file of its
    /// own (deploy/ uses this; the agent image ships the module).
    #[arg(long, conflicts_with = "filter_wasm", required_unless_present = "filter_wasm")]
    filter_module: Option<PathBuf>,
    /// Instead: the path of the filter module on the gateway's filesystem
    /// (the gateway must have the file there).
    #[arg(long)]
    filter_wasm: Option<String>,
    /// Also write every object's status to this JSON file.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Kubernetes mode: how often the local facts (root CA, gateway, exported services) are re-read, seconds.
    #[arg(long, default_value_t = 10)]
    facts_seconds: u64,
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
    /// The API proxy's own credential (standalone: a file holding the ServiceAccount token with
    /// read-only RBAC, see deploy/); re-read when it changes. Served to the gateway as SDS
    /// generic secret `multicloud-api-proxy-credential`, which the gateway's credential
    /// injector attaches to requests the API guard let through.
    #[arg(long)]
    api_proxy_credential: Option<PathBuf>,
    /// Write each peer's Istio remote secret (a kubeconfig to the peer's API proxy) as
    /// DIR/<object>.kubeconfig (mode 0600).
    #[arg(long)]
    remote_secrets_dir: Option<PathBuf>,
    /// Lifetime of the `scope: api` token in remote secrets; re-issued with a third left.
    #[arg(long, default_value_t = 24 * 3600)]
    api_token_ttl_seconds: i64,
    /// TEST BED ONLY: HOST=ADDR connects the remote secret of a peer whose apiHost is HOST[:port]
    /// to ADDR instead (the kubeconfig keeps HOST as `tls-server-name`), like curl --resolve.
    #[arg(long)]
    api_host_override: Vec<String>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[derive(clap::Args)]
struct KubeArgs {
    /// Kubernetes mode: the agent's namespace (Lease, key Secret, gateway Service, root CA ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    namespace: String,
    /// Kubernetes mode: this replica's name in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "multicloud-agent")]
    pod_name: String,
    /// Kubernetes mode: label selector of the ingress gateway Service (k=v,...).
    #[arg(long, default_value = "istio=ingressgateway")]
    gateway_selector: String,
    /// Kubernetes mode: Services labelled <export-label>=true are exported to peers.
    #[arg(long, default_value = "istio-multicloud.dev/export")]
    export_label: String,
    /// Kubernetes mode: this cluster's Istio network name. Default: the
    /// `topology.istio.io/network` label of --namespace, else `network-<cluster UUID>`.
    #[arg(long, default_value = "")]
    network_name: String,
    /// Kubernetes mode: the API proxy's host[:port] as peers reach it.
    #[arg(long, default_value = "")]
    api_host: String,
    /// Kubernetes mode: gateway addresses to advertise instead of the Service's (host:port, repeatable).
    #[arg(long)]
    advertise: Vec<String>,
    /// Kubernetes mode: the filter is attached by this Istio WasmPlugin (in --namespace) instead of
    /// the EnvoyFilter; the lease holder writes the edge configuration into its spec.pluginConfig.
    #[arg(long)]
    wasmplugin: Option<String>,
}

/// The identity of Istio's default ingress gateway (Helm chart `gateway`, service account
/// `istio-ingressgateway-service-account` in `istio-system`).
const DEFAULT_GATEWAY_IDENTITY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

fn parse_spiffe_id(s: &str) -> Result<String, String> {
    match s.strip_prefix("spiffe://") {
        Some(rest) if rest.contains('/') && !rest.starts_with('/') => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a SPIFFE ID: want spiffe://<trust domain>/<path>, e.g. {DEFAULT_GATEWAY_IDENTITY}")),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logs(&args.log_format)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run(*args))?;
        }
        Command::Keygen { key } => {
            let k = keys::load_or_generate(&key)?;
            print!("{}", multicloud_core::pem::ed25519_public_key_to_pem(&k.verifying_key()));
        }
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Install(args) => print!("{}", multicloud_agent::cli::install::render(&args)?),
        Command::Status { agent, output } => std::process::exit(cli::status(&agent, output)),
        Command::Check { peer, agent, standalone, key, kubernetes, kube, api_host_override, output } => {
            let source = if kubernetes {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                cli::CheckSource::Kubernetes(rt.block_on(async {
                    let client = kube::Client::try_default().await.map_err(|e| {
                        (
                            "KubeconfigInvalid".to_string(),
                            format!("cannot build a Kubernetes client: {e}"),
                            "run in the cluster or set KUBECONFIG".to_string(),
                        )
                    })?;
                    let opts =
                        kube_options(&kube).map_err(|e| ("FlagsInvalid".to_string(), format!("{e:#}"), "fix the flag".to_string()))?;
                    multicloud_agent::cli::check_kube::check_inputs(client, &opts, &peer).await
                }))
            } else {
                cli::CheckSource::Standalone { file: standalone.as_deref(), key: key.as_deref().unwrap_or(std::path::Path::new("")) }
            };
            let args = cli::CheckArgs { peer: &peer, agent: &agent, source, api_host_override: &api_host_override };
            std::process::exit(cli::check(&args, output))
        }
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

/// Kubernetes mode: status to the object (with the Lease) and to the board behind `/status`.
struct Both(Arc<dyn multicloud_agent::sinks::StatusSink>, Arc<multicloud_agent::sinks::status::StatusBoard>);

impl multicloud_agent::sinks::StatusSink for Both {
    fn publish<'a>(&'a self, name: &'a str, status: &'a crd::IstioMulticloudStatus) -> multicloud_agent::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.1.publish(name, status).await?;
            self.0.publish(name, status).await
        })
    }
}

/// Marks the agent ready once the first data plane configuration was applied
/// (it runs after the other sinks, which stop the chain on error).
struct ReadyOnApply {
    admin: Arc<admin::AdminState>,
}

impl reconcile::DataPlaneSink for ReadyOnApply {
    fn apply<'a>(&'a self, dp: &'a reconcile::DataPlane) -> multicloud_agent::BoxFuture<'a, Result<()>> {
        let _ = dp;
        Box::pin(async move {
            self.admin.ready.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}

fn kube_options(k: &KubeArgs) -> Result<multicloud_agent::kube::KubeOptions> {
    let mut gateway_selector = std::collections::BTreeMap::new();
    for kv in k.gateway_selector.split(',').filter(|s| !s.is_empty()) {
        let (key, v) = kv.split_once('=').with_context(|| format!("--gateway-selector {kv:?}: want key=value"))?;
        gateway_selector.insert(key.to_string(), v.to_string());
    }
    let mut advertise = Vec::new();
    for a in &k.advertise {
        let (host, port) = a.rsplit_once(':').with_context(|| format!("--advertise {a:?}: want host:port"))?;
        let port: u16 = port.parse().with_context(|| format!("--advertise {a:?}: bad port"))?;
        advertise.push(multicloud_core::metadata::IngressGateway { address: host.to_string(), port });
    }
    Ok(multicloud_agent::kube::KubeOptions {
        namespace: k.namespace.clone(),
        lease_name: "istio-multicloud-agent".into(),
        holder_identity: k.pod_name.clone(),
        gateway_selector,
        export_label: k.export_label.clone(),
        network_name: k.network_name.clone(),
        api_host: k.api_host.clone(),
        advertise,
    })
}

async fn run(args: RunArgs) -> Result<()> {
    use multicloud_agent::sources::kubernetes as kube_mode;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let source_error = Arc::new(Mutex::new(None));
    let board = Arc::new(multicloud_agent::sinks::status::StatusBoard::new(args.status_file.clone()));
    let mut kube_client: Option<(kube::Client, String)> = None;
    let mut wasmplugin_sink: Option<Arc<dyn reconcile::DataPlaneSink>> = None;
    let mut lease_guard: Option<Arc<multicloud_agent::kube::lease::LeaseGuard>> = None;
    let metrics = Arc::new(metrics::Metrics::default());
    let (key, status_sink): (_, Arc<dyn multicloud_agent::sinks::StatusSink>) = if args.kubernetes {
        let client = kube::Client::try_default().await.context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
        let opts = kube_options(&args.kube)?;
        kube_client = Some((client.clone(), opts.namespace.clone()));
        let key = multicloud_agent::kube::key_secret::SecretKeyStore::new(client.clone(), &opts).load_or_generate().await?;
        let lease = Arc::new(multicloud_agent::kube::lease::LeaseGuard::new(client.clone(), &opts));
        lease.clone().spawn_renewal();
        if let Some(name) = &args.kube.wasmplugin {
            wasmplugin_sink = Some(Arc::new(multicloud_agent::sinks::wasmplugin::WasmPluginSink::new(
                client.clone(),
                &opts.namespace,
                name,
                lease.clone(),
            )));
        }
        let kube_status =
            Arc::new(multicloud_agent::sinks::status::KubeStatusSink::new(client.clone(), lease.clone(), Some(metrics.clone())));
        {
            let l = lease.clone();
            metrics.set_leader_source(Box::new(move || l.is_leader()));
        }
        lease_guard = Some(lease);
        tokio::spawn(kube_mode::desired_state(client, opts, Duration::from_secs(args.facts_seconds.max(1)), tx, Some(kube_status.clone())));
        (key, Arc::new(Both(kube_status, board.clone())))
    } else {
        let file = args.standalone.clone().context("--standalone FILE is required without --kubernetes")?;
        let key_path = args.key.clone().context("--key FILE is required in standalone mode")?;
        let key = keys::load_or_generate(&key_path)?;
        tokio::spawn(standalone::watch_file(file, tx, source_error.clone()));
        (key, board.clone())
    };
    tracing::info!("federation key loaded (its public key is published in public.json)");
    let access = multicloud_agent::xds::AccessPolicy {
        restricted: [(multicloud_agent::xds::groups::GATEWAY_GROUP.to_string(), args.xds_gateway_identity.iter().cloned().collect())]
            .into(),
    };
    let xds_server = multicloud_agent::xds::XdsServer::with_access(multicloud_agent::xds::groups::classify(), access);
    {
        let s = xds_server.clone();
        metrics.set_nack_source(Box::new(move || s.nack_count()));
        let s = xds_server.clone();
        metrics.set_xds_refusal_source(Box::new(move || s.refusals().into_iter().map(|(r, n)| (r.label(), n)).collect()));
    }
    let xds_tls = match (&args.xds_cert, &args.xds_key) {
        (Some(c), Some(k)) => multicloud_agent::xds::tls::ServingCert::from_files(c, k)?,
        _ => multicloud_agent::xds::tls::ServingCert::self_signed()?,
    };
    let xds_tls = Arc::new(multicloud_agent::xds::tls::XdsTls::new(xds_tls)?);
    let admin_state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        board: board.clone(),
        ready: false.into(),
        source_error: source_error.clone(),
        xds: Some(xds_server.clone()),
    });
    if let Some(addr) = args.xds {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --xds {addr}"))?;
        let bound = l.local_addr()?;
        if let Some(p) = &args.xds_address_file {
            multicloud_agent::sinks::write_atomically(p, bound.to_string().as_bytes())?;
        }
        tracing::info!(
            address = %bound,
            gateway_identities = ?args.xds_gateway_identity,
            serving_cert = if args.xds_cert.is_some() { "--xds-cert" } else { "self-signed" },
            "serving xDS (ADS) on TCP with mutual TLS"
        );
        let (s, tls) = (xds_server.clone(), xds_tls.clone());
        tokio::spawn(async move {
            if let Err(e) = s.serve_tls(l, tls).await {
                tracing::error!("xDS server stopped: {e:#}");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("cannot listen on --http {}", args.http))?;
    let bound = listener.local_addr()?;
    if let Some(p) = &args.http_address_file {
        multicloud_agent::sinks::write_atomically(p, bound.to_string().as_bytes())?;
    }
    tracing::info!(address = %bound, "HTTP port: /healthz /readyz /metrics /status");
    tokio::spawn(admin::serve(listener, admin_state.clone()));

    let module = match (&args.filter_module, &args.filter_wasm) {
        (Some(file), _) => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read --filter-module {}", file.display()))?;
            let m = multicloud_proto::edge_filter::Module::inline(bytes)
                .map_err(|e| anyhow::anyhow!("--filter-module {}: {e}; give the built multicloud_filter.wasm", file.display()))?;
            tracing::info!(module = %file.display(), "the filter module goes to the gateway inside its ECDS resource");
            m
        }
        (None, Some(path)) => multicloud_proto::edge_filter::Module::Path(path.clone()),
        (None, None) => anyhow::bail!("give --filter-module FILE (sent to the gateway) or --filter-wasm PATH (on the gateway)"),
    };
    let policy = remote::Policy {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        total_timeout: Duration::from_millis(args.fetch_timeout_ms),
    };
    let api_credential = match &args.api_proxy_credential {
        Some(p) => Some(multicloud_agent::sinks::xds::ApiCredential::load(p.clone())?),
        None => None,
    };
    // Kubernetes mode always writes the remote Secrets; standalone mode only with --remote-secrets-dir.
    let remote_dir = match (&args.remote_secrets_dir, &kube_client) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(_)) => Some(PathBuf::new()),
        (None, None) => None,
    };
    let remote_secrets = match &remote_dir {
        Some(dir) => {
            let mut host_overrides = std::collections::BTreeMap::new();
            for o in &args.api_host_override {
                let (h, a) = o.split_once('=').with_context(|| format!("--api-host-override {o:?}: want HOST=ADDR"))?;
                host_overrides.insert(h.to_string(), a.to_string());
            }
            let rs = multicloud_agent::sinks::remote_secret::RemoteSecrets::new(
                key.clone(),
                multicloud_agent::sinks::remote_secret::RemoteSecretOptions {
                    dir: dir.clone(),
                    kubernetes: kube_client.clone(),
                    ttl_secs: args.api_token_ttl_seconds,
                    host_overrides,
                    metrics: Some(metrics.clone()),
                },
            )?;
            rs.clone().spawn_timer();
            Some(rs)
        }
        None => None,
    };
    let xds_sink = Arc::new(multicloud_agent::sinks::xds::XdsSink {
        cache: Default::default(),
        server: xds_server,
        metrics: metrics.clone(),
        module: module.clone(),
        cert_secret: args.workload_cert_secret.clone(),
        cert_sds_cluster: args.workload_cert_sds_cluster.clone(),
        workload_cert: match (&args.workload_cert, &args.workload_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read_to_string(c).with_context(|| format!("reading --workload-cert {}", c.display()))?,
                std::fs::read_to_string(k).with_context(|| format!("reading --workload-key {}", k.display()))?,
            )),
            _ => None,
        },
        api_credential,
        push_lock: Default::default(),
        traffic_cache: Default::default(),
        sameness: args.sameness,
        mesh_listen: args.mesh_listen,
        per_peer_clusters: args.per_peer_clusters,
        gateway_cert: match (&args.gateway_cert, &args.gateway_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read_to_string(c).with_context(|| format!("reading --gateway-cert {}", c.display()))?,
                std::fs::read_to_string(k).with_context(|| format!("reading --gateway-key {}", k.display()))?,
            )),
            _ => None,
        },
    });
    xds_sink.clone().spawn_credential_watch(Duration::from_secs(1));
    let reconciler = reconcile::Reconciler {
        key,
        factory: remote::factory(policy),
        status: status_sink,
        sinks: {
            let mut sinks: Vec<Arc<dyn reconcile::DataPlaneSink>> =
                vec![Arc::new(multicloud_agent::xds::tls::ClientRootsSink(xds_tls)), xds_sink];
            if let Some(rs) = remote_secrets {
                sinks.push(rs);
            }
            if let Some(path) = args.edge_ecds_file {
                sinks.push(Arc::new(edge_file::EcdsFile::new(path, module)));
            }
            sinks.extend(wasmplugin_sink);
            sinks.push(Arc::new(ReadyOnApply { admin: admin_state }));
            sinks
        },
        metrics: metrics.clone(),
        timing: reconcile::Timing {
            refresh: Duration::from_secs(args.refresh_seconds.max(1)),
            backoff_base: Duration::from_millis(args.backoff_base_ms.max(10)),
            backoff_cap: Duration::from_millis(args.backoff_cap_ms.max(args.backoff_base_ms)),
            token_ttl_secs: keys::MAX_METADATA_TOKEN_TTL_SECS,
        },
        spiffe: multicloud_core::edge::SpiffeSettings::default(),
    };
    tokio::select! {
        _ = reconciler.run(rx) => {}
        signal = shutdown_signal() => tracing::info!("{signal}, exiting"),
    }
    // A pod's SIGTERM: give the Lease up so another replica writes status at
    // once, not after the Lease expires. Bounded: the kubelet's grace period
    // (30 s by default) must not run out on an unreachable API server.
    if let Some(lease) = lease_guard {
        match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not release the Lease (it expires by itself): {e:#}"),
            Err(_) => tracing::warn!("releasing the Lease timed out (it expires by itself)"),
        }
    }
    Ok(())
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the agent cleanly");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn parse_sameness(s: &str) -> Result<multicloud_proto::traffic::Sameness, String> {
    s.parse()
}
