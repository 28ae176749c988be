use super::*;
use crate::clusters::decode_tls;
use crate::parts::{secs, u32v};
use crate::type_url;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source, config_source, data_source, grpc_service, socket_address, transport_socket, AggregatedConfigSource,
    ApiVersion, DataSource, Locality, Metadata,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{common_tls_context, secret, CertificateValidationContext, Secret};
use envoy_types::pb::google::protobuf::value;
use multicloud_core::metadata::ServicePort;
use multicloud_core::pem::CertBundle;
use prost::Message as _;

const UUID_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
const UUID_C: &str = "0c0c0c0c-0000-4000-8000-00000000000c";

fn root(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).unwrap().pem()
}

struct Doc {
    root: String,
    gateways: Vec<IngressGateway>,
    services: Vec<ExportedService>,
}

fn doc() -> Doc {
    Doc {
        root: root("root of b"),
        gateways: vec![
            IngressGateway { address: "10.0.0.1".into(), port: 15443 },
            IngressGateway { address: "10.0.0.2".into(), port: 15443 },
        ],
        services: vec![
            ExportedService {
                hostname: "foo.abc.svc.cluster.local".into(),
                ports: vec![
                    ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) },
                    ServicePort { name: "grpc".into(), port: 9090, protocol: None },
                ],
                ready_endpoints: 5,
            },
            ExportedService {
                hostname: "bar.abc.svc.cluster.local".into(),
                ports: vec![ServicePort { name: "tcp".into(), port: 5432, protocol: None }],
                ready_endpoints: 0,
            },
        ],
    }
}

fn view<'a>(name: &'a str, uuid: &'a str, d: &'a Doc) -> PeerView<'a> {
    PeerView { name, cluster_uuid: uuid, root_ca_pem: &d.root, network: "net-b", gateways: &d.gateways, services: &d.services }
}

const CLIENT: ClientIdentity = ClientIdentity { cert_secret: "default", sds_cluster: "sds-grpc" };

fn roundtrip<M: prost::Message + prost::Name + Default + Clone + PartialEq + std::fmt::Debug>(m: &M) -> M {
    let any = pack_any(m.clone());
    assert_eq!(any.type_url, M::type_url());
    let back = M::decode(any.value.as_slice()).unwrap();
    assert_eq!(&back, m);
    back
}

