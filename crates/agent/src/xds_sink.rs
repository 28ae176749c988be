//! Turns the data plane into xDS snapshots, one per proxy group:
//!
//! - `gateway` (the ingress gateway): the edge filter's configuration as an
//!   ECDS resource (`multicloud-edge`, and `multicloud-api` for the API
//!   proxy guard), plus the trust secrets;
//! - `sidecar` (workload proxies): SDS trust secrets (the trust bundle of
//!   this cluster's root plus every established peer's root, and one secret
//!   per peer holding only that peer's root) and CDS/EDS for the remote
//!   services of every peer whose private metadata is known and whose
//!   object has `enableIngressGateway`.
//!
//! A proxy's group comes from its node metadata `MULTICLOUD_ROLE`
//! (`gateway`/`sidecar`), else from Istio's node id convention (`router~`
//! is a gateway). Every resource is built and validated by
//! `multicloud_proto::mesh`; a peer whose resources do not validate is left
//! out (and logged, and counted) rather than breaking the others.

use crate::metrics::Metrics;
use crate::reconcile::{DataPlane, DataPlaneSink};
use crate::source::BoxFuture;
use crate::xds::{Classify, Snapshot, XdsServer, CLUSTER, ENDPOINT, EXTENSION_CONFIG, SECRET};
use multicloud_proto::edge_filter;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::mesh::{self, ClientIdentity, PeerView};
use std::sync::Arc;

pub const GATEWAY_GROUP: &str = "gateway";
pub const SIDECAR_GROUP: &str = "sidecar";
/// The API guard's ECDS resource name (and plugin root id).
pub const API_FILTER_NAME: &str = "multicloud-api";
/// SDS name of the API proxy's own credential (a generic secret the
/// gateway's credential injector attaches as `Authorization: Bearer ...`).
pub const API_PROXY_CREDENTIAL_SECRET: &str = "multicloud-api-proxy-credential";

/// Node metadata key naming the proxy's role.
pub const ROLE_METADATA_KEY: &str = "MULTICLOUD_ROLE";

pub fn classify() -> Classify {
    Arc::new(|node| {
        use multicloud_proto::envoy_types::pb::google::protobuf::value::Kind;
        let role = node.metadata.as_ref().and_then(|m| m.fields.get(ROLE_METADATA_KEY)).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
        match role.as_deref() {
            Some(GATEWAY_GROUP) => GATEWAY_GROUP.into(),
            Some(_) => SIDECAR_GROUP.into(),
            None if node.id.starts_with("router~") => GATEWAY_GROUP.into(),
            None => SIDECAR_GROUP.into(),
        }
    })
}

pub struct XdsSink {
    pub server: XdsServer,
    pub metrics: Arc<Metrics>,
    /// Where the gateway finds the filter module.
    pub wasm_path: String,
    /// SDS name and source of the workload certificate sidecars present to peers.
    pub cert_secret: String,
    pub cert_sds_cluster: String,
    /// Standalone mode without istio-agent: the workload certificate and key
    /// (PEM) the agent serves itself as SDS secret `cert_secret` over ADS.
    pub workload_cert: Option<(String, String)>,
    /// The API proxy's own credential (a ServiceAccount token), served to
    /// the gateway group as SDS generic secret [`API_PROXY_CREDENTIAL_SECRET`].
    pub api_credential: Option<Arc<ApiCredential>>,
    /// Serializes whole pushes with credential-only updates.
    pub push_lock: tokio::sync::Mutex<()>,
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
        let text = std::fs::read_to_string(&self.path).with_context(|| format!("reading --api-proxy-credential {}", self.path.display()))?;
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

/// The SDS generic secret holding the API proxy credential. Envoy marks
/// `generic_secret.secret` sensitive: config_dump shows it redacted.
pub fn api_credential_secret(credential: &str) -> multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use multicloud_proto::envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, GenericSecret, Secret};
    Secret {
        name: API_PROXY_CREDENTIAL_SECRET.to_string(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource { specifier: Some(data_source::Specifier::InlineString(credential.to_string())), ..Default::default() }),
            ..Default::default()
        })),
    }
}

