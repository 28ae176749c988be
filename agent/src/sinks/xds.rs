//! The xDS sink: renders every new data plane state into the node groups'
//! snapshots (`crate::xds::render::Renderer`) and hands them to the ADS
//! server; keeps the API proxy's credential current on the gateway.

use super::DataPlaneSink;
use crate::data_plane::DataPlane;
use crate::xds::groups::NodeGroup;
use crate::xds::render::{GroupSnapshots, Renderer};
use crate::xds::server::XdsServer;
use crate::BoxFuture;
use multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::secrets::api_credential_secret;
use multicloud_proto::type_url::SECRET;
use std::sync::Arc;

/// The xDS sink: renders each data plane state ([`Renderer`]) and serves
/// it; keeps the gateway's API proxy credential current in between.
pub struct XdsSink {
    pub renderer: Renderer,
    pub server: XdsServer,
    /// The API proxy's own credential (a ServiceAccount token), served to
    /// the gateway group as SDS generic secret [`API_PROXY_CREDENTIAL_SECRET`].
    pub api_credential: Option<Arc<ApiCredential>>,
    /// Serializes whole pushes with credential-only updates.
    push_lock: tokio::sync::Mutex<()>,
}

/// The API proxy's credential file, re-read when it changes (projected
/// ServiceAccount tokens rotate). Its content is never logged.
pub struct ApiCredential {
    pub path: std::path::PathBuf,
    current: parking_lot::Mutex<Option<String>>,
}

impl ApiCredential {
    /// Reads the file once (an unreadable or empty file is an error at start).
    pub fn load(path: std::path::PathBuf) -> anyhow::Result<Arc<ApiCredential>> {
        let c = ApiCredential { path, current: parking_lot::Mutex::new(None) };
        let v = c.read()?;
        *c.lock() = Some(v);
        Ok(Arc::new(c))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Option<String>> {
        self.current.lock()
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
    pub fn new(renderer: Renderer, server: XdsServer, api_credential: Option<Arc<ApiCredential>>) -> XdsSink {
        XdsSink { renderer, server, api_credential, push_lock: Default::default() }
    }

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

impl XdsSink {
    /// Re-reads the certificates the agent serves itself (standalone mode:
    /// `--workload-cert` to the sidecars, `--gateway-cert` to the gateway)
    /// every `every`; when a pair changed and pairs, updates that group's
    /// current snapshot. A pair that does not read or pair is logged (once
    /// per distinct error) and the last good one stays served.
    pub fn spawn_served_cert_watch(self: Arc<Self>, every: std::time::Duration) {
        if self.renderer.workload_cert.is_none() && self.renderer.gateway_cert.is_none() {
            return;
        }
        tokio::spawn(async move {
            let mut last_errors: [Option<String>; 2] = [None, None];
            loop {
                tokio::time::sleep(every).await;
                let served = [(&self.renderer.workload_cert, NodeGroup::Sidecar), (&self.renderer.gateway_cert, NodeGroup::Gateway)];
                for ((cert, group), last_error) in served.into_iter().zip(last_errors.iter_mut()) {
                    let Some(cert) = cert else { continue };
                    match cert.refresh() {
                        Ok(false) => {}
                        Ok(true) => {
                            *last_error = None;
                            tracing::info!(certificate = %cert.describe(), group = group.as_str(), "served certificate changed: pushing it");
                            let _g = self.push_lock.lock().await;
                            if let Some(snap) = self.server.snapshot(group.as_str()) {
                                let mut snap = (*snap).clone();
                                self.renderer.insert_served_cert(&mut snap, &cert.current());
                                self.server.set(group.as_str(), snap);
                            }
                        }
                        Err(e) => {
                            let e = format!("{e:#}");
                            if last_error.as_ref() != Some(&e) {
                                tracing::error!(certificate = %cert.describe(), "served certificate not reloaded (the last good one stays): {e}");
                                *last_error = Some(e);
                            }
                        }
                    }
                }
            }
        });
    }
}

impl DataPlaneSink for XdsSink {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let _g = self.push_lock.lock().await;
            let credential = self.api_credential.as_ref().and_then(|c| c.current());
            let GroupSnapshots { gateway, sidecar } = self.renderer.snapshots(dp, credential.as_deref())?;
            self.server.set(NodeGroup::Gateway.as_str(), gateway);
            self.server.set(NodeGroup::Sidecar.as_str(), sidecar);
            Ok(())
        })
    }
}