fn inline_ca(s: &Secret) -> String {
    match &s.r#type {
        Some(secret::Type::ValidationContext(vc)) => match vc.trusted_ca.as_ref().unwrap().specifier.as_ref().unwrap() {
            data_source::Specifier::InlineString(s) => s.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

fn meta_str(m: &Option<Metadata>, ns: &str, key: &str) -> String {
    match &m.as_ref().unwrap().filter_metadata[ns].fields[key].kind {
        Some(value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_follow_istio_and_keep_remote_copies_apart() {
    assert_eq!(sni("foo.abc.svc.cluster.local", 80), "outbound_.80_._.foo.abc.svc.cluster.local");
    assert_eq!(remote_cluster_name("b", "foo.abc.svc.cluster.local", 80), "outbound|80||foo.abc.svc.cluster.local|multicloud-b");
    assert_ne!(remote_cluster_name("b", "foo.abc.svc.cluster.local", 80), "outbound|80||foo.abc.svc.cluster.local");
    assert_eq!(peer_root_secret_name(UUID_B), format!("multicloud-peer-root~{UUID_B}"));
    assert_eq!(resource_file_name("outbound|80||h|multicloud-b"), "outbound|80||h|multicloud-b.pb");
}

#[test]
fn trust_bundle_holds_local_and_every_peer_root() {
    let (b, c) = (doc(), doc());
    let local = root("local root");
    let s = trust_bundle_secret(&local, &[view("c", UUID_C, &c), view("b", UUID_B, &b)]).unwrap();
    let s = roundtrip(&s);
    assert_eq!(s.name, TRUST_BUNDLE_SECRET);
    let bundle = CertBundle::from_pem(&inline_ca(&s)).unwrap();
    let want: Vec<Vec<u8>> = [&local, &b.root, &c.root].iter().map(|p| CertBundle::from_pem(p).unwrap().certs_der.remove(0)).collect();
    assert_eq!(bundle.certs_der, want, "local first, then peers by name");
    // The same root twice is carried once.
    let s = trust_bundle_secret(&b.root, &[view("b", UUID_B, &b)]).unwrap();
    assert_eq!(CertBundle::from_pem(&inline_ca(&s)).unwrap().certs_der.len(), 1);
    // No peer yet: the local root alone.
    assert_eq!(CertBundle::from_pem(&inline_ca(&trust_bundle_secret(&local, &[]).unwrap())).unwrap().certs_der.len(), 1);
}

#[test]
fn peer_root_secret_holds_only_that_root() {
    let b = doc();
    let s = roundtrip(&peer_root_secret(&view("b", UUID_B, &b)).unwrap());
    assert_eq!(s.name, peer_root_secret_name(UUID_B));
    assert_eq!(CertBundle::from_pem(&inline_ca(&s)).unwrap(), CertBundle::from_pem(&b.root).unwrap());
}

#[test]
fn remote_clusters_are_eds_with_istio_mtls_to_the_peer() {
    let b = doc();
    let clusters = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap();
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "outbound|80||foo.abc.svc.cluster.local|multicloud-b",
            "outbound|9090||foo.abc.svc.cluster.local|multicloud-b",
            "outbound|5432||bar.abc.svc.cluster.local|multicloud-b"
        ]
    );
    let c = roundtrip(&clusters[0]);
    assert_eq!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)));
    let eds = c.eds_cluster_config.as_ref().unwrap().eds_config.as_ref().unwrap();
    assert_eq!(eds.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})));
    assert_eq!(eds.resource_api_version, ApiVersion::V3 as i32);
    assert_eq!(c.connect_timeout, secs(2));
    let od = c.outlier_detection.unwrap();
    assert_eq!((od.consecutive_5xx, od.consecutive_gateway_failure), (u32v(5), u32v(3)));
    assert_eq!((od.interval, od.base_ejection_time, od.max_ejection_percent), (secs(5), secs(15), u32v(100)));
    assert_eq!(od.enforcing_consecutive_gateway_failure, u32v(100));
    assert_eq!(c.circuit_breakers.unwrap().thresholds[0].max_requests, u32v(u32::MAX));
    assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "peer"), "b");
    assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "clusterUUID"), UUID_B);
    assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "network"), "net-b");

    let ts = c.transport_socket.unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else { panic!() };
    let tls = decode_tls("b", &any).unwrap();
    assert_eq!(tls.sni, "outbound_.80_._.foo.abc.svc.cluster.local");
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    let cert = &common.tls_certificate_sds_secret_configs[0];
    assert_eq!(cert.name, "default");
    let Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) = &cert.sds_config.as_ref().unwrap().config_source_specifier
    else {
        panic!("{cert:?}")
    };
    assert_eq!(api.api_type, api_config_source::ApiType::Grpc as i32);
    assert_eq!(
        api.grpc_services[0].target_specifier,
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc { cluster_name: "sds-grpc".into(), ..Default::default() }))
    );
    let Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(trust)) = common.validation_context_type else {
        panic!()
    };
    assert_eq!(trust.name, peer_root_secret_name(UUID_B), "pinned to the peer's own root");
    assert_eq!(
        trust.sds_config.unwrap().config_source_specifier,
        Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
    );

    // "ads" as the SDS cluster: the certificate comes over ADS too.
    let c = remote_clusters(&view("b", UUID_B, &b), &ClientIdentity { cert_secret: "default", sds_cluster: "ads" }).unwrap().remove(0);
    let Some(transport_socket::ConfigType::TypedConfig(any)) = c.transport_socket.unwrap().config_type else { panic!() };
    let cert = decode_tls("b", &any).unwrap().common_tls_context.unwrap().tls_certificate_sds_secret_configs.remove(0);
    assert_eq!(
        cert.sds_config.unwrap().config_source_specifier,
        Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
    );
}

#[test]
fn file_sources_name_one_file_per_resource() {
    let b = doc();
    let dir = ConfigSourceKind::FilesIn("/x".into());
    let sources = Sources { eds: dir.clone(), trust: dir.clone(), cert: dir };
    let c = remote_clusters_with(&view("b", UUID_B, &b), &CLIENT, &sources).unwrap().remove(0);
    let Some(config_source::ConfigSourceSpecifier::PathConfigSource(p)) =
        c.eds_cluster_config.unwrap().eds_config.unwrap().config_source_specifier
    else {
        panic!()
    };
    assert_eq!(p.path, format!("/x/{}", resource_file_name(&c.name)));
}

