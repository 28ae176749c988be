//! Where the reconciler's results go: the data plane sinks (the edge's ECDS
//! file, Istio remote secrets; the xDS snapshots live in `crate::xds`) and
//! the status sinks.

pub mod ecds_file;
pub mod remote_secret;
