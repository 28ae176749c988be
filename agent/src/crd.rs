//! The `IstioMulticloud` custom resource: one object per remote cluster.
//! The CRD in `deploy/` is generated from these types (`multicloud-agent crd`)
//! and a test fails when it is stale.

use crate::reasons::Reason;
use kube::CustomResource;
use multicloud_core::metadata::{PrivateMetadata, PublicMetadata};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "istio-multicloud.dev";
pub const VERSION: &str = "v1alpha1";

/// Condition types the agent maintains.
pub mod condition {
    pub const PUBLIC: &str = "PublicMetadataExchangeReady";
    pub const PRIVATE: &str = "PrivateMetadataExchangeReady";
    pub const READY: &str = "Ready";
}

/// A remote cluster to federate with.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "istio-multicloud.dev",
    version = "v1alpha1",
    kind = "IstioMulticloud",
    plural = "istiomulticlouds",
    shortname = "imc",
    status = "IstioMulticloudStatus",
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.metadataEndpoint"}"#,
    printcolumn = r#"{"name":"Remote UUID","type":"string","jsonPath":".status.remoteClusterUUID","priority":1}"#,
    printcolumn = r#"{"name":"Public","type":"string","jsonPath":".status.conditions[?(@.type==\"PublicMetadataExchangeReady\")].status"}"#,
    printcolumn = r#"{"name":"Private","type":"string","jsonPath":".status.conditions[?(@.type==\"PrivateMetadataExchangeReady\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IstioMulticloudSpec {
    /// The remote's metadata endpoint, e.g. `https://istio.cluster-b.example.com/metadata`.
    /// Documents are fetched from `<endpoint>/public/public.json` and
    /// `<endpoint>/private/multicluster.json`. Must be https.
    // The API server refuses anything else, naming the field, before the
    // agent sees it (the agent checks again: a CRD can be edited).
    #[schemars(regex(pattern = r"^https://[^/?#\s]+"), length(max = 2048))]
    pub metadata_endpoint: String,
    /// How to trust the remote's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataTls>,
    /// Send traffic for the remote's services through its ingress gateways.
    #[serde(default = "default_true")]
    pub enable_ingress_gateway: bool,
    /// What the remote may do through this cluster's API proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_proxy: Option<ApiProxyAccess>,
}

/// The remote's access to this cluster's API proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiProxyAccess {
    /// The longest lifetime (`exp - nbf`, seconds) of the remote's `scope: api` tokens that
    /// the API proxy accepts; default 90000 (25 hours). A Deckhouse cluster mints one token
    /// with a 366-day lifetime and reuses it: set 31622400 for such a peer. Such a token
    /// cannot be revoked by itself: deleting this object removes the peer's key from the
    /// API proxy, which revokes every token the peer holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31708800))]
    pub max_token_lifetime_seconds: Option<i64>,
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataTls {
    /// PEM bundle of the CA(s) to trust for the remote's metadata endpoint,
    /// instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Do not verify the remote's TLS certificate. Only for tests; the agent
    /// warns on every fetch.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioMulticloudStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The remote's cluster UUID, pinned at the first successful exchange.
    #[serde(default, rename = "remoteClusterUUID", skip_serializing_if = "Option::is_none")]
    pub remote_cluster_uuid: Option<String>,
    /// The last good documents; kept when the remote fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_cache: Option<MetadataCache>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A condition in the standard Kubernetes shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason a person can look up in the operator guide.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataCache {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<CachedPublic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<CachedPrivate>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedPublic {
    pub document: PublicMetadata,
    /// RFC 3339.
    pub fetched_at: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedPrivate {
    pub document: PrivateMetadata,
    /// RFC 3339.
    pub fetched_at: String,
}

impl IstioMulticloudStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition; `lastTransitionTime` changes only when the status does.
    pub fn set_condition(&mut self, type_: &str, ok: Option<bool>, reason: Reason, message: String, now: &str, generation: Option<i64>) {
        let reason = reason.as_str();
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now.to_string();
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message;
                c.observed_generation = generation;
            }
            None => self.conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                last_transition_time: now.to_string(),
                observed_generation: generation,
            }),
        }
    }
}

/// The CRD as YAML, as `deploy/` carries it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let crd = IstioMulticloud::crd();
    format!(
        "# Generated by `multicloud-agent crd` from agent/src/crd.rs. Do not edit.\n{}",
        serde_saphyr::to_string(&crd).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut s = IstioMulticloudStatus::default();
        s.set_condition(condition::READY, Some(false), Reason::Pending, "m".into(), "t1", Some(1));
        s.set_condition(condition::READY, Some(false), Reason::ConnectFailed, "m".into(), "t2", Some(1));
        assert_eq!(s.condition(condition::READY).unwrap().last_transition_time, "t1");
        assert_eq!(s.condition(condition::READY).unwrap().reason, "ConnectFailed");
        s.set_condition(condition::READY, Some(true), Reason::Federated, "m".into(), "t3", Some(2));
        assert_eq!(s.condition(condition::READY).unwrap().last_transition_time, "t3");
    }

    #[test]
    fn the_crd_is_cluster_scoped_with_a_status_subresource() {
        let y = crd_yaml();
        assert!(y.contains("scope: Cluster"), "{y}");
        assert!(y.contains("status: {}"), "{y}");
        assert!(y.contains("metadataEndpoint"));
    }
}