#[test]
fn remote_endpoints_are_the_peer_gateways_weighted_by_ready_endpoints() {
    let b = doc();
    let clas = remote_endpoints(&view("b", UUID_B, &b)).unwrap();
    let clusters = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap();
    assert_eq!(clas.iter().map(|c| &c.cluster_name).collect::<Vec<_>>(), clusters.iter().map(|c| &c.name).collect::<Vec<_>>());
    let cla = roundtrip(&clas[0]);
    assert_eq!(cla.endpoints.len(), 1);
    let l = &cla.endpoints[0];
    assert_eq!(l.locality, Some(Locality { region: "multicloud".into(), zone: "b".into(), ..Default::default() }));
    assert_eq!(l.load_balancing_weight, u32v(5));
    let got: Vec<(String, u32, u32)> = l
        .lb_endpoints
        .iter()
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!() };
            let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().unwrap().address.clone() else { panic!() };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else { panic!() };
            assert_eq!(meta_str(&e.metadata, "istio", "network"), "net-b");
            (sa.address, port, e.load_balancing_weight.unwrap().value)
        })
        .collect();
    assert_eq!(got, [("10.0.0.1".into(), 15443, 3), ("10.0.0.2".into(), 15443, 2)]);
    // bar has no ready endpoint: still reachable, weight 1 per gateway.
    let bar: Vec<u32> = clas[2].endpoints[0].lb_endpoints.iter().map(|e| e.load_balancing_weight.unwrap().value).collect();
    assert_eq!(bar, [1, 1]);
}

#[test]
fn weights_split_ready_endpoints_over_gateways_never_zero() {
    assert_eq!(gateway_weights(5, 2), [3, 2]);
    assert_eq!(gateway_weights(7, 3), [3, 2, 2]);
    assert_eq!(gateway_weights(10, 1), [10]);
    assert_eq!(gateway_weights(0, 2), [1, 1]);
    assert_eq!(gateway_weights(1, 3), [1, 1, 1]);
    assert_eq!(gateway_weights(u32::MAX, 1), [u32::MAX]);
    assert_eq!(gateway_weights(4, 0), Vec::<u32>::new());
    for (ready, g) in [(0u32, 1usize), (1, 4), (9, 4), (100, 7), (64, 64)] {
        let w = gateway_weights(ready, g);
        assert_eq!(w.iter().map(|x| u64::from(*x)).sum::<u64>(), u64::from(ready.max(1)).max(g as u64));
        assert!(w.iter().max().unwrap() - w.iter().min().unwrap() <= 1);
    }
}

#[test]
fn names_are_unique_across_peers_exporting_the_same_hostname() {
    let (b, c) = (doc(), doc());
    let local = root("local");
    let all = mesh_resources(&local, &[view("b", UUID_B, &b), view("c", UUID_C, &c)], &CLIENT, &Sources::for_client(&CLIENT)).unwrap();
    let mut names: Vec<String> = all.clusters.iter().map(|a| Cluster::decode(a.value.as_slice()).unwrap().name).collect();
    assert_eq!(names.len(), 6);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6);
    let mut secrets: Vec<String> = all.secrets.iter().map(|a| Secret::decode(a.value.as_slice()).unwrap().name).collect();
    secrets.dedup();
    assert_eq!(secrets.len(), 3);
    assert_eq!(all.endpoints.len(), 6);
    assert!(all.secrets.iter().all(|a| a.type_url == type_url::SECRET));
    assert!(all.clusters.iter().all(|a| a.type_url == type_url::CLUSTER));
    assert!(all.endpoints.iter().all(|a| a.type_url == type_url::ENDPOINT));
    // Two peers of one name (or one UUID) would collide: refused.
    let e = mesh_resources(&local, &[view("b", UUID_B, &b), view("b", UUID_C, &c)], &CLIENT, &Sources::for_client(&CLIENT)).err().unwrap();
    assert_eq!((e.peer(), e.field()), ("b", "name"));
    let e = mesh_resources(&local, &[view("b", UUID_B, &b), view("c", UUID_B, &c)], &CLIENT, &Sources::for_client(&CLIENT)).err().unwrap();
    assert_eq!((e.peer(), e.field()), ("c", "clusterUUID"));
}

#[test]
fn a_malformed_root_is_refused_naming_peer_and_field() {
    let mut b = doc();
    b.root = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
    for e in [peer_root_secret(&view("b", UUID_B, &b)).unwrap_err(), trust_bundle_secret(&root("l"), &[view("b", UUID_B, &b)]).unwrap_err()]
    {
        assert!(matches!(e, BuildError::Root { .. }), "{e}");
        assert_eq!((e.peer(), e.field()), ("b", "rootCA"));
        assert!(e.to_string().starts_with("peer b: rootCA: not a usable root CA"), "{e}");
    }
    // A key alone is no root either.
    b.root = multicloud_core::pem::encode("PRIVATE KEY", b"x");
    assert_eq!(peer_root_secret(&view("b", UUID_B, &b)).unwrap_err().field(), "rootCA");
    // The local root too.
    let e = trust_bundle_secret("junk", &[]).unwrap_err();
    assert_eq!((e.peer(), e.field()), (LOCAL, "rootCA"));
    // And a built secret tampered with afterwards.
    let mut s = peer_root_secret(&view("b", UUID_B, &doc())).unwrap();
    s.r#type = Some(secret::Type::ValidationContext(CertificateValidationContext {
        trusted_ca: Some(DataSource { specifier: Some(data_source::Specifier::InlineString("x".into())), ..Default::default() }),
        ..Default::default()
    }));
    let e = validate_secret(&s).unwrap_err();
    assert_eq!((e.peer(), e.field()), (UUID_B, "validation_context.trusted_ca"));
}

