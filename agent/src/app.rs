//! The running agent, built from one [`Config`]: the source (standalone file
//! or Kubernetes), the federation key, the HTTP and xDS ports, the sinks and
//! the reconciler. [`App::build`] starts the background tasks; [`App::run`]
//! reconciles until SIGTERM or SIGINT, then releases the Lease.

use crate::admin::{self, AdminState};
use crate::config::{Config, FilterSource, Mode};
use crate::exchange::factory;
use crate::keys;
use crate::kube::key_secret::SecretKeyStore;
use crate::kube::lease::LeaseGuard;
use crate::metrics::Metrics;
use crate::reconcile::{self, Reconciler};
use crate::sinks::client_roots::ClientRootsSink;
use crate::sinks::ecds_file::EcdsFile;
use crate::sinks::mesh_config::MeshConfigSink;
use crate::sinks::ready::ReadyOnApply;
use crate::sinks::remote_secret::{RemoteSecretOptions, RemoteSecrets};
use crate::sinks::status::{KubeAndBoard, KubeStatusSink, StatusBoard};
use crate::sinks::wasmplugin::WasmPluginSink;
use crate::sinks::xds::{ApiCredential, XdsSink};
use crate::sinks::{write_atomically, DataPlaneSink, StatusSink};
use crate::sources::{self, Desired};
use crate::xds::groups::{classify, NodeGroup};
use crate::xds::render::{CertAndKey, Renderer};
use crate::xds::server::{AccessPolicy, XdsServer};
use crate::xds::tls::{ServingCert, XdsTls};
use anyhow::{Context as _, Result};
use multicloud_proto::edge_filter::Module;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The agent, built and serving; [`App::run`] drives the reconciler.
pub struct App {
    reconciler: Reconciler,
    desired: watch::Receiver<Option<Desired>>,
    /// Kubernetes mode: released on shutdown.
    lease: Option<Arc<LeaseGuard>>,
}

