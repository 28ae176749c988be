//! Where desired state comes from: the standalone file ([`standalone`]) or
//! the API server ([`kubernetes`]). Both publish a [`Desired`] on a
//! `tokio::sync::watch` channel; the reconciler does not know which it runs
//! with.

pub mod kubernetes;
pub mod standalone;

use crate::crd::IstioMulticloudSpec;
use crate::facts::LocalFacts;
use std::collections::BTreeMap;

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
