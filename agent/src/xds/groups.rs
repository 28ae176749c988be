//! Node groups: which snapshot a connecting proxy gets. A proxy's group
//! comes from its node metadata `MULTICLOUD_ROLE` (`gateway`/`sidecar`),
//! else from Istio's node id convention (`router~` is a gateway).

use crate::xds::Classify;
use std::sync::Arc;

pub const GATEWAY_GROUP: &str = "gateway";
pub const SIDECAR_GROUP: &str = "sidecar";

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
