//! The agent's Envoy ADS server: one snapshot of resources per node group
//! (e.g. "gateway", "sidecar"), served to every connected proxy of that group
//! over state-of-the-world ([`sotw`]) or delta ([`delta`]) ADS, with per-type
//! nonces, ACK/NACK tracking and an admin view of every proxy
//! ([`server::ProxyStatus`]).
//!
//! By role: [`snapshot`] (resources and their content-hash versions),
//! [`server`] (state, admission, the TLS accept loop), [`stream`] (one
//! proxy's stream, whichever the protocol), `services` (the gRPC services),
//! [`tls`] (the port's mutual TLS), [`groups`] (which snapshot a proxy gets),
//! [`render`] (the data plane as snapshots), [`cache`] (resources reused while
//! their inputs hold), [`served_cert`] (the certificates the agent serves
//! itself, re-read when their files change).
//!
//! Who may receive a group's snapshot: on the TLS port ([`XdsServer::serve_tls`])
//! every client proved a SPIFFE identity chained to this cluster's root;
//! [`AccessPolicy`] restricts some groups (the gateway's, which carries the
//! API proxy credential and the private document) to listed identities.
//!
//! The names below are handed on for users outside the agent (the test bed);
//! inside it, each is named by the module that defines it.

pub mod cache;
mod delta;
pub mod groups;
pub mod render;
pub mod served_cert;
pub mod server;
mod services;
pub mod snapshot;
mod sotw;
pub mod stream;
#[cfg(test)]
mod tests;
pub mod tls;

pub use multicloud_proto::type_url::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};
pub use server::{AccessPolicy, Classify, Nack, Protocol, ProxyStatus, SentTotals, TypeStatus, XdsServer};
pub use snapshot::{resource_version, Snapshot, TypeUrl, PUSH_ORDER};
pub use stream::DEBOUNCE;
