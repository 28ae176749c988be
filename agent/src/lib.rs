//! The node-local agent: watches `IstioMulticloud` objects and local facts,
//! exchanges metadata with remote clusters, and configures the local proxies.

pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster_uuid;
pub mod config;
pub mod crd;
pub mod data_plane;
pub mod exchange;
pub mod facts;
pub mod host_port;
pub mod istio_ca;
pub mod keys;
pub mod kube;
pub mod metrics;
pub mod reasons;
pub mod reconcile;
pub mod sinks;
pub mod sources;
pub mod xds;

/// The boxed future the agent's object-safe async traits return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
