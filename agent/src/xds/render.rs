//! Turns the data plane into xDS snapshots, one per proxy group:
//!
//! - `gateway` (the ingress gateway): the edge filter's configuration as an
//!   ECDS resource (`multicloud-edge`, and `multicloud-api` for the API
//!   proxy guard), plus the trust secrets;
//! - `sidecar` (workload proxies): SDS trust secrets (the trust bundle of
//!   this cluster's root plus every established peer's root, and one secret
//!   per peer holding only that peer's root) and CDS/EDS for the remote
//!   services of every peer whose private metadata is known and whose
//!   object has `enableIngressGateway`.
//!
//! A proxy's group: `super::groups`. Every resource is built and validated by
//! `multicloud_proto::mesh`; a peer whose resources do not validate is left
//! out (and logged, and counted) rather than breaking the others.

use super::cache::{cached, input_hash, BuildCache, Built};
use super::snapshot::Snapshot;
use crate::data_plane::{DataPlane, EstablishedPeer};
use crate::metrics::Metrics;
use multicloud_core::metadata::MeshMode;
use multicloud_proto::edge_filter;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::mesh::{self, ClientIdentity, PeerView};
use multicloud_proto::traffic::{self, LocalPort, Sameness, TrafficPeer};
use multicloud_proto::type_url::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, SECRET};
use std::sync::Arc;

use multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET;
use multicloud_proto::edge_filter::API_FILTER_NAME;
use multicloud_proto::secrets::{api_credential_secret, tls_certificate_secret};

use super::served_cert::{CertAndKey, ServedCert};

/// What the snapshots are rendered with besides the data plane: the filter
/// module, the workload certificate's SDS name and source, the certificates
/// the agent serves itself, how sameness merges, the mesh port, and the
/// caches that keep unchanged resources byte for byte.
pub struct Renderer {
    pub cache: BuildCache,
    /// The merged (sameness) clusters' build cache.
    pub traffic_cache: BuildCache,
    pub metrics: Arc<Metrics>,
    /// Where the gateway gets the filter module (inline, or a path on the gateway).
    pub module: edge_filter::Module,
    /// SDS name and source of the workload certificate sidecars present to peers.
    pub cert_secret: String,
    pub cert_sds_cluster: String,
    /// Standalone mode without istio-agent: the workload certificate and key
    /// (PEM) the agent serves itself as SDS secret `cert_secret` over ADS.
    pub workload_cert: Option<ServedCert>,
    /// How sidecars share a service between its local and remote copies.
    pub sameness: Sameness,
    /// Where the gateway's mesh-port listener binds (none: the agent serves
    /// no listener, as when istiod programs the port).
    pub mesh_listen: Option<std::net::SocketAddr>,
    /// Standalone mode: the gateway's own workload certificate and key
    /// (PEM), served to the gateway group as SDS `cert_secret`.
    pub gateway_cert: Option<ServedCert>,
    /// Also serve one cluster per peer and service port
    /// (`outbound|<port>||<host>|multicloud-<peer>`), besides the merged one
    /// that already holds every peer's copy: off by default, as it doubles
    /// what sidecars hold (and what every push diffs) for a cluster nothing
    /// routes to unless an operator points a route at one peer's copy.
    pub per_peer_clusters: bool,
}

/// One data plane state rendered for each node group.
#[derive(Debug, Clone, Default)]
pub struct GroupSnapshots {
    /// For `NodeGroup::Gateway`.
    pub gateway: Snapshot,
    /// For `NodeGroup::Sidecar`.
    pub sidecar: Snapshot,
}

/// One resource of a peer, as [`Renderer::build_peer`] built or reused it.
struct PeerResource {
    type_url: &'static str,
    name: String,
    built: Built,
}

