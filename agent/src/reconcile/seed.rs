//! What the reconciler knows of a remote's public document, and where a
//! peer's state starts when the reconciler first sees its object.

use crate::cluster_uuid::ClusterUuid;
use crate::crd::IstioMulticloudStatus;
use multicloud_core::metadata::ValidPublic;

/// A remote's validated public document with its UUID (lower-cased once).
#[derive(Clone)]
pub(super) struct KnownPublic {
    pub(super) uuid: ClusterUuid,
    pub(super) valid: ValidPublic,
}

impl KnownPublic {
    pub(super) fn new(valid: ValidPublic) -> KnownPublic {
        KnownPublic { uuid: ClusterUuid::of(&valid), valid }
    }
}

/// Where a peer starts: from its object's status when that holds a pinned
/// UUID and a last good public document that still validates (a new Lease
/// holder, or a restarted agent, keeps the peer established while the
/// remote is down, and keeps its pin); else from nothing.
pub(super) fn seed(name: &str, want: &crate::sources::DesiredPeer) -> (IstioMulticloudStatus, Option<KnownPublic>) {
    let Some(status) = want.status.clone() else { return (IstioMulticloudStatus::default(), None) };
    let pinned = status.remote_cluster_uuid.clone();
    let cached = status.metadata_cache.as_ref().and_then(|c| c.public.as_ref()).map(|p| p.document.clone());
    let public = match (pinned, cached) {
        (Some(pin), Some(doc)) => match doc.validate() {
            Ok(valid) if ClusterUuid::of(&valid).as_str() == pin.to_ascii_lowercase() => Some(KnownPublic::new(valid)),
            Ok(_) => {
                tracing::warn!(object = %name, "the status's cached public document names another UUID than its pin; starting over");
                None
            }
            Err(e) => {
                tracing::warn!(object = %name, "the status's cached public document does not validate ({e}); starting over");
                None
            }
        },
        _ => None,
    };
    match public {
        Some(p) => (status, Some(p)),
        // A pin without a usable document still pins.
        None => (IstioMulticloudStatus { remote_cluster_uuid: status.remote_cluster_uuid, ..Default::default() }, None),
    }
}