impl App {
    /// Loads the key, binds the HTTP and xDS ports, starts the source and
    /// builds every sink. Errors name the flag whose file or address failed.
    pub async fn build(config: Config) -> Result<App> {
        let (tx, desired) = watch::channel(None);
        let source_error = Arc::new(Mutex::new(None));
        let board = Arc::new(StatusBoard::new(config.status_file.clone()));
        let metrics = Arc::new(Metrics::default());
        let mut kube_client: Option<(kube::Client, String)> = None;
        let mut wasmplugin_sink: Option<Arc<dyn DataPlaneSink>> = None;
        let mut mesh_config_sink: Option<Arc<dyn DataPlaneSink>> = None;
        let mut lease_guard: Option<Arc<LeaseGuard>> = None;
        let (key, status_sink): (_, Arc<dyn StatusSink>) = match &config.mode {
            Mode::Kubernetes { options, wasmplugin, istio_mesh_config } => {
                let client =
                    kube::Client::try_default().await.context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
                kube_client = Some((client.clone(), options.namespace.clone()));
                let key = SecretKeyStore::new(client.clone(), options).load_or_generate().await?;
                let lease = Arc::new(LeaseGuard::new(client.clone(), options));
                lease.clone().spawn_renewal();
                if let Some(name) = istio_mesh_config {
                    mesh_config_sink = Some(Arc::new(MeshConfigSink::new(client.clone(), &options.namespace, name, lease.clone())));
                }
                if let Some(name) = wasmplugin {
                    wasmplugin_sink = Some(Arc::new(WasmPluginSink::new(client.clone(), &options.namespace, name, lease.clone())));
                }
                let kube_status = Arc::new(KubeStatusSink::new(client.clone(), lease.clone(), Some(metrics.clone())));
                {
                    let l = lease.clone();
                    metrics.set_leader_source(Box::new(move || l.is_leader()));
                }
                lease_guard = Some(lease);
                tokio::spawn(sources::kubernetes::desired_state(
                    client,
                    options.clone(),
                    config.timing.facts_every,
                    tx,
                    Some(kube_status.clone()),
                ));
                (key, Arc::new(KubeAndBoard(kube_status, board.clone())))
            }
            Mode::Standalone { file, key } => {
                let key = keys::load_or_generate(key)?;
                tokio::spawn(sources::standalone::watch_file(file.clone(), tx, source_error.clone()));
                (key, board.clone())
            }
        };
        tracing::info!("federation key loaded (its public key is published in public.json)");
        let access = AccessPolicy {
            restricted: [(NodeGroup::Gateway.as_str().to_string(), config.xds.gateway_identities.iter().cloned().collect())].into(),
        };
        let xds_server = XdsServer::with_access(classify(), access);
        {
            let s = xds_server.clone();
            metrics.set_nack_source(Box::new(move || s.nack_count()));
            let s = xds_server.clone();
            metrics.set_xds_refusal_source(Box::new(move || s.refusals()));
        }
        let serving = match &config.xds.serving_cert {
            Some(files) => ServingCert::from_files(&files.cert, &files.key)?,
            None => ServingCert::self_signed()?,
        };
        let xds_tls = Arc::new(XdsTls::new(serving)?);
        if let Some(ca) = &config.xds.istio_ca {
            ca.clone().spawn_renewal(xds_tls.clone());
        }
        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            board: board.clone(),
            ready: Arc::default(),
            source_error: source_error.clone(),
            xds: Some(xds_server.clone()),
            config: Some(config.to_json()),
        });
        if let Some(addr) = config.xds.listen {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --xds {addr}"))?;
            let bound = l.local_addr()?;
            if let Some(p) = &config.xds.address_file {
                write_atomically(p, bound.to_string().as_bytes())?;
            }
            tracing::info!(
                address = %bound,
                gateway_identities = ?config.xds.gateway_identities,
                serving_cert = match (&config.xds.serving_cert, &config.xds.istio_ca) {
                    (Some(_), _) => "--xds-cert",
                    (None, Some(_)) => "from istiod's CA (self-signed until it arrives)",
                    (None, None) => "self-signed",
                },
                "serving xDS (ADS) on TCP with mutual TLS"
            );
            let (s, tls) = (xds_server.clone(), xds_tls.clone());
            tokio::spawn(async move {
                if let Err(e) = s.serve_tls(l, tls).await {
                    tracing::error!("xDS server stopped: {e:#}");
                }
            });
        }
        let listener =
            tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("cannot listen on --http {}", config.http))?;
        let bound = listener.local_addr()?;
        if let Some(p) = &config.http_address_file {
            write_atomically(p, bound.to_string().as_bytes())?;
        }
        tracing::info!(address = %bound, "HTTP port: /healthz /readyz /metrics /status");
        tokio::spawn(admin::serve(listener, admin_state.clone()));

        let module = match &config.filter {
            FilterSource::Module(file) => {
                let bytes = std::fs::read(file).with_context(|| format!("cannot read --filter-module {}", file.display()))?;
                let m = Module::inline(bytes)
                    .map_err(|e| anyhow::anyhow!("--filter-module {}: {e}; give the built multicloud_filter.wasm", file.display()))?;
                tracing::info!(module = %file.display(), "the filter module goes to the gateway inside its ECDS resource");
                m
            }
            FilterSource::GatewayPath(path) => Module::Path(path.clone()),
        };
        let policy = factory::Policy { connect_timeout: config.timing.connect_timeout, total_timeout: config.timing.fetch_timeout };
        let api_credential = match &config.api_proxy_credential {
            Some(p) => Some(ApiCredential::load(p.clone())?),
            None => None,
        };
        // Kubernetes mode always writes the remote Secrets; standalone mode only with --remote-secrets-dir.
        let remote_dir = match (&config.remote_secrets_dir, &kube_client) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(_)) => Some(PathBuf::new()),
            (None, None) => None,
        };
        let remote_secrets = match remote_dir {
            Some(dir) => {
                let rs = RemoteSecrets::new(
                    key.clone(),
                    RemoteSecretOptions {
                        dir,
                        kubernetes: kube_client.clone(),
                        ttl_secs: config.api_token_ttl_seconds,
                        host_overrides: config.api_host_overrides.clone(),
                        metrics: Some(metrics.clone()),
                    },
                )?;
                rs.clone().spawn_timer();
                Some(rs)
            }
            None => None,
        };
        let dp = &config.data_plane;
        let renderer = Renderer {
            cache: Default::default(),
            traffic_cache: Default::default(),
            metrics: metrics.clone(),
            module: module.clone(),
            cert_secret: dp.workload_cert_secret.clone(),
            cert_sds_cluster: dp.workload_cert_sds_cluster.clone(),
            workload_cert: dp
                .workload_cert
                .as_ref()
                .map(|f| CertAndKey::read(&f.cert, &f.key, ("--workload-cert", "--workload-key")))
                .transpose()?,
            sameness: dp.sameness,
            mesh_listen: dp.mesh_listen,
            per_peer_clusters: dp.per_peer_clusters,
            gateway_cert: dp
                .gateway_cert
                .as_ref()
                .map(|f| CertAndKey::read(&f.cert, &f.key, ("--gateway-cert", "--gateway-key")))
                .transpose()?,
        };
        let xds_sink = Arc::new(XdsSink::new(renderer, xds_server, api_credential));
        xds_sink.clone().spawn_credential_watch(Duration::from_secs(1));
        let mut sinks: Vec<Arc<dyn DataPlaneSink>> = vec![Arc::new(ClientRootsSink(xds_tls)), xds_sink];
        if let Some(rs) = remote_secrets {
            sinks.push(rs);
        }
        if let Some(path) = &config.edge_ecds_file {
            sinks.push(Arc::new(EcdsFile::new(path.clone(), module)));
        }
        sinks.extend(wasmplugin_sink);
        sinks.extend(mesh_config_sink);
        sinks.push(Arc::new(ReadyOnApply(admin_state.ready.clone())));
        let t = config.timing;
        let reconciler = Reconciler {
            key,
            factory: factory::factory(policy),
            status: status_sink,
            sinks,
            metrics,
            timing: reconcile::Timing {
                refresh: t.refresh,
                backoff_base: t.backoff_base,
                backoff_cap: t.backoff_cap,
                join_retry: t.join_retry,
                token_ttl_secs: keys::MAX_METADATA_TOKEN_TTL_SECS,
            },
            spiffe: multicloud_core::edge::SpiffeSettings::default(),
            api: multicloud_core::edge::ApiSettings { mesh_config_maps: config.mesh_config_maps.clone(), ..Default::default() },
        };
        Ok(App { reconciler, desired, lease: lease_guard })
    }

    /// Reconciles until SIGTERM (how Kubernetes stops a pod) or SIGINT.
    pub async fn run(self) -> Result<()> {
        tokio::select! {
            _ = self.reconciler.run(self.desired) => {}
            signal = shutdown_signal() => tracing::info!("{signal}, exiting"),
        }
        // A pod's SIGTERM: give the Lease up so another replica writes status at
        // once, not after the Lease expires. Bounded: the kubelet's grace period
        // (30 s by default) must not run out on an unreachable API server.
        if let Some(lease) = self.lease {
            match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("could not release the Lease (it expires by itself): {e:#}"),
                Err(_) => tracing::warn!("releasing the Lease timed out (it expires by itself)"),
            }
        }
        Ok(())
    }
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
