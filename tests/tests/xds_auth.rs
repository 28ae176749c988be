//! Tier: fast (real Envoy 1.40 and the real agent on loopback, 127.0.61.x):
//! the agent's xDS port authenticates its clients (mTLS against this
//! cluster's root) and serves the gateway's resources (the edge filter's
//! ECDS carrying the private document, the API proxy credential) only to
//! the gateway's identity (`--xds-gateway-identity`).
//!
//! The clients that must be turned away are an independent xDS client
//! (tonic, `multicloud_e2e::xds_client`), not Envoy: whoever can reach the
//! port does not have to behave like a proxy.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::envoy::Envoy;
use multicloud_e2e::fixtures::ClusterIdentity;
use multicloud_e2e::gateway::GATEWAY_SERVICE_ACCOUNT;
use multicloud_e2e::mesh::{start_mesh, ApiOptions, Cluster, MeshOptions};
use multicloud_e2e::xds_client::{fetch, node, Api, Refused, Transport};
use multicloud_e2e::{dump, http, sidecar, wait_until, SimCluster};
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use multicloud_proto::prost::Message as _;
use std::time::Duration;

const READY: Duration = Duration::from_secs(40);

use multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET as CREDENTIAL;
use multicloud_proto::type_url::{EXTENSION_CONFIG, SECRET};
/// Istio's node id of an ingress gateway: `router~` makes it one.
const GATEWAY_NODE: &str = "router~10.0.0.7~istio-ingressgateway-5d9c7.istio-system~istio-system.svc.cluster.local";