fn tls_certificate_secret(name: &str, chain: &str, key: &str) -> multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use multicloud_proto::envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret, TlsCertificate};
    let inline = |s: &str| Some(DataSource { specifier: Some(data_source::Specifier::InlineString(s.to_string())), ..Default::default() });
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate { certificate_chain: inline(chain), private_key: inline(key), ..Default::default() })),
    }
}

fn secret_name(s: &multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret) -> String {
    s.name.clone()
}

impl XdsSink {
    fn snapshots(&self, dp: &DataPlane) -> anyhow::Result<(Snapshot, Snapshot)> {
        let json = serde_json::to_string(&dp.edge)?;
        let mut gateway = Snapshot::default();
        gateway.insert(EXTENSION_CONFIG, edge_filter::FILTER_NAME, edge_filter::resource(&self.wasm_path, &json));
        gateway.insert(EXTENSION_CONFIG, API_FILTER_NAME, edge_filter::resource_with_root_id(&self.wasm_path, &json, API_FILTER_NAME));

        let client = ClientIdentity { cert_secret: &self.cert_secret, sds_cluster: &self.cert_sds_cluster };
        let mut views = Vec::new();
        for p in &dp.peers {
            let Some(private) = &p.private else { continue };
            views.push((
                p,
                PeerView {
                    name: &p.name,
                    cluster_uuid: &p.cluster_uuid,
                    root_ca_pem: &p.root_ca,
                    network: &private.network_name,
                    gateways: &private.ingress_gateways,
                    services: &private.services,
                },
            ));
        }
        let mut sidecar = Snapshot::default();
        let mut good: Vec<PeerView> = Vec::new();
        for (p, view) in &views {
            // Build each peer alone first, so one bad peer cannot take the rest down.
            let built = mesh::peer_root_secret(view).and_then(|root| {
                let clusters = if p.enable_ingress_gateway { mesh::remote_clusters(view, &client)? } else { Vec::new() };
                let endpoints = if p.enable_ingress_gateway { mesh::remote_endpoints(view)? } else { Vec::new() };
                Ok((root, clusters, endpoints))
            });
            match built {
                Ok((root, clusters, endpoints)) => {
                    sidecar.insert(SECRET, &secret_name(&root), pack_any(root.clone()));
                    gateway.insert(SECRET, &secret_name(&root), pack_any(root));
                    for c in clusters {
                        let name = c.name.clone();
                        sidecar.insert(CLUSTER, &name, pack_any(c));
                    }
                    for e in endpoints {
                        let name = e.cluster_name.clone();
                        sidecar.insert(ENDPOINT, &name, pack_any(e));
                    }
                    good.push(*view);
                }
                Err(e) => {
                    tracing::error!(object = %p.name, "the peer's data plane resources do not validate and are not pushed: {e}");
                    self.metrics.xds_build_error(&p.name);
                }
            }
        }
        if let Some(c) = self.api_credential.as_ref().and_then(|c| c.current()) {
            gateway.insert(SECRET, API_PROXY_CREDENTIAL_SECRET, pack_any(api_credential_secret(&c)));
        }
        if let Some((chain, key)) = &self.workload_cert {
            sidecar.insert(SECRET, &self.cert_secret, pack_any(tls_certificate_secret(&self.cert_secret, chain, key)));
        }
        let bundle = mesh::trust_bundle_secret(&dp.local.root_ca, &good)?;
        sidecar.insert(SECRET, mesh::TRUST_BUNDLE_SECRET, pack_any(bundle.clone()));
        gateway.insert(SECRET, mesh::TRUST_BUNDLE_SECRET, pack_any(bundle));
        Ok((gateway, sidecar))
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
                if let (Some(snap), Some(c)) = (self.server.snapshot(GATEWAY_GROUP), cred.current()) {
                    let mut snap = (*snap).clone();
                    snap.insert(SECRET, API_PROXY_CREDENTIAL_SECRET, pack_any(api_credential_secret(&c)));
                    self.server.set(GATEWAY_GROUP, snap);
                }
            }
        });
    }
}

impl DataPlaneSink for XdsSink {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let _g = self.push_lock.lock().await;
            let (gateway, sidecar) = self.snapshots(dp)?;
            self.server.set(GATEWAY_GROUP, gateway);
            self.server.set(SIDECAR_GROUP, sidecar);
            Ok(())
        })
    }
}
