//! Istio's own trust and topology for the established peers (Kubernetes
//! mode): the ConfigMap istiod merges into its mesh configuration when it runs
//! with `SHARED_MESH_CONFIG=<name>` (deploy/ creates it empty, named
//! `istio-multicloud-mesh`; the agent only patches it).
//!
//! - key `mesh`: `caCertificates`, one entry per pinned peer root. With
//!   `ISTIO_MULTIROOT_MESH=true` istiod merges them with its own root and
//!   pushes the bundle to every proxy by PCDS; pilot-agents started with
//!   `PROXY_CONFIG_XDS_AGENT=true` re-serve it as the `ROOTCA` secret, so
//!   workloads and gateways trust the peers' workloads without a restart,
//!   and stop trusting a peer as soon as it is unlinked.
//! - key `meshNetworks`: per peer network, `endpoints: [{fromRegistry:
//!   <object name>}]` (the cluster ID istiod gives the peer's remote secret)
//!   and `gateways` = the peer's published gateway addresses (from its
//!   private metadata). istiod then sends this cluster's proxies to the
//!   peer's gateway for the peer's endpoints. A peer on this cluster's own
//!   network gets no entry (its endpoints are reached directly).
//!
//! What istiod does with the two keys: the shared ConfigMap's `mesh` is
//! applied first and the `istio` ConfigMap's on top (a `caCertificates` list
//! set there replaces this one); for `meshNetworks` istiod takes the first
//! source that has one, which is this ConfigMap once the agent wrote it, so
//! networks an operator keeps in the `istio` ConfigMap are not used then
//! (docs/istio.md, "What the agent writes into Istio").
//!
//! Only the Lease holder writes, by server-side apply with the agent's field
//! manager (so the keys it owns are its own, and nobody else's fields are
//! touched); nothing secret is written (roots and addresses are public).

use crate::data_plane::DataPlane;
use crate::kube::lease::LeaseGuard;
use crate::kube::FIELD_MANAGER;
use crate::sinks::DataPlaneSink;
use crate::BoxFuture;
use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The ConfigMap deploy/ creates for the agent (istiod's `SHARED_MESH_CONFIG`).
pub const DEFAULT_NAME: &str = "istio-multicloud-mesh";

/// What the agent writes: the ConfigMap's `mesh` and `meshNetworks` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfigData {
    /// Mesh config YAML (JSON, which is YAML): `caCertificates`.
    pub mesh: String,
    /// Mesh networks YAML (JSON): `networks`.
    pub mesh_networks: String,
}

/// Renders the two keys from the established peers: roots in peer-name
/// order, each once; networks of the peers whose private document names a
/// network other than this cluster's and at least one gateway.
pub fn render(dp: &DataPlane) -> MeshConfigData {
    let mut peers: Vec<_> = dp.peers.iter().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut roots: Vec<String> = Vec::new();
    for p in &peers {
        let pem = p.root_ca.trim();
        if !pem.is_empty() && !roots.iter().any(|r| r == pem) {
            roots.push(pem.to_string());
        }
    }
    let ca: Vec<Value> = roots.into_iter().map(|pem| json!({"pem": format!("{pem}\n")})).collect();
    let mut networks: BTreeMap<String, Value> = BTreeMap::new();
    for p in &peers {
        let Some(private) = &p.private else { continue };
        if private.network_name.is_empty() || private.network_name == dp.local.network_name || private.ingress_gateways.is_empty() {
            continue;
        }
        let entry = networks.entry(private.network_name.clone()).or_insert_with(|| json!({"endpoints": [], "gateways": []}));
        if let Some(eps) = entry["endpoints"].as_array_mut() {
            eps.push(json!({"fromRegistry": p.name}));
        }
        if let Some(gws) = entry["gateways"].as_array_mut() {
            for g in &private.ingress_gateways {
                let gw = json!({"address": g.address, "port": g.port});
                if !gws.contains(&gw) {
                    gws.push(gw);
                }
            }
        }
    }
    MeshConfigData {
        mesh: serde_json::to_string_pretty(&json!({"caCertificates": ca})).unwrap_or_default(),
        mesh_networks: serde_json::to_string_pretty(&json!({"networks": networks})).unwrap_or_default(),
    }
}

/// Writes [`render`]'s output into the ConfigMap whenever it changes.
pub struct MeshConfigSink {
    api: Api<ConfigMap>,
    name: String,
    namespace: String,
    lease: Arc<LeaseGuard>,
    last: tokio::sync::Mutex<Option<MeshConfigData>>,
}

