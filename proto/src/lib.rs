//! Wire types the project speaks: the Envoy xDS messages (re-exported from
//! `envoy-types`, pre-generated for prost/tonic, so no `protoc` is needed)
//! and builders for the resources that carry the project's configuration.
//!
//! Builders live here, not in the agent, so that the resource the test bed
//! hands a real Envoy (as a binary `DiscoveryResponse` file) is byte for byte
//! the resource the agent serves over ADS.

pub use envoy_types;
pub use prost;

pub mod edge_filter;
pub mod mesh;
pub mod traffic;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;

/// A state-of-the-world `DiscoveryResponse` of `resources` (already packed).
pub fn discovery_response(type_url: &str, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse { version_info: version.into(), type_url: type_url.into(), resources, ..Default::default() }
}