/// `multicloud_agent_xds_refusals_total{reason}` from the agent's /metrics.
fn refusals(c: &Cluster, reason: &str) -> u64 {
    let prefix = format!("multicloud_agent_xds_refusals_total{{reason=\"{reason}\"}} ");
    c.agent.metrics().lines().find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

fn wait_refusals(c: &Cluster, reason: &str, at_least: u64) {
    wait_until(&format!("the agent to count {at_least} refusal(s) {reason}"), READY, || match refusals(c, reason) {
        n if n >= at_least => Ok(()),
        n => Err(format!("{n}")),
    });
}

/// Turned away by the transport: the connection failed, or (TLS 1.3: the
/// client's side of the handshake completes before the server has checked
/// its certificate) the first RPC failed with whatever status the client
/// makes of a dead connection (Unknown, Internal, Cancelled, Unavailable,
/// depending on timing). Never a response, and never one of the statuses
/// the xDS server itself sends; the agent's refusal counter then says which
/// handshake check failed.
fn refused_by_transport(r: &Result<Vec<multicloud_proto::envoy_types::pb::google::protobuf::Any>, Refused>) -> bool {
    match r {
        Err(Refused::Transport(_)) => true,
        Err(Refused::Status { code, .. }) => {
            !matches!(code, tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::Unimplemented | tonic::Code::Ok)
        }
        Ok(_) => false,
    }
}

fn secret_names(resources: &[multicloud_proto::envoy_types::pb::google::protobuf::Any]) -> Vec<String> {
    resources.iter().filter_map(|a| Secret::decode(a.value.as_slice()).ok()).map(|s| s.name).collect()
}

#[test]
fn only_the_gateway_identity_gets_the_gateways_resources() {
    let mut cs = start_mesh(
        &[SimCluster(61)],
        MeshOptions { ads: Some(false), api: Some(ApiOptions { token_ttl_seconds: 3600 }), ..Default::default() },
    );
    let c = &cs[0];
    let addr = c.agent.xds_addr();
    let credential = c.api_credential.clone().expect("the proxy credential");
    let private_marker = format!("network-{}", c.sim.0);
    let gateway_id = format!("spiffe://cluster.local/ns/{}/sa/{}", GATEWAY_SERVICE_ACCOUNT.0, GATEWAY_SERVICE_ACCOUNT.1);

    // (d) The real gateway Envoy, configured as the test bed configures it
    // (client certificate of the gateway's service account), gets its filter
    // configuration (ECDS) and the API proxy credential (SDS).
    let url = c.gateway_url("/metadata/public/public.json");
    wait_until("the gateway's filter configured over ADS", READY, || {
        let r = http::try_request("GET", &url, &[])?;
        if r.status == 200 && r.json()["clusterUUID"] == c.id.uuid.as_str() {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    });
    wait_until("the gateway to hold the API proxy credential", READY, || {
        let d = c.gateway.admin_get("/config_dump?resource=dynamic_active_secrets").map_err(|e| e.to_string())?;
        if d.contains(CREDENTIAL) {
            Ok(())
        } else {
            Err(d.chars().take(300).collect())
        }
    });
    let view = c.agent.xds_view();
    let gw = view["proxies"].as_array().into_iter().flatten().find(|p| p["group"] == "gateway").cloned().unwrap_or_default();
    assert_eq!(gw["identity"], gateway_id.as_str(), "the gateway connected with its proven identity: {view}");

    // (d) A sidecar Envoy with its workload certificate gets the sidecar
    // resources (its trust secrets and its own certificate).
    let sc = Envoy::start(sidecar::spec(c.sim, &c.xds_client("abc", "foo"), false));
    wait_until("the sidecar's trust bundle over ADS", READY, || {
        let d = sc.config_dump();
        let names = dump::secrets(&d);
        if names.iter().any(|n| n == "multicloud-trust-bundle") && names.iter().any(|n| n == "default") {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    });
    drop(sc);

    // (a) No client certificate, claiming the gateway's node id: the TLS
    // handshake is refused, nothing is received.
    let before = refusals(c, "no_client_certificate");
    let r = fetch(addr, &Transport::Tls { client_cert: None }, node(GATEWAY_NODE, None), Api::Ads, SECRET, &[CREDENTIAL]);
    assert!(refused_by_transport(&r), "no certificate must get nothing: {r:?}");
    wait_refusals(c, "no_client_certificate", before + 1);
    // Plaintext is not TLS at all: refused too.
    let before = refusals(c, "handshake_failed");
    let r = fetch(addr, &Transport::Plaintext, node(GATEWAY_NODE, Some("gateway")), Api::Ads, EXTENSION_CONFIG, &[]);
    assert!(refused_by_transport(&r), "plaintext must get nothing: {r:?}");
    wait_refusals(c, "handshake_failed", before + 1);

    // (b) A valid sidecar certificate (chained to this cluster's root)
    // claiming the gateway, by node id or by MULTICLOUD_ROLE, over ADS, delta
    // ADS and the per-type SDS service: PermissionDenied, nothing received.
    let sidecar_cert = c.id.workload_cert("abc", "foo");
    let as_sidecar = Transport::Tls { client_cert: Some(sidecar_cert) };
    let before = refusals(c, "group_not_allowed");
    let attempts = [
        (node(GATEWAY_NODE, None), Api::Ads, SECRET, vec![CREDENTIAL]),
        (node(GATEWAY_NODE, None), Api::Ads, EXTENSION_CONFIG, vec!["multicloud-edge"]),
        (node("sidecar~impostor", Some("gateway")), Api::DeltaAds, EXTENSION_CONFIG, vec![]),
        (node(GATEWAY_NODE, None), Api::Sds, SECRET, vec![CREDENTIAL]),
    ];
    for (i, (n, api, type_url, names)) in attempts.iter().enumerate() {
        let id = n.id.clone();
        match fetch(addr, &as_sidecar, n.clone(), *api, type_url, names) {
            Err(Refused::Status { code: tonic::Code::PermissionDenied, message }) => {
                assert!(message.contains(&format!("{id:?}")), "the refusal names the node id: {message}");
                assert!(message.contains("spiffe://cluster.local/ns/abc/sa/foo"), "and the proven identity: {message}");
                assert!(message.contains("--xds-gateway-identity"), "and what to do: {message}");
            }
            other => panic!("attempt {i} ({api:?} {type_url} as {id}) must be refused with PermissionDenied, got {other:?}"),
        }
    }
    wait_refusals(c, "group_not_allowed", before + attempts.len() as u64);
    let log = c.agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("group_not_allowed") && l.contains(GATEWAY_NODE) && l.contains("spiffe://cluster.local/ns/abc/sa/foo")),
        "the refusal is in the agent's log"
    );
    // The same certificate as a sidecar gets the sidecar's secrets, never the gateway's.
    let secrets = fetch(addr, &as_sidecar, node("sidecar~10.0.0.9~foo-1.abc~abc.svc.cluster.local", None), Api::Ads, SECRET, &[])
        .expect("a sidecar certificate is served as a sidecar");
    let names = secret_names(&secrets);
    assert!(names.iter().any(|n| n == "multicloud-trust-bundle"), "{names:?}");
    assert!(!names.iter().any(|n| n == CREDENTIAL), "a sidecar never gets the API proxy credential: {names:?}");
    let bytes: Vec<u8> = secrets.iter().flat_map(|a| a.value.clone()).collect();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&credential) && !text.contains(&private_marker), "nothing of the gateway's resources reached the sidecar");

    // A certificate from this cluster's root that names no SPIFFE identity
    // proves no workload: refused before anything is sent.
    let anonymous = c.id.root.anonymous_client_cert("not-a-workload.example");
    let before = refusals(c, "no_spiffe_id");
    let r = fetch(addr, &Transport::Tls { client_cert: Some(anonymous) }, node("sidecar~anonymous", None), Api::Ads, SECRET, &[]);
    assert!(matches!(r, Err(Refused::Status { code: tonic::Code::PermissionDenied, .. })), "{r:?}");
    wait_refusals(c, "no_spiffe_id", before + 1);

    // (c) A certificate from another cluster's CA, even for the gateway's
    // own service account name: refused at the handshake.
    let other = ClusterIdentity::generate("other");
    let before = refusals(c, "untrusted_certificate");
    let foreign = Transport::Tls { client_cert: Some(other.workload_cert(GATEWAY_SERVICE_ACCOUNT.0, GATEWAY_SERVICE_ACCOUNT.1)) };
    let r = fetch(addr, &foreign, node(GATEWAY_NODE, None), Api::Ads, SECRET, &[CREDENTIAL]);
    assert!(refused_by_transport(&r), "another cluster's certificate must fail the handshake: {r:?}");
    wait_refusals(c, "untrusted_certificate", before + 1);

    // No secret material in the agent's log.
    let log = c.agent.log();
    for l in log.lines().filter(|l| l.contains("refused")) {
        eprintln!("agent log: {l}");
    }
    assert!(!log.contains(&credential), "the API proxy credential is in the agent's log");
    assert!(!log.contains("PRIVATE KEY"), "a private key is in the agent's log");

    // The client roots follow this cluster's root: once the local facts name
    // another root, its certificates are admitted and the old ones are not.
    let mut facts: serde_json::Value = serde_json::from_str(&multicloud_e2e::mesh::standalone_file(c.sim, &c.id, &[])).expect("json");
    facts["cluster"]["rootCA"] = serde_json::Value::String(other.root_pem());
    cs[0].agent.rewrite_standalone(&facts.to_string());
    let c = &cs[0];
    let other_sidecar = Transport::Tls { client_cert: Some(other.workload_cert("abc", "foo")) };
    wait_until("the new root's certificates to be admitted", READY, || {
        fetch(addr, &other_sidecar, node("sidecar~new-root", None), Api::Ads, SECRET, &[]).map(|_| ()).map_err(|e| format!("{e:?}"))
    });
    let before = refusals(c, "untrusted_certificate");
    let r = fetch(addr, &as_sidecar, node("sidecar~old-root", None), Api::Ads, SECRET, &[]);
    assert!(refused_by_transport(&r), "the old root's certificates are refused: {r:?}");
    wait_refusals(c, "untrusted_certificate", before + 1);
}