impl MeshConfigSink {
    pub fn new(client: kube::Client, namespace: &str, name: &str, lease: Arc<LeaseGuard>) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), namespace: namespace.into(), lease, last: Default::default() }
    }

    async fn write(&self, dp: &DataPlane) -> Result<()> {
        let data = render(dp);
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&data) {
            return Ok(());
        }
        if !self.lease.may_write().await? {
            tracing::debug!(configmap = %self.name, "not the lease holder; leaving the mesh ConfigMap to the leader");
            return Ok(());
        }
        let what = format!("ConfigMap {}/{}", self.namespace, self.name);
        // Never create it: deploy/ does, so that the agent needs no create on
        // ConfigMaps (RBAC cannot narrow create by name).
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("cannot read {what}; the agent needs get and patch on it (deploy/base/agent.yaml)"))?;
        if existing.is_none() {
            bail!("{what} does not exist: apply deploy/ (or `multicloud-agent install`) first; istiod reads it as SHARED_MESH_CONFIG");
        }
        let patch = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name},
            "data": {"mesh": data.mesh, "meshNetworks": data.mesh_networks},
        });
        self.api
            .patch(&self.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
            .await
            .with_context(|| format!("cannot write {what}; the agent needs patch on it (deploy/base/agent.yaml)"))?;
        tracing::info!(
            configmap = %self.name,
            roots = dp.peers.iter().filter(|p| !p.root_ca.trim().is_empty()).count(),
            "wrote the peers' roots and networks into Istio's shared mesh config"
        );
        *last = Some(data);
        Ok(())
    }
}

impl DataPlaneSink for MeshConfigSink {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(dp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_plane::EstablishedPeer;
    use multicloud_core::metadata::{IngressGateway, PrivateMetadata};

    fn peer(name: &str, root: &str, network: Option<(&str, &[(&str, u16)])>) -> EstablishedPeer {
        EstablishedPeer {
            name: name.into(),
            cluster_uuid: "22222222-2222-4222-8222-222222222222".parse().unwrap(),
            root_ca: root.into(),
            private: network.map(|(n, gws)| PrivateMetadata {
                ingress_gateways: gws.iter().map(|(a, p)| IngressGateway { address: (*a).into(), port: *p }).collect(),
                api_host: String::new(),
                network_name: n.into(),
                services: vec![],
                mesh_mode: None,
            }),
            enable_ingress_gateway: true,
            metadata_ca: None,
        }
    }

    fn dp(peers: Vec<EstablishedPeer>) -> DataPlane {
        crate::data_plane::sample_data_plane("11111111-1111-4111-8111-111111111111", "net-a", peers)
    }

    #[test]
    fn roots_and_networks_of_the_peers() {
        let d = render(&dp(vec![
            peer("cluster-c", "ROOT-C", Some(("net-c", &[("203.0.113.3", 15443)]))),
            peer("cluster-b", "ROOT-B\n", Some(("net-b", &[("203.0.113.2", 15443), ("gw.b.example", 443)]))),
            // Not fetched yet: its root is trusted, no network.
            peer("cluster-d", "ROOT-D", None),
            // On this cluster's own network: reached directly.
            peer("cluster-e", "ROOT-E", Some(("net-a", &[("203.0.113.5", 15443)]))),
        ]));
        let mesh: Value = serde_json::from_str(&d.mesh).unwrap();
        let pems: Vec<&str> = mesh["caCertificates"].as_array().unwrap().iter().map(|c| c["pem"].as_str().unwrap()).collect();
        assert_eq!(pems, ["ROOT-B\n", "ROOT-C\n", "ROOT-D\n", "ROOT-E\n"], "peer-name order, one newline");
        let nets: Value = serde_json::from_str(&d.mesh_networks).unwrap();
        assert_eq!(
            nets,
            json!({"networks": {
                "net-b": {"endpoints": [{"fromRegistry": "cluster-b"}], "gateways": [{"address": "203.0.113.2", "port": 15443}, {"address": "gw.b.example", "port": 443}]},
                "net-c": {"endpoints": [{"fromRegistry": "cluster-c"}], "gateways": [{"address": "203.0.113.3", "port": 15443}]},
            }})
        );
    }

    #[test]
    fn no_peers_writes_empty_lists_and_a_shared_root_once() {
        let d = render(&dp(vec![]));
        assert_eq!(serde_json::from_str::<Value>(&d.mesh).unwrap(), json!({"caCertificates": []}));
        assert_eq!(serde_json::from_str::<Value>(&d.mesh_networks).unwrap(), json!({"networks": {}}));
        let d = render(&dp(vec![peer("b", "SAME", None), peer("c", "SAME", None)]));
        assert_eq!(serde_json::from_str::<Value>(&d.mesh).unwrap()["caCertificates"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_network_shared_by_two_peers_lists_both_registries() {
        let d = render(&dp(vec![
            peer("b1", "R1", Some(("net-b", &[("203.0.113.2", 15443)]))),
            peer("b2", "R2", Some(("net-b", &[("203.0.113.2", 15443)]))),
        ]));
        let nets: Value = serde_json::from_str(&d.mesh_networks).unwrap();
        assert_eq!(nets["networks"]["net-b"]["endpoints"], json!([{"fromRegistry": "b1"}, {"fromRegistry": "b2"}]));
        assert_eq!(nets["networks"]["net-b"]["gateways"].as_array().unwrap().len(), 1);
    }
}