#[test]
fn an_empty_or_unresolved_address_is_refused_naming_peer_and_field() {
    let mut b = doc();
    b.gateways[1].address = String::new();
    let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
    assert!(matches!(e, BuildError::Address { .. }), "{e}");
    assert_eq!((e.peer(), e.field()), ("b", "ingressGateways[1].address"));
    assert_eq!(e.to_string(), "peer b: ingressGateways[1].address: is empty");
    b.gateways[1].address = "gw.example.com".into();
    let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
    assert!(e.to_string().contains("DNS name"), "{e}");
    b.gateways.clear();
    assert_eq!(remote_endpoints(&view("b", UUID_B, &b)).unwrap_err().field(), "ingressGateways");
    // A built assignment tampered with afterwards.
    let mut cla = remote_endpoints(&view("b", UUID_B, &doc())).unwrap().remove(0);
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut cla.endpoints[0].lb_endpoints[0].host_identifier else { panic!() };
    let Some(address::Address::SocketAddress(sa)) = &mut ep.address.as_mut().unwrap().address else { panic!() };
    sa.address.clear();
    let e = validate_load_assignment(&cla).unwrap_err();
    assert_eq!((e.peer(), e.field()), ("b", "endpoints[0].lb_endpoints[0].endpoint.address"));
}

#[test]
fn a_zero_port_is_refused_naming_peer_and_field() {
    let mut b = doc();
    b.gateways[0].port = 0;
    let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
    assert_eq!(e, BuildError::Port { peer: "b".into(), field: "ingressGateways[0].port".into() });
    assert_eq!(e.to_string(), "peer b: ingressGateways[0].port: port 0 is not a port");
    let mut b = doc();
    b.services[0].ports[1].port = 0;
    let e = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap_err();
    assert_eq!((e.peer(), e.field()), ("b", "services[0].ports[1].port"));
    let mut cla = remote_endpoints(&view("b", UUID_B, &doc())).unwrap().remove(0);
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut cla.endpoints[0].lb_endpoints[1].host_identifier else { panic!() };
    let Some(address::Address::SocketAddress(sa)) = &mut ep.address.as_mut().unwrap().address else { panic!() };
    sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(0));
    let e = validate_load_assignment(&cla).unwrap_err();
    assert_eq!((e.peer(), e.field()), ("b", "endpoints[0].lb_endpoints[1].endpoint.address.port_value"));
}

#[test]
fn other_bad_inputs_and_tampered_clusters_are_refused() {
    let b = doc();
    let mut v = view("b", UUID_B, &b);
    v.cluster_uuid = "nope";
    assert_eq!(remote_clusters(&v, &CLIENT).unwrap_err().field(), "clusterUUID");
    let mut v = view("b", UUID_B, &b);
    v.network = "";
    assert_eq!(remote_endpoints(&v).unwrap_err().field(), "networkName");
    assert_eq!(remote_clusters(&view("", UUID_B, &b), &CLIENT).unwrap_err().field(), "name");
    assert_eq!(remote_clusters(&view("b|x", UUID_B, &b), &CLIENT).unwrap_err().field(), "name");
    let mut d = doc();
    d.services[1].hostname = d.services[0].hostname.clone();
    d.services[1].ports[0].port = 80;
    let e = remote_clusters(&view("b", UUID_B, &d), &CLIENT).unwrap_err();
    assert_eq!((e.peer(), e.field()), ("b", "services[1].ports[0]"));
    let e = remote_clusters(&view("b", UUID_B, &b), &ClientIdentity { cert_secret: "", sds_cluster: "ads" }).unwrap_err();
    assert_eq!(e.field(), "client.cert_secret");

    let good = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap().remove(0);
    let mut c = good.clone();
    c.transport_socket = None;
    assert_eq!(validate_cluster(&c).unwrap_err().to_string(), "peer b: transport_socket: is missing");
    let mut c = good.clone();
    c.eds_cluster_config = None;
    assert_eq!(validate_cluster(&c).unwrap_err().field(), "eds_cluster_config.eds_config");
    let mut c = good;
    c.name.clear();
    assert_eq!(validate_cluster(&c).unwrap_err().field(), "name");
}
