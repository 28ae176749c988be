//! The running agent, built from one [`Config`]: the source (standalone file
//! or Kubernetes), the federation key, the HTTP and xDS ports, the sinks and
//! the reconciler. [`App::build`] starts the background tasks; [`App::run`]
//! reconciles until SIGTERM or SIGINT, then releases the Lease.
//!
//! In Kubernetes mode each DaemonSet replica is, in turn, a follower or the
//! Lease holder ([`KubeRoles`]). Only the holder loads the federation key,
//! watches the objects and facts, fetches from peers, signs tokens, writes
//! shared state (status, remote secrets, Istio's mesh config, the
//! WasmPlugin) and publishes the data plane state (`crate::sinks::state`).
//! A follower watches that state and the Lease, and serves its node's
//! proxies from the state; it makes no other request. A follower that finds
//! the Lease free takes it and starts its holder term from the objects'
//! status (last good documents, pins), writing everything once.

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
use crate::xds::render::Renderer;
use crate::xds::served_cert::ServedCert;
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
    run: Run,
}

enum Run {
    /// One reconciler for the process.
    Standalone { reconciler: Box<Reconciler>, desired: watch::Receiver<Option<Desired>> },
    /// Follower and holder terms in turn.
    Kubernetes(Box<KubeRoles>),
}

/// What a Kubernetes-mode replica needs for either role.
pub struct KubeRoles {
    client: kube::Client,
    options: crate::kube::KubeOptions,
    lease: Arc<LeaseGuard>,
    key_store: SecretKeyStore,
    status: Arc<dyn StatusSink>,
    kube_status: Arc<KubeStatusSink>,
    metrics: Arc<Metrics>,
    /// This replica's node-local sinks (xDS, its port's client roots, the
    /// ECDS file), in order; readiness comes last.
    node_sinks: Vec<Arc<dyn DataPlaneSink>>,
    ready: Arc<dyn DataPlaneSink>,
    wasmplugin: Option<String>,
    istio_mesh_config: Option<String>,
    remote_ttl_secs: i64,
    host_overrides: std::collections::BTreeMap<String, String>,
    factory: factory::ClientFactory,
    timing: reconcile::Timing,
    api: multicloud_core::edge::ApiSettings,
}

