//! The seams between where desired state comes from, where status goes and
//! where the federation key lives. Kubernetes mode and standalone mode each
//! implement them; the reconciler does not know which it runs with.

pub mod kubernetes;
pub mod standalone;

use crate::crd::{IstioMulticloudSpec, IstioMulticloudStatus};
use crate::facts::LocalFacts;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One `IstioMulticloud` object as the reconciler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPeer {
    pub spec: IstioMulticloudSpec,
    /// `metadata.generation` (reported back as `observedGeneration`).
    pub generation: Option<i64>,
}

/// Everything the reconciler acts on. Sources publish a new value on every
/// change through a `tokio::sync::watch` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Objects by name.
    pub peers: BTreeMap<String, DesiredPeer>,
    pub facts: LocalFacts,
}

/// Where status goes: the object's status subresource (Kubernetes) or the
/// status file / HTTP endpoint (standalone).
pub trait StatusSink: Send + Sync {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, anyhow::Result<()>>;
}
