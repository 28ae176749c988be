//! What this cluster publishes about itself, whichever source it comes from
//! (Kubernetes objects, or the standalone file), and the documents and
//! filter configuration the agent assembles from it.

use multicloud_core::metadata::{ExportedService, IngressGateway, MeshMode, PrivateMetadata, PublicMetadata};
use serde::{Deserialize, Serialize};

/// This cluster's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalFacts {
    /// The cluster UUID (the kube-system namespace UID in Kubernetes).
    #[serde(rename = "clusterUUID")]
    pub cluster_uuid: String,
    /// PEM bundle of the Istio root CA(s).
    #[serde(rename = "rootCA")]
    pub root_ca: String,
    /// Where peers reach this cluster's ingress gateway (mesh port).
    #[serde(default)]
    pub ingress_gateways: Vec<IngressGateway>,
    /// The API proxy's host[:port], without scheme; empty if not offered.
    #[serde(default)]
    pub api_host: String,
    pub network_name: String,
    /// Services exported to peers.
    #[serde(default)]
    pub services: Vec<ExportedService>,
    /// What this cluster's gateway does with peers' mesh traffic (published
    /// in the private document so peers dial it the right way).
    #[serde(default)]
    pub mesh_mode: MeshMode,
    /// Where this cluster's own copies of services run (pod address and
    /// target port per service port). Never published: it feeds the local
    /// side of the merged clusters sidecars get (namespace sameness) and the
    /// gateway's routes to exported services.
    #[serde(default)]
    pub local_endpoints: Vec<LocalEndpoints>,
}

/// The ready endpoints of one local service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoints {
    pub hostname: String,
    /// The service port.
    pub port: u16,
    /// `ip:port` of each ready endpoint (the sidecar's inbound side).
    pub addresses: Vec<String>,
}

impl LocalFacts {
    pub fn public_document(&self, authn_key_pub_pem: String, additional_authn_keys_pub: Vec<String>) -> PublicMetadata {
        PublicMetadata {
            cluster_uuid: self.cluster_uuid.clone(),
            root_ca: self.root_ca.clone(),
            authn_key_pub: authn_key_pub_pem,
            additional_authn_keys_pub,
        }
    }

    pub fn private_document(&self) -> PrivateMetadata {
        PrivateMetadata {
            ingress_gateways: self.ingress_gateways.clone(),
            api_host: self.api_host.clone(),
            network_name: self.network_name.clone(),
            services: self.services.clone(),
            mesh_mode: Some(self.mesh_mode.as_str().to_string()),
        }
    }
}
