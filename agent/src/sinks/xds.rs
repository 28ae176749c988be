//! The xDS sink: renders every new data plane state into the node groups'
//! snapshots (`crate::xds::render`) and hands them to the ADS server; keeps
//! the API proxy's credential current on the gateway.

use crate::metrics::Metrics;
use crate::reconcile::{DataPlane, DataPlaneSink};
use crate::xds::cache::BuildCache;
use crate::xds::groups::NodeGroup;
use crate::xds::render::{api_credential_secret, GroupSnapshots, API_PROXY_CREDENTIAL_SECRET};
use crate::xds::{XdsServer, SECRET};
use crate::BoxFuture;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::traffic::Sameness;
use std::sync::Arc;

/// A certificate chain and its private key (PEM contents; never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub chain: String,
    pub key: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").field("chain", &format_args!("{} bytes", self.chain.len())).finish_non_exhaustive()
    }
}

impl CertAndKey {
    /// Reads both files; errors name the flags.
    pub fn read(files: &crate::config::CertKeyFiles, cert_flag: &str, key_flag: &str) -> anyhow::Result<CertAndKey> {
        use anyhow::Context as _;
        Ok(CertAndKey {
            chain: std::fs::read_to_string(&files.cert).with_context(|| format!("reading {cert_flag} {}", files.cert.display()))?,
            key: std::fs::read_to_string(&files.key).with_context(|| format!("reading {key_flag} {}", files.key.display()))?,
        })
    }
}

impl From<(String, String)> for CertAndKey {
    /// `(chain, key)`, as the test bed's fixtures hand them out.
    fn from((chain, key): (String, String)) -> CertAndKey {
        CertAndKey { chain, key }
    }
}

pub struct XdsSink {
    pub cache: BuildCache,
    /// The merged (sameness) clusters' build cache.
    pub traffic_cache: BuildCache,
    pub server: XdsServer,
    pub metrics: Arc<Metrics>,
    /// Where the gateway gets the filter module (inline, or a path on the gateway).
    pub module: multicloud_proto::edge_filter::Module,
    /// SDS name and source of the workload certificate sidecars present to peers.
    pub cert_secret: String,
    pub cert_sds_cluster: String,
    /// Standalone mode without istio-agent: the workload certificate and key
    /// (PEM) the agent serves itself as SDS secret `cert_secret` over ADS.
    pub workload_cert: Option<CertAndKey>,
    /// The API proxy's own credential (a ServiceAccount token), served to
    /// the gateway group as SDS generic secret [`API_PROXY_CREDENTIAL_SECRET`].
    pub api_credential: Option<Arc<ApiCredential>>,
    /// Serializes whole pushes with credential-only updates.
    pub push_lock: tokio::sync::Mutex<()>,
    /// How sidecars share a service between its local and remote copies.
    pub sameness: Sameness,
    /// Where the gateway's mesh-port listener binds (none: the agent serves
    /// no listener, as when istiod programs the port).
    pub mesh_listen: Option<std::net::SocketAddr>,
    /// Standalone mode: the gateway's own workload certificate and key
    /// (PEM), served to the gateway group as SDS `cert_secret`.
    pub gateway_cert: Option<CertAndKey>,
    /// Also serve one cluster per peer and service port
    /// (`outbound|<port>||<host>|multicloud-<peer>`), besides the merged one
    /// that already holds every peer's copy: off by default, as it doubles
    /// what sidecars hold (and what every push diffs) for a cluster nothing
    /// routes to unless an operator points a route at one peer's copy.
    pub per_peer_clusters: bool,
}

/// The API proxy's credential file, re-read when it changes (projected
/// ServiceAccount tokens rotate). Its content is never logged.
pub struct ApiCredential {
    pub path: std::path::PathBuf,
    current: std::sync::Mutex<Option<String>>,
}

impl ApiCredential {
    /// Reads the file once (an unreadable or empty file is an error at start).
    pub fn load(path: std::path::PathBuf) -> anyhow::Result<Arc<ApiCredential>> {
        let c = ApiCredential { path, current: std::sync::Mutex::new(None) };
        let v = c.read()?;
        *c.lock() = Some(v);
        Ok(Arc::new(c))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        let text =
            std::fs::read_to_string(&self.path).with_context(|| format!("reading --api-proxy-credential {}", self.path.display()))?;
        let t = text.trim();
        anyhow::ensure!(!t.is_empty(), "--api-proxy-credential {} is empty", self.path.display());
        anyhow::ensure!(!t.contains(['\r', '\n']), "--api-proxy-credential {} holds more than one line", self.path.display());
        Ok(t.to_string())
    }

    pub fn current(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Re-reads the file; true if the credential changed.
    pub fn refresh(&self) -> bool {
        match self.read() {
            Ok(v) => {
                let mut cur = self.lock();
                if cur.as_deref() == Some(v.as_str()) {
                    return false;
                }
                *cur = Some(v);
                true
            }
            Err(e) => {
                tracing::warn!("keeping the previous API proxy credential: {e:#}");
                false
            }
        }
    }
}

impl XdsSink {
    /// Re-reads the API proxy credential every `every`; when it changed,
    /// updates the gateway group's current snapshot.
    pub fn spawn_credential_watch(self: Arc<Self>, every: std::time::Duration) {
        let Some(cred) = self.api_credential.clone() else { return };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if !cred.refresh() {
                    continue;
                }
                tracing::info!(path = %cred.path.display(), "API proxy credential changed: pushing it to the gateway");
                let _g = self.push_lock.lock().await;
                if let (Some(snap), Some(c)) = (self.server.snapshot(NodeGroup::Gateway.as_str()), cred.current()) {
                    let mut snap = (*snap).clone();
                    snap.insert(SECRET, API_PROXY_CREDENTIAL_SECRET, pack_any(api_credential_secret(&c)));
                    self.server.set(NodeGroup::Gateway.as_str(), snap);
                }
            }
        });
    }
}

impl DataPlaneSink for XdsSink {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let _g = self.push_lock.lock().await;
            let GroupSnapshots { gateway, sidecar } = self.snapshots(dp)?;
            self.server.set(NodeGroup::Gateway.as_str(), gateway);
            self.server.set(NodeGroup::Sidecar.as_str(), sidecar);
            Ok(())
        })
    }
}
