//! Node groups: which snapshot a connecting proxy gets. A proxy's group
//! comes from its node metadata `MULTICLOUD_ROLE` (`gateway`/`sidecar`),
//! else from Istio's node id convention (`router~` is a gateway).
//!
//! The ADS server itself keys snapshots by any string (`super::server::Classify`);
//! the agent's groups are these two, named by [`NodeGroup::as_str`].

use super::server::Classify;
use std::sync::Arc;

/// The proxy groups the agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeGroup {
    /// The ingress gateway: the edge filter's configuration (with the
    /// private document), the API proxy credential, the mesh port.
    Gateway,
    /// Workload sidecars: trust secrets and the peers' services.
    Sidecar,
}

impl NodeGroup {
    pub const ALL: [NodeGroup; 2] = [NodeGroup::Gateway, NodeGroup::Sidecar];

    /// The group's name in the ADS server, on `/xds` and in `MULTICLOUD_ROLE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeGroup::Gateway => "gateway",
            NodeGroup::Sidecar => "sidecar",
        }
    }

    /// The group of a proxy: its `MULTICLOUD_ROLE` (`gateway`; any other
    /// value is a sidecar), else `router~` node ids are gateways.
    pub fn of(node: &multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node) -> NodeGroup {
        use multicloud_proto::envoy_types::pb::google::protobuf::value::Kind;
        let role = node.metadata.as_ref().and_then(|m| m.fields.get(ROLE_METADATA_KEY)).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        match role {
            Some(r) if r == NodeGroup::Gateway.as_str() => NodeGroup::Gateway,
            Some(_) => NodeGroup::Sidecar,
            None if node.id.starts_with("router~") => NodeGroup::Gateway,
            None => NodeGroup::Sidecar,
        }
    }
}

pub const GATEWAY_GROUP: &str = NodeGroup::Gateway.as_str();
pub const SIDECAR_GROUP: &str = NodeGroup::Sidecar.as_str();

/// Node metadata key naming the proxy's role.
pub const ROLE_METADATA_KEY: &str = "MULTICLOUD_ROLE";

/// [`NodeGroup::of`], as the ADS server's classifier.
pub fn classify() -> Classify {
    Arc::new(|node| NodeGroup::of(node).as_str().to_string())
}
