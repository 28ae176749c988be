//! Where status goes: [`StatusBoard`] (memory, behind `/status`, and an
//! optional JSON file) in both modes, and [`KubeStatusSink`] (the object's
//! status subresource, from the Lease holder) in Kubernetes mode.

use super::{write_atomically, StatusSink};
use crate::crd::{IstioMulticloud, IstioMulticloudStatus};
use crate::kube::lease::LeaseGuard;
use crate::kube::FIELD_MANAGER;
use crate::BoxFuture;
use anyhow::{Context as _, Result};
use kube::api::{Api, Patch, PatchParams};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Status of every object, kept in memory for `/status` and optionally
/// written (atomically) to a JSON file.
#[derive(Default)]
pub struct StatusBoard {
    map: Mutex<BTreeMap<String, IstioMulticloudStatus>>,
    file: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct StatusDocument {
    pub objects: BTreeMap<String, IstioMulticloudStatus>,
}

impl StatusBoard {
    pub fn new(file: Option<PathBuf>) -> Self {
        StatusBoard { map: Mutex::default(), file }
    }

    pub fn snapshot(&self) -> StatusDocument {
        StatusDocument { objects: self.map.lock().clone() }
    }
}

impl StatusSink for StatusBoard {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.map.lock().insert(name.to_string(), status.clone());
            if let Some(file) = &self.file {
                let json = serde_json::to_vec_pretty(&self.snapshot())?;
                write_atomically(file, &json).with_context(|| format!("writing status file {}", file.display()))?;
            }
            Ok(())
        })
    }
}

/// Writes `IstioMulticloud` status with server-side apply, only from the
/// replica that holds the Lease.
///
/// It remembers what it last wrote per object. Another field manager that
/// rewrites the status (a person's `kubectl apply --subresource=status`, an
/// old replica) is corrected by [`KubeStatusSink::correct_drift`], which the
/// object watcher calls with every status it sees.
pub struct KubeStatusSink {
    api: Api<IstioMulticloud>,
    lease: Arc<LeaseGuard>,
    written: Mutex<BTreeMap<String, IstioMulticloudStatus>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl KubeStatusSink {
    pub fn new(client: kube::Client, lease: Arc<LeaseGuard>, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        Self { api: Api::all(client), lease, written: Mutex::default(), metrics }
    }

    /// Called with each object's status as the API server has it: if it is
    /// not what this replica last wrote (and this replica writes status),
    /// writes its own again. Returns whether it did.
    pub async fn correct_drift(&self, name: &str, seen: Option<&IstioMulticloudStatus>) -> Result<bool> {
        let ours = self.written.lock().get(name).cloned();
        let Some(ours) = ours else { return Ok(false) };
        if seen == Some(&ours) || !self.lease.is_leader() {
            return Ok(false);
        }
        tracing::warn!(object = name, "the object's status was changed by someone else; writing the agent's own again");
        self.write(name, &ours).await?;
        Ok(true)
    }

    /// Forgets a deleted object.
    pub fn forget(&self, name: &str) {
        self.written.lock().remove(name);
    }

    async fn write(&self, name: &str, status: &IstioMulticloudStatus) -> Result<()> {
        self.written.lock().insert(name.to_string(), status.clone());
        if !self.lease.may_write().await? {
            tracing::debug!(object = name, "not the lease holder; leaving status to the leader");
            return Ok(());
        }
        let patch = json!({
            "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            "kind": "IstioMulticloud",
            "status": status,
        });
        self.api
            .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
            .await
            .with_context(|| format!("cannot write status of IstioMulticloud {name}; grant the agent patch on istiomulticlouds/status"))?;
        if let Some(m) = &self.metrics {
            m.status_write();
        }
        Ok(())
    }
}

impl StatusSink for KubeStatusSink {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(name, status))
    }
}

/// Kubernetes mode: status to the object (with the Lease) and to the board behind `/status`.
pub struct KubeAndBoard(pub Arc<KubeStatusSink>, pub Arc<StatusBoard>);

impl StatusSink for KubeAndBoard {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.1.publish(name, status).await?;
            self.0.publish(name, status).await
        })
    }
}
