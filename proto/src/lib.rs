//! Wire types the project speaks: the Envoy xDS messages (re-exported from
//! `envoy-types`, pre-generated for prost/tonic, so no `protoc` is needed)
//! and builders for the resources that carry the project's configuration.
//!
//! Builders live here, not in the agent, so that the resource the test bed
//! hands a real Envoy (as a binary `DiscoveryResponse` file) is byte for byte
//! the resource the agent serves over ADS.
//!
//! By resource kind: [`secrets`] (SDS), [`clusters`] (CDS), [`endpoints`]
//! (EDS), [`listeners`] (LDS) and [`routes`], [`edge_filter`] (the filter's
//! ECDS resource). What they take and check: [`inputs`], [`source`] (where
//! referenced resources come from), [`error`]. [`mesh`] and [`traffic`]
//! assemble them (every peer's trust and remote services; the sidecars'
//! merged clusters and the gateway's mesh port). Type URLs: [`type_url`].
//! Names (SNI, cluster and secret names, sameness) are
//! [`multicloud_core::naming`]'s.

pub use envoy_types;
pub use prost;

pub mod clusters;
pub mod edge_filter;
pub mod endpoints;
pub mod error;
pub mod inputs;
pub mod listeners;
pub mod mesh;
pub mod parts;
pub mod routes;
pub mod secrets;
pub mod source;
pub mod traffic;
pub mod type_url;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;

/// A state-of-the-world `DiscoveryResponse` of `resources` (already packed).
pub fn discovery_response(type_url: &str, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse { version_info: version.into(), type_url: type_url.into(), resources, ..Default::default() }
}