impl App {
    /// Loads the key, binds the HTTP and xDS ports, starts the source and
    /// builds every sink. Errors name the flag whose file or address failed.
    pub async fn build(config: Config) -> Result<App> {
        let (tx, desired) = watch::channel(None);
        let source_error = Arc::new(Mutex::new(None));
        let board = Arc::new(StatusBoard::new(config.status_file.clone()));
        let metrics = Arc::new(Metrics::default());
        let mut kube_parts: Option<(kube::Client, crate::kube::KubeOptions, Arc<LeaseGuard>, Arc<KubeStatusSink>)> = None;
        let mut standalone_key = None;
        match &config.mode {
            Mode::Kubernetes { options, .. } => {
                let client = kube_client(&options.holder_identity).await?;
                let lease = Arc::new(LeaseGuard::new(client.clone(), options));
                let kube_status = Arc::new(KubeStatusSink::new(client.clone(), lease.clone(), Some(metrics.clone())));
                {
                    let l = lease.clone();
                    metrics.set_leader_source(Box::new(move || l.is_leader()));
                }
                kube_parts = Some((client, options.clone(), lease, kube_status));
            }
            Mode::Standalone { file, key } => {
                let files = keys::KeyFiles::new(key);
                let ring = files.load()?;
                tracing::info!(stage = ?ring.stage(), "federation key loaded (its public key is published in public.json)");
                let (keys_tx, keys_rx) = watch::channel(ring);
                // `rotate-key` edits the files; a second is soon enough for a
                // step that waits for the peers' 30 s refresh.
                tokio::spawn(keys::watch_files(files, keys_tx, Duration::from_secs(1)));
                standalone_key = Some(keys_rx);
                tokio::spawn(sources::standalone::watch_file(file.clone(), tx, source_error.clone()));
            }
        }

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
                .map(|f| ServedCert::load(&f.cert, &f.key, ("--workload-cert", "--workload-key")))
                .transpose()?,
            sameness: dp.sameness,
            mesh_listen: dp.mesh_listen,
            per_peer_clusters: dp.per_peer_clusters,
            gateway_cert: dp
                .gateway_cert
                .as_ref()
                .map(|f| ServedCert::load(&f.cert, &f.key, ("--gateway-cert", "--gateway-key")))
                .transpose()?,
        };
        let xds_sink = Arc::new(XdsSink::new(renderer, xds_server, api_credential));
        xds_sink.clone().spawn_credential_watch(Duration::from_secs(1));
        xds_sink.clone().spawn_served_cert_watch(Duration::from_secs(1));
        let mut node_sinks: Vec<Arc<dyn DataPlaneSink>> = vec![Arc::new(ClientRootsSink(xds_tls)), xds_sink];
        if let Some(path) = &config.edge_ecds_file {
            node_sinks.push(Arc::new(EcdsFile::new(path.clone(), module)));
        }
        let ready: Arc<dyn DataPlaneSink> = Arc::new(ReadyOnApply(admin_state.ready.clone()));
        let t = config.timing;
        let timing = reconcile::Timing {
            refresh: t.refresh,
            backoff_base: t.backoff_base,
            backoff_cap: t.backoff_cap,
            join_retry: t.join_retry,
            token_ttl_secs: keys::MAX_METADATA_TOKEN_TTL_SECS,
        };
        let api = multicloud_core::edge::ApiSettings { mesh_config_maps: config.mesh_config_maps.clone(), ..Default::default() };
        if let (Some((client, options, lease, kube_status)), Mode::Kubernetes { wasmplugin, istio_mesh_config, .. }) =
            (kube_parts, &config.mode)
        {
            let roles = KubeRoles {
                key_store: SecretKeyStore::new(client.clone(), &options),
                status: Arc::new(KubeAndBoard(kube_status.clone(), board.clone())),
                kube_status,
                client,
                options,
                lease,
                metrics,
                node_sinks,
                ready,
                wasmplugin: wasmplugin.clone(),
                istio_mesh_config: istio_mesh_config.clone(),
                remote_ttl_secs: config.api_token_ttl_seconds,
                host_overrides: config.api_host_overrides.clone(),
                factory: factory::factory(policy),
                timing,
                api,
            };
            return Ok(App { run: Run::Kubernetes(Box::new(roles)) });
        }
        let keys = standalone_key.context("standalone mode without a key")?;
        let mut sinks = node_sinks;
        // Standalone mode writes remote secrets only with --remote-secrets-dir.
        if let Some(dir) = &config.remote_secrets_dir {
            let rs = RemoteSecrets::new(
                keys.clone(),
                RemoteSecretOptions {
                    dir: dir.clone(),
                    kubernetes: None,
                    ttl_secs: config.api_token_ttl_seconds,
                    host_overrides: config.api_host_overrides.clone(),
                    metrics: Some(metrics.clone()),
                },
            )?;
            rs.clone().spawn_timer();
            sinks.push(rs);
        }
        sinks.push(ready);
        let reconciler = Reconciler {
            keys,
            factory: factory::factory(policy),
            status: board,
            sinks,
            metrics,
            timing,
            spiffe: multicloud_core::edge::SpiffeSettings::default(),
            api,
        };
        Ok(App { run: Run::Standalone { reconciler: Box::new(reconciler), desired } })
    }

    /// Reconciles until SIGTERM (how Kubernetes stops a pod) or SIGINT.
    pub async fn run(self) -> Result<()> {
        match self.run {
            Run::Standalone { reconciler, desired } => {
                tokio::select! {
                    _ = reconciler.run(desired) => {}
                    signal = shutdown_signal() => tracing::info!("{signal}, exiting"),
                }
            }
            Run::Kubernetes(roles) => {
                let lease = roles.lease.clone();
                tokio::select! {
                    () = roles.run() => {}
                    signal = shutdown_signal() => tracing::info!("{signal}, exiting"),
                }
                // A pod's SIGTERM: give the Lease up so another replica writes status at
                // once, not after the Lease expires. Bounded: the kubelet's grace period
                // (30 s by default) must not run out on an unreachable API server.
                match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("could not release the Lease (it expires by itself): {e:#}"),
                    Err(_) => tracing::warn!("releasing the Lease timed out (it expires by itself)"),
                }
            }
        }
        Ok(())
    }
}

