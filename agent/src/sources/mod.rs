//! Where desired state comes from: the standalone file ([`standalone`]) or
//! the API server ([`kubernetes`]). Both publish a [`Desired`] on a
//! `tokio::sync::watch` channel; the reconciler does not know which it runs
//! with.

pub mod kubernetes;
pub mod standalone;
pub mod state;

use crate::crd::IstioMulticloudSpec;
use crate::facts::LocalFacts;
use std::collections::BTreeMap;

/// One `IstioMulticloud` object as the reconciler needs it. Two are equal
/// when their spec and generation are: a status write (the agent's own) is
/// no change of what is desired.
#[derive(Debug, Clone)]
pub struct DesiredPeer {
    pub spec: IstioMulticloudSpec,
    /// `metadata.generation` (reported back as `observedGeneration`).
    pub generation: Option<i64>,
    /// The object's status as the API server has it (Kubernetes mode): a
    /// new Lease holder starts from its last good documents
    /// (`metadataCache`) and pinned UUID, so a peer that is down when the
    /// holder changes stays established.
    pub status: Option<crate::crd::IstioMulticloudStatus>,
}

/// Everything the reconciler acts on. Sources publish a new value on every
/// change through a `tokio::sync::watch` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Objects by name.
    pub peers: BTreeMap<String, DesiredPeer>,
    pub facts: LocalFacts,
}

impl PartialEq for DesiredPeer {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.generation == other.generation
    }
}
