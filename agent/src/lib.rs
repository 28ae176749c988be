//! The node-local agent: watches `IstioMulticloud` objects and local facts,
//! exchanges metadata with remote clusters, and configures the local proxies.

pub mod admin;
pub mod cli;
pub mod crd;
pub mod edge_file;
pub mod exchange;
pub mod facts;
pub mod install;
pub mod keys;
pub mod kube_mode;
pub mod mesh_config;
pub mod metrics;
pub mod reconcile;
pub mod remote;
pub mod remote_secret;
pub mod source;
pub mod standalone;
pub mod xds;
pub mod xds_sink;
pub mod xds_tls;
