use super::*;
use crate::mesh::{self, PeerView};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{common_tls_context, DownstreamTlsContext, UpstreamTlsContext};
use envoy_types::pb::google::protobuf::BoolValue;
use multicloud_core::metadata::{IngressGateway, ServicePort};
use prost::Message as _;

const UUID_A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
const UUID_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";

fn svc(host: &str, ready: u32) -> ExportedService {
    ExportedService {
        hostname: host.into(),
        ports: vec![ServicePort { name: "http".into(), port: 80, protocol: None }],
        ready_endpoints: ready,
    }
}

fn client() -> ClientIdentity<'static> {
    ClientIdentity { cert_secret: "default", sds_cluster: "ads" }
}

fn tls_of(ts: &TransportSocket) -> UpstreamTlsContext {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else { panic!("typed config") };
    UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
}

fn validation_name(t: &UpstreamTlsContext) -> String {
    match &t.common_tls_context.as_ref().unwrap().validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => s.name.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn merged_cluster_validates_each_copy_against_its_own_root_only() {
    let gws = [IngressGateway { address: "127.0.2.1".into(), port: 15443 }];
    let services = [svc("foo.abc.svc.cluster.local", 3)];
    let view = PeerView { name: "b", cluster_uuid: UUID_B, root_ca_pem: "", network: "nb", gateways: &gws, services: &services };
    for (mode, sni) in [
        (MeshMode::Passthrough, "outbound_.80_._.foo.abc.svc.cluster.local".to_string()),
        (MeshMode::IdentityEnforcing, format!("{UUID_A}.peer.multicloud")),
    ] {
        let peers = [TrafficPeer { view, mode }];
        let addrs = ["127.0.1.3:15006".to_string()];
        let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &addrs }];
        let (clusters, cla) = sameness_resources(UUID_A, &local, &peers, &client(), Sameness::Balanced).unwrap();
        assert_eq!(clusters.len(), 1);
        let c = &clusters[0];
        assert_eq!(c.name, "outbound|80||foo.abc.svc.cluster.local|multicloud");
        // Local endpoints (no match metadata) use the default socket: local root only.
        assert_eq!(validation_name(&tls_of(c.transport_socket.as_ref().unwrap())), LOCAL_ROOT_SECRET);
        // The peer's gateways: that peer's root only, and the SNI its mode wants.
        let m = &c.transport_socket_matches[0];
        let t = tls_of(m.transport_socket.as_ref().unwrap());
        assert_eq!(validation_name(&t), mesh::peer_root_secret_name(UUID_B));
        assert_eq!(t.sni, sni, "{mode:?}");
        assert!(m.r#match.as_ref().unwrap().fields.contains_key(PEER_MATCH_KEY));
        // Balanced: both at priority 0; the peer weighs its ready endpoints.
        let e = &cla[0];
        assert_eq!(e.endpoints.len(), 2);
        assert!(e.endpoints.iter().all(|l| l.priority == 0));
        assert_eq!(e.endpoints[1].lb_endpoints[0].load_balancing_weight.as_ref().unwrap().value, 3);
        let meta = e.endpoints[1].lb_endpoints[0].metadata.as_ref().unwrap();
        assert!(meta.filter_metadata.contains_key("envoy.transport_socket_match"));
    }
}

#[test]
fn local_first_puts_peers_at_priority_one_and_bad_local_endpoints_are_named() {
    let gws = [IngressGateway { address: "127.0.2.1".into(), port: 15443 }];
    let services = [svc("foo.abc.svc.cluster.local", 1)];
    let view = PeerView { name: "b", cluster_uuid: UUID_B, root_ca_pem: "", network: "nb", gateways: &gws, services: &services };
    let peers = [TrafficPeer { view, mode: MeshMode::Passthrough }];
    let (_, cla) = sameness_resources(UUID_A, &[], &peers, &client(), Sameness::LocalFirst).unwrap();
    assert_eq!(cla[0].endpoints.len(), 1, "no local copy: the peer only");
    assert_eq!(cla[0].endpoints[0].priority, 1);
    let bad = ["foo.example:80".to_string()];
    let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &bad }];
    let err = sameness_resources(UUID_A, &local, &peers, &client(), Sameness::LocalFirst).unwrap_err();
    assert_eq!(err.field(), "localEndpoints[0].addresses[0]", "{err}");
    let gws = [IngressGateway { address: "gw.example".into(), port: 15443 }];
    let view = PeerView { gateways: &gws, ..view };
    let err =
        sameness_resources(UUID_A, &[], &[TrafficPeer { view, mode: MeshMode::Passthrough }], &client(), Sameness::Balanced).unwrap_err();
    assert_eq!((err.peer(), err.field()), ("b", "ingressGateways[0].address"), "{err}");
}

#[test]
fn mesh_port_listener_per_mode() {
    let exported = [svc("foo.abc.svc.cluster.local", 1)];
    let addrs = ["127.0.2.3:15006".to_string()];
    let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &addrs }];
    let gws: [IngressGateway; 0] = [];
    let peer = PeerView { name: "a", cluster_uuid: UUID_A, root_ca_pem: "", network: "na", gateways: &gws, services: &[] };
    let mut inputs = GatewayInputs {
        mode: MeshMode::Passthrough,
        listen: "127.0.2.1:15443".parse().unwrap(),
        exported: &exported,
        local: &local,
        peers: std::slice::from_ref(&peer),
        client: client(),
    };
    let (l, clusters, cla) = gateway_resources(&inputs).unwrap();
    assert_eq!(l.filter_chains.len(), 1);
    let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, vec!["outbound_.80_._.foo.abc.svc.cluster.local"]);
    assert!(l.filter_chains[0].transport_socket.is_none(), "passthrough does not terminate TLS");
    assert!(clusters[0].transport_socket.is_none());
    assert_eq!(cla[0].endpoints[0].lb_endpoints.len(), 1);

    inputs.mode = MeshMode::IdentityEnforcing;
    let (l, clusters, _) = gateway_resources(&inputs).unwrap();
    assert_eq!(l.filter_chains.len(), 1, "one chain per peer");
    let chain = &l.filter_chains[0];
    assert_eq!(chain.filter_chain_match.as_ref().unwrap().server_names, vec![peer_sni(UUID_A)]);
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &chain.transport_socket.as_ref().unwrap().config_type else { panic!() };
    let d = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(d.require_client_certificate, Some(BoolValue { value: true }));
    match &d.common_tls_context.unwrap().validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            assert_eq!(s.name, mesh::peer_root_secret_name(UUID_A), "the peer's root only")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(clusters[0].name, "outbound|80||foo.abc.svc.cluster.local|local");
    assert_eq!(validation_name(&tls_of(clusters[0].transport_socket.as_ref().unwrap())), LOCAL_ROOT_SECRET);

    // Two peers claiming one UUID: refused, naming the peer.
    let twin = PeerView { name: "a2", ..peer };
    let both = [peer, twin];
    inputs.peers = &both;
    let err = gateway_resources(&inputs).unwrap_err();
    assert_eq!((err.peer(), err.field()), ("a2", "clusterUUID"));
}