impl Renderer {
    /// The gateway's and the sidecars' snapshots of `dp`; `api_credential`:
    /// the API proxy's credential, served to the gateway when given.
    pub fn snapshots(&self, dp: &DataPlane, api_credential: Option<&str>) -> anyhow::Result<GroupSnapshots> {
        let json = serde_json::to_string(&dp.edge)?;
        let mut gateway = Snapshot::default();
        gateway.insert(EXTENSION_CONFIG, edge_filter::FILTER_NAME, edge_filter::resource(&self.module, &json));
        gateway.insert(EXTENSION_CONFIG, API_FILTER_NAME, edge_filter::resource_with_root_id(&self.module, &json, API_FILTER_NAME));

        let client = ClientIdentity { cert_secret: &self.cert_secret, sds_cluster: &self.cert_sds_cluster };
        // A peer's root is trusted (inbound bundle, its root secret) as soon
        // as its public document is pinned; its services and gateways need
        // its private document. Waiting for the private document before
        // trusting its root made early calls from that peer fail the
        // handshake, and their outlier detectors eject us for a while.
        let mut views = Vec::new();
        for p in &dp.peers {
            let (network, gateways, services) = match &p.private {
                Some(private) => (private.network_name.as_str(), private.ingress_gateways.as_slice(), private.services.as_slice()),
                None => ("", &[][..], &[][..]),
            };
            views.push((
                p,
                PeerView { name: &p.name, cluster_uuid: p.cluster_uuid.as_str(), root_ca_pem: &p.root_ca, network, gateways, services },
            ));
        }
        let mut sidecar = Snapshot::default();
        // Peers whose traffic resources are pushed (private document known),
        // and every peer whose root is trusted.
        let mut good: Vec<PeerView> = Vec::new();
        let mut trusted: Vec<PeerView> = Vec::new();
        let mut cache = self.cache.lock();
        let mut next_cache = std::collections::HashMap::new();
        for (p, view) in &views {
            match self.build_peer(p, view, &client, &mut cache) {
                Ok(resources) => {
                    for PeerResource { type_url, name, built } in resources {
                        if type_url == SECRET {
                            gateway.insert_shared(SECRET, &name, built.version.clone(), built.resource.clone());
                        }
                        sidecar.insert_shared(type_url, &name, built.version.clone(), built.resource.clone());
                        next_cache.insert((type_url, name), built);
                    }
                    trusted.push(*view);
                    if p.private.is_some() {
                        good.push(*view);
                    }
                }
                Err(e) => {
                    tracing::error!(object = %p.name, "the peer's data plane resources do not validate and are not pushed: {e}");
                    self.metrics.xds_build_error(&p.name);
                }
            }
        }
        *cache = next_cache;
        drop(cache);
        if let Some(c) = api_credential {
            gateway.insert(SECRET, API_PROXY_CREDENTIAL_SECRET, pack_any(api_credential_secret(c)));
        }
        if let Some(c) = &self.workload_cert {
            self.insert_served_cert(&mut sidecar, &c.current());
        }
        if let Some(c) = &self.gateway_cert {
            self.insert_served_cert(&mut gateway, &c.current());
        }
        // Inbound trust: with an identity-enforcing gateway, peers reach the
        // workloads only through it (re-originated with the gateway's local
        // identity), so the workloads trust the local root alone and a
        // peer's CA can never be taken for a local workload.
        let inbound_peers: &[PeerView] = match dp.local.mesh_mode {
            MeshMode::Passthrough => &trusted,
            MeshMode::IdentityEnforcing => &[],
        };
        let bundle = mesh::trust_bundle_secret(&dp.local.root_ca, inbound_peers)?;
        sidecar.insert(SECRET, mesh::TRUST_BUNDLE_SECRET, pack_any(bundle.clone()));
        gateway.insert(SECRET, mesh::TRUST_BUNDLE_SECRET, pack_any(bundle));
        let local_root = pack_any(traffic::local_root_secret(&dp.local.root_ca)?);
        sidecar.insert(SECRET, traffic::LOCAL_ROOT_SECRET, local_root.clone());
        gateway.insert(SECRET, traffic::LOCAL_ROOT_SECRET, local_root);
        self.traffic(dp, &good, &client, &mut gateway, &mut sidecar, &json);
        Ok(GroupSnapshots { gateway, sidecar })
    }
}

impl Renderer {
    /// Puts `pair` into `snap` as the SDS secret `cert_secret` (what the
    /// proxies of that group present).
    pub fn insert_served_cert(&self, snap: &mut Snapshot, pair: &CertAndKey) {
        snap.insert(SECRET, &self.cert_secret, pack_any(tls_certificate_secret(&self.cert_secret, &pair.chain, &pair.key)));
    }