impl KubeRoles {
    /// Follower and holder terms in turn, until the process ends.
    async fn run(self) {
        let (last_tx, _last_rx) = watch::channel(None);
        let mut delay = Duration::from_secs(1);
        loop {
            match self.lease.try_acquire().await {
                Ok(true) => {
                    delay = Duration::from_secs(1);
                    // Read afresh each term: a rotation may have moved on.
                    match self.key_store.load_ring_or_generate().await {
                        Ok(ring) => {
                            tracing::info!(stage = ?ring.stage(), "federation key loaded (its public key is published in public.json)");
                            self.holder_term(ring).await;
                        }
                        Err(e) => {
                            tracing::error!("the Lease holder cannot load its federation key, stepping down: {e:#}");
                            let _ = self.lease.step_down().await;
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            continue;
                        }
                    }
                }
                Ok(false) => {
                    delay = Duration::from_secs(1);
                    self.follower_term(last_tx.clone()).await;
                }
                Err(e) => {
                    tracing::warn!("cannot read the Lease, retrying in {delay:?}: {e:#}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Serves the node from the holder's state until the Lease is free.
    async fn follower_term(&self, last: watch::Sender<Option<crate::data_plane::DataPlane>>) {
        tracing::info!("following the Lease holder's data plane state");
        let mut sinks = self.node_sinks.clone();
        sinks.push(self.ready.clone());
        tokio::select! {
            () = crate::sources::state::follow(self.client.clone(), self.options.namespace.clone(), sinks, last) => {}
            () = self.lease.wait_until_vacant() => tracing::info!("the Lease is free: competing for it"),
        }
    }

    /// Holds the Lease: sources, reconciler and every shared-state sink,
    /// fresh for this term (a new holder writes everything once), until the
    /// Lease is lost.
    async fn holder_term(&self, ring: keys::KeyRing) {
        tracing::info!(holder = %self.options.holder_identity, "holding the Lease: this replica reads the facts, fetches from peers and writes shared state");
        let ns = &self.options.namespace;
        let mut sinks = self.node_sinks.clone();
        let (keys_tx, keys) = watch::channel(ring);
        let remote = RemoteSecrets::new(
            keys.clone(),
            RemoteSecretOptions {
                dir: PathBuf::new(),
                kubernetes: Some((self.client.clone(), ns.clone())),
                ttl_secs: self.remote_ttl_secs,
                host_overrides: self.host_overrides.clone(),
                metrics: Some(self.metrics.clone()),
            },
        );
        let remote = match remote {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot write remote secrets: {e:#}");
                return;
            }
        };
        let timer = remote.clone().spawn_timer();
        sinks.push(remote);
        if let Some(name) = &self.wasmplugin {
            sinks.push(Arc::new(WasmPluginSink::new(self.client.clone(), ns, name, self.lease.clone())));
        }
        if let Some(name) = &self.istio_mesh_config {
            sinks.push(Arc::new(MeshConfigSink::new(self.client.clone(), ns, name, self.lease.clone())));
        }
        sinks.push(Arc::new(crate::sinks::state::StatePublisher::new(self.client.clone(), ns, self.lease.clone(), self.metrics.clone())));
        sinks.push(self.ready.clone());
        let (tx, desired) = watch::channel(None);
        let source = sources::kubernetes::desired_state(self.client.clone(), self.options.clone(), tx, Some(self.kube_status.clone()));
        let reconciler = Reconciler {
            keys,
            factory: self.factory.clone(),
            status: self.status.clone(),
            sinks,
            metrics: self.metrics.clone(),
            timing: self.timing.clone(),
            spiffe: multicloud_core::edge::SpiffeSettings::default(),
            api: self.api.clone(),
        };
        tokio::select! {
            () = self.lease.hold() => tracing::warn!("lost the Lease: stepping down to follower"),
            () = reconciler.run(desired) => {}
            () = source => {}
            () = self.key_store.watch(keys_tx) => {}
        }
        timer.abort();
    }
}

/// The API server client (in-cluster config or KUBECONFIG). Its requests
/// carry `User-Agent: multicloud-agent/<version> (<pod>)`, so that the API
/// server's audit log tells the replicas apart.
async fn kube_client(pod: &str) -> Result<kube::Client> {
    let mut config = kube::Config::infer().await.context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let agent = format!("multicloud-agent/{} ({pod})", env!("CARGO_PKG_VERSION"));
    if let Ok(v) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, v));
    }
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
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
