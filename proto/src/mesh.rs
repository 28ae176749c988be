//! The mesh itself, for every local proxy: SDS trust secrets, and CDS/EDS
//! for the services peers export ([`mesh_resources`] packs them all).
//!
//! Pure builders, no I/O. Every resource is validated before it is
//! returned (and so before it is pushed), so Envoy never sees a malformed
//! root or an empty address: a root must parse as X.509 certificates, an
//! endpoint address must be an IP literal (EDS does not resolve names),
//! ports must be non-zero, names non-empty. Errors name the peer, the field
//! (as the peer's metadata document names it, or as the Envoy resource does
//! for the `validate_*` functions) and the cause.
//!
//! The builders live by resource kind ([`crate::secrets`],
//! [`crate::clusters`], [`crate::endpoints`]); the names they give in
//! [`multicloud_core::naming`]. This module re-exports what the agent and
//! the test bed use together.

use std::collections::HashSet;

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

pub use crate::clusters::{remote_clusters, remote_clusters_with, validate_cluster, ALPN, METADATA_NAMESPACE};
pub use crate::endpoints::{gateway_weights, remote_endpoints, validate_load_assignment, LOCALITY_REGION};
pub use crate::error::{BuildError, LOCAL};
pub use crate::inputs::{ExportedService, IngressGateway, PeerView};
pub use crate::secrets::{peer_root_secret, trust_bundle_secret, validate_secret};
pub use crate::source::{resource_file_name, ClientIdentity, ConfigSourceKind, Sources};
pub use multicloud_core::naming::{peer_root_secret_name, remote_cluster_name, sni, TRUST_BUNDLE_SECRET};

use crate::error::malformed;

/// Everything for `peers`, packed for `DiscoveryResponse`s: secrets (the
/// trust bundle, then each peer's root), clusters, load assignments. Names
/// are unique across peers; a name repeated (two peers of one name) is an error.
pub struct MeshResources {
    pub secrets: Vec<Any>,
    pub clusters: Vec<Any>,
    pub endpoints: Vec<Any>,
}

/// Builds and validates everything for `peers` with the given sources.
pub fn mesh_resources(
    local_root_pem: &str,
    peers: &[PeerView],
    client: &ClientIdentity,
    sources: &Sources,
) -> Result<MeshResources, BuildError> {
    let mut secrets = vec![pack_any(trust_bundle_secret(local_root_pem, peers)?)];
    let (mut clusters, mut endpoints) = (Vec::new(), Vec::new());
    let (mut names, mut uuids) = (HashSet::new(), HashSet::new());
    for p in peers {
        if !names.insert(p.name) {
            return Err(malformed(p.name, "name", "two peers have this name"));
        }
        if !uuids.insert(p.cluster_uuid) {
            return Err(malformed(p.name, "clusterUUID", "another peer has this cluster UUID"));
        }
        secrets.push(pack_any(peer_root_secret(p)?));
        clusters.extend(remote_clusters_with(p, client, sources)?.into_iter().map(pack_any));
        endpoints.extend(remote_endpoints(p)?.into_iter().map(pack_any));
    }
    Ok(MeshResources { secrets, clusters, endpoints })
}

#[cfg(test)]
mod tests;