    /// Namespace sameness for the sidecars and the mesh port for the
    /// gateway. A service port whose resources do not build is left out
    /// (logged and counted under the object `(local)` or the peer).
    fn traffic(
        &self,
        dp: &DataPlane,
        good: &[PeerView],
        client: &ClientIdentity,
        gateway: &mut Snapshot,
        sidecar: &mut Snapshot,
        json: &str,
    ) {
        let local: Vec<LocalPort> =
            dp.local.local_endpoints.iter().map(|l| LocalPort { hostname: &l.hostname, port: l.port, addresses: &l.addresses }).collect();
        let enabled: std::collections::HashSet<&str> =
            dp.peers.iter().filter(|p| p.enable_ingress_gateway).map(|p| p.name.as_str()).collect();
        let modes: std::collections::HashMap<&str, MeshMode> =
            dp.peers.iter().map(|p| (p.name.as_str(), p.private.as_ref().and_then(|d| d.mesh_mode().ok()).unwrap_or_default())).collect();
        let peers: Vec<TrafficPeer> = good
            .iter()
            .filter(|v| enabled.contains(v.name))
            .map(|v| TrafficPeer { view: *v, mode: modes.get(v.name).copied().unwrap_or_default() })
            .collect();
        let mut cache = self.traffic_cache.lock();
        let mut old = std::mem::take(&mut *cache);
        for ((host, port), exporters) in traffic::exports_by_port(&peers) {
            let name = traffic::sameness_cluster_name(host, port);
            #[allow(clippy::type_complexity)]
            let who: Vec<(&str, &str, MeshMode, &str, &[multicloud_core::metadata::IngressGateway], u32)> = exporters
                .iter()
                .map(|(p, s)| (p.view.name, p.view.cluster_uuid, p.mode, p.view.network, p.view.gateways, s.ready_endpoints))
                .collect();
            let mine: Vec<&LocalPort> = local.iter().filter(|l| l.hostname == host && l.port == port).collect();
            let cluster_key = input_hash(&(
                host,
                port,
                &dp.local.cluster_uuid,
                who.iter().map(|w| (w.0, w.1, w.2)).collect::<Vec<_>>(),
                client.cert_secret,
                client.sds_cluster,
            ));
            let cla_key = input_hash(&(
                host,
                port,
                self.sameness,
                mine.iter().map(|l| l.addresses).collect::<Vec<_>>(),
                who.iter().map(|w| (w.0, w.3, w.4, w.5)).collect::<Vec<_>>(),
            ));
            let built = (|| -> Result<_, mesh::BuildError> {
                let c = cached(&mut old, CLUSTER, &name, cluster_key, || {
                    Ok(pack_any(traffic::sameness_cluster(&dp.local.cluster_uuid, host, port, &exporters, client)?))
                })?;
                let e = cached(&mut old, ENDPOINT, &name, cla_key, || {
                    Ok(pack_any(traffic::sameness_load_assignment(host, port, &local, &exporters, self.sameness)?))
                })?;
                Ok((c, e))
            })();
            match built {
                Ok((c, e)) => {
                    sidecar.insert_shared(CLUSTER, &name, c.version.clone(), c.resource.clone());
                    sidecar.insert_shared(ENDPOINT, &name, e.version.clone(), e.resource.clone());
                    cache.insert((CLUSTER, name.clone()), c);
                    cache.insert((ENDPOINT, name.clone()), e);
                }
                Err(e) => {
                    tracing::error!(object = %e.peer(), service = %name, "the merged cluster does not build and is not pushed: {e}");
                    self.metrics.xds_build_error(e.peer());
                }
            }
        }
        drop(cache);
        let Some(listen) = self.mesh_listen else { return };
        if dp.local.mesh_mode == MeshMode::IdentityEnforcing {
            gateway.insert(
                EXTENSION_CONFIG,
                traffic::MESH_FILTER_NAME,
                edge_filter::resource_with_root_id(&self.module, json, traffic::MESH_FILTER_NAME),
            );
        }
        // Inbound chains: every peer whose root is pushed may call us,
        // whether or not we route to its gateway (`enableIngressGateway`).
        let peer_views: Vec<PeerView> = good.to_vec();
        let inputs = traffic::GatewayInputs {
            mode: dp.local.mesh_mode,
            listen,
            exported: &dp.local.services,
            local: &local,
            peers: &peer_views,
            client: *client,
        };
        match traffic::gateway_resources(&inputs) {
            Ok((listener, clusters, cla)) => {
                if listener.filter_chains.is_empty() {
                    tracing::info!("the mesh port has nothing to serve yet (no exported service or no peer): no listener");
                    return;
                }
                for c in clusters {
                    let name = c.name.clone();
                    gateway.insert(CLUSTER, &name, pack_any(c));
                }
                for e in cla {
                    let name = e.cluster_name.clone();
                    gateway.insert(ENDPOINT, &name, pack_any(e));
                }
                gateway.insert(LISTENER, traffic::MESH_LISTENER, pack_any(listener));
            }
            Err(e) => {
                tracing::error!(object = %e.peer(), "the mesh-port listener does not build and is not pushed: {e}");
                self.metrics.xds_build_error(e.peer());
            }
        }
    }

