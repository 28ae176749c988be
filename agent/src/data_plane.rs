//! The data plane state: what the reconciler hands every sink
//! ([`crate::sinks::DataPlaneSink`]) after each change, namely the edge
//! filter's configuration, this cluster's facts and the peers whose public
//! metadata it holds ([`EstablishedPeer`]).

use crate::cluster_uuid::ClusterUuid;
use multicloud_core::edge::EdgeConfig;
use multicloud_core::metadata::PrivateMetadata;

/// A peer whose public metadata this cluster holds (last good).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EstablishedPeer {
    /// The IstioMulticloud object's name.
    pub name: String,
    pub cluster_uuid: ClusterUuid,
    pub root_ca: String,
    /// The last good private document, once fetched.
    pub private: Option<PrivateMetadata>,
    pub enable_ingress_gateway: bool,
    /// The object's `spec.metadata.ca`: the CA of the peer's gateway TLS
    /// (its metadata endpoint and its API proxy).
    pub metadata_ca: Option<String>,
}

/// Everything the data plane is configured from: the edge filter's
/// configuration, this cluster's facts and the established peers. The Lease
/// holder publishes it for the other replicas (`crate::kube::state`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataPlane {
    pub edge: EdgeConfig,
    pub local: crate::facts::LocalFacts,
    pub peers: Vec<EstablishedPeer>,
}

/// Test data: the data plane of `facts` (its documents, published with
/// `key_pem`) with `peers`, an edge configuration with default settings.
#[cfg(test)]
pub(crate) fn test_data_plane(facts: crate::facts::LocalFacts, key_pem: String, peers: Vec<EstablishedPeer>) -> DataPlane {
    DataPlane {
        edge: EdgeConfig {
            public: facts.public_document(key_pem, Vec::new()),
            private: facts.private_document(),
            peers: vec![],
            spiffe: Default::default(),
            max_token_lifetime_seconds: 600,
            public_max_age_seconds: 60,
            api: Default::default(),
            mesh: Default::default(),
        },
        local: facts,
        peers,
    }
}

/// Test data: this cluster's facts (`uuid`, `root_ca`) with one gateway,
/// 127.0.1.1:15443, on network `net-a`, and nothing exported.
#[cfg(test)]
pub(crate) fn test_facts(uuid: &str, root_ca: String) -> crate::facts::LocalFacts {
    crate::facts::LocalFacts {
        cluster_uuid: uuid.into(),
        root_ca,
        ingress_gateways: vec![multicloud_core::metadata::IngressGateway { address: "127.0.1.1".into(), port: 15443 }],
        api_host: String::new(),
        network_name: "net-a".into(),
        services: vec![],
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    }
}

/// Test data: a data plane of this cluster (`local_uuid`, on `network`) with
/// `peers`, an edge configuration that serves nothing in particular.
#[cfg(test)]
pub(crate) fn sample_data_plane(local_uuid: &str, network: &str, peers: Vec<EstablishedPeer>) -> DataPlane {
    let facts = crate::facts::LocalFacts {
        cluster_uuid: local_uuid.into(),
        root_ca: String::new(),
        ingress_gateways: vec![],
        api_host: String::new(),
        network_name: network.into(),
        services: vec![],
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    };
    test_data_plane(facts, String::new(), peers)
}