    /// One peer's resources: its root secret, and per exported service and
    /// port a cluster and a load assignment, each reused from `cache` when
    /// its inputs are unchanged. Any error leaves the whole peer out.
    fn build_peer(
        &self,
        p: &EstablishedPeer,
        view: &PeerView,
        client: &ClientIdentity,
        cache: &mut std::collections::HashMap<(&'static str, String), Built>,
    ) -> Result<Vec<PeerResource>, mesh::BuildError> {
        let mut out = Vec::new();
        let mut reuse =
            |type_url: &'static str,
             name: String,
             key: u64,
             build: &mut dyn FnMut() -> Result<multicloud_proto::envoy_types::pb::google::protobuf::Any, mesh::BuildError>| {
                let built = cached(cache, type_url, &name, key, build)?;
                out.push(PeerResource { type_url, name, built });
                Ok::<(), mesh::BuildError>(())
            };
        let root_name = mesh::peer_root_secret_name(view.cluster_uuid);
        reuse(SECRET, root_name, input_hash(&(view.name, view.cluster_uuid, view.root_ca_pem)), &mut || {
            Ok(pack_any(mesh::peer_root_secret(view)?))
        })?;
        if !p.enable_ingress_gateway || p.private.is_none() || !self.per_peer_clusters {
            return Ok(out);
        }
        let mut names = std::collections::HashSet::new();
        for svc in view.services {
            let one = PeerView { services: std::slice::from_ref(svc), ..*view };
            // A cluster does not depend on endpoint counts or gateway addresses.
            let cluster_key = input_hash(&(
                view.name,
                view.cluster_uuid,
                view.network,
                &svc.hostname,
                &svc.ports,
                client.cert_secret,
                client.sds_cluster,
            ));
            let endpoint_key = input_hash(&(view.name, view.network, view.gateways, &svc.hostname, &svc.ports, svc.ready_endpoints));
            for port in &svc.ports {
                let name = mesh::remote_cluster_name(view.name, &svc.hostname, port.port);
                if !names.insert(name.clone()) {
                    return Err(mesh::BuildError::Name {
                        peer: view.name.to_string(),
                        field: format!("services[{}]", svc.hostname),
                        cause: format!("{name} is exported twice"),
                    });
                }
                let mut clusters = None;
                reuse(CLUSTER, name.clone(), cluster_key, &mut || {
                    let built = clusters.get_or_insert_with(|| mesh::remote_clusters(&one, client)).clone()?;
                    built.into_iter().find(|c| c.name == name).map(pack_any).ok_or_else(|| mesh::BuildError::Name {
                        peer: view.name.to_string(),
                        field: svc.hostname.clone(),
                        cause: "cluster not built".into(),
                    })
                })?;
                let mut endpoints = None;
                reuse(ENDPOINT, name.clone(), endpoint_key, &mut || {
                    let built = endpoints.get_or_insert_with(|| mesh::remote_endpoints(&one)).clone()?;
                    built.into_iter().find(|e| e.cluster_name == name).map(pack_any).ok_or_else(|| mesh::BuildError::Name {
                        peer: view.name.to_string(),
                        field: svc.hostname.clone(),
                        cause: "load assignment not built".into(),
                    })
                })?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multicloud_core::metadata::{ExportedService, IngressGateway, PrivateMetadata, ServicePort};

    fn root() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    fn dp(ready: u32) -> DataPlane {
        let facts = crate::data_plane::test_facts("6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a", root());
        let services = (0..20)
            .map(|i| ExportedService {
                hostname: format!("s{i}.abc.svc.cluster.local"),
                ports: vec![ServicePort { name: "http".into(), port: 80, protocol: None }],
                ready_endpoints: if i == 7 { ready } else { 1 },
            })
            .collect();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let key_pem = multicloud_core::pem::ed25519_public_key_to_pem(&key.verifying_key());
        crate::data_plane::test_data_plane(
            facts,
            key_pem,
            vec![EstablishedPeer {
                name: "b".into(),
                cluster_uuid: "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b".parse().unwrap(),
                root_ca: ROOT_B.with(|r| r.clone()),
                private: Some(PrivateMetadata {
                    ingress_gateways: vec![IngressGateway { address: "127.0.2.1".into(), port: 15443 }],
                    api_host: String::new(),
                    network_name: "net-b".into(),
                    services,
                    mesh_mode: None,
                }),
                enable_ingress_gateway: true,
                metadata_ca: None,
            }],
        )
    }

    thread_local! {
        static ROOT_B: String = root();
    }

    fn renderer() -> Renderer {
        Renderer {
            cache: Default::default(),
            traffic_cache: Default::default(),
            metrics: Arc::new(Metrics::default()),
            module: "/f.wasm".into(),
            cert_secret: "default".into(),
            cert_sds_cluster: "ads".into(),
            workload_cert: None,
            sameness: Default::default(),
            mesh_listen: None,
            gateway_cert: None,
            per_peer_clusters: true,
        }
    }

    fn versions(s: &Snapshot, t: &str) -> std::collections::BTreeMap<String, String> {
        s.resources(t).map(|m| m.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// By default sidecars get only the merged clusters (every copy of a
    /// service port in one), not one more per peer.
    #[test]
    fn without_per_peer_clusters_only_the_merged_ones_are_served() {
        let s = Renderer { per_peer_clusters: false, ..renderer() };
        let sidecar = s.snapshots(&dp(1), None).unwrap().sidecar;
        let names: Vec<&String> = sidecar.resources(CLUSTER).unwrap().keys().collect();
        assert_eq!(names.len(), 20);
        assert!(names.iter().all(|n| n.ends_with("|multicloud")), "{names:?}");
        assert_eq!(sidecar.resources(ENDPOINT).unwrap().len(), 20);
    }

    /// A peer whose public document is pinned but whose private document is
    /// not fetched yet: its root is trusted inbound (so its first calls do
    /// not fail the handshake), and it gets no clusters yet.
    #[test]
    fn a_peer_known_only_by_its_public_document_is_trusted_but_not_routed_to() {
        let s = renderer();
        let mut d = dp(1);
        d.peers[0].private = None;
        let GroupSnapshots { gateway, sidecar } = s.snapshots(&d, None).unwrap();
        let bundle = sidecar.resources(SECRET).and_then(|m| m.get(mesh::TRUST_BUNDLE_SECRET)).map(|(_, a)| a.clone()).unwrap();
        let bundle = <multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as multicloud_proto::prost::Message>::decode(bundle.value.as_slice()).unwrap();
        let pem = format!("{bundle:?}");
        let b_first_line = ROOT_B.with(|r| r.lines().nth(1).unwrap().to_string());
        assert!(pem.contains(&b_first_line), "the peer's root is in the inbound bundle");
        assert!(sidecar.resources(SECRET).unwrap().contains_key(&mesh::peer_root_secret_name("6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b")));
        assert!(sidecar.resources(CLUSTER).is_none_or(|m| m.is_empty()), "no clusters before the private document");
        assert!(gateway.resources(LISTENER).is_none_or(|m| m.is_empty()));
    }

    /// Rebuilding unchanged resources must not change their bytes (protobuf
    /// maps encode in random order): a one-service change moves exactly that
    /// service's load assignments (the peer's and the merged one), and
    /// nothing else.
    #[test]
    fn a_one_service_change_changes_exactly_one_resource() {
        let s = renderer();
        let (d1, d2) = (dp(1), dp(1));
        let (mut d3, _) = (dp(1), ());
        d3.local = d1.local.clone();
        d3.edge = d1.edge.clone();
        if let Some(p) = d3.peers[0].private.as_mut() {
            p.services[7].ready_endpoints = 5;
        }
        let a = s.snapshots(&d1, None).unwrap().sidecar;
        let mut d2 = d2;
        d2.local = d1.local.clone();
        d2.edge = d1.edge.clone();
        let b = s.snapshots(&d2, None).unwrap().sidecar;
        let c = s.snapshots(&d3, None).unwrap().sidecar;
        for t in [CLUSTER, SECRET] {
            assert_eq!(versions(&a, t), versions(&b, t), "{t} unchanged when nothing changed");
            assert_eq!(versions(&b, t), versions(&c, t), "{t} unchanged by an endpoint count");
        }
        assert_eq!(versions(&a, ENDPOINT), versions(&b, ENDPOINT));
        let (eb, ec) = (versions(&b, ENDPOINT), versions(&c, ENDPOINT));
        let changed: Vec<&String> = eb.keys().filter(|k| eb[*k] != ec[*k]).collect();
        // The peer's own load assignment and the merged (sameness) one of s7.
        assert_eq!(changed, ["outbound|80||s7.abc.svc.cluster.local|multicloud", "outbound|80||s7.abc.svc.cluster.local|multicloud-b"]);
        assert_eq!(eb.len(), 40);
    }
}
