//! Real tier, real Istio: workloads for the cross-cluster mesh of
//! [`crate::kube_mesh`] with `KubeMeshOptions::istio` (tests/tests/istio_mesh.rs,
//! `make demo-istio`). Each workload is a pilot-agent-run sidecar (`proxy
//! sidecar`, `ISTIO_META_INTERCEPTION_MODE=NONE`, listeners from a `Sidecar`
//! resource bound to its own loopback address) in front of the echo app,
//! with a `WorkloadEntry` standing in for its pod (labels, ServiceAccount,
//! network, locality).

use crate::istio::{GatewayOptions, IstioGateway};
use crate::kube_mesh::{network, object_name, KubeCluster};
use crate::upstream::RecordingUpstream;
use crate::{hosts, http, SimCluster};
use std::net::{Ipv4Addr, SocketAddr};

/// The service both clusters may run.
pub const FOO: &str = "foo.abc.svc.cluster.local";
/// `foo`'s Service port (both clusters), and the client's egress port for it.
pub const FOO_PORT: u16 = 8080;

/// A workload's sidecar: pilot-agent `proxy sidecar` in namespace `abc`, no
/// iptables (`ISTIO_META_INTERCEPTION_MODE=NONE`), on the cluster's network,
/// taking the peers' roots by PCDS; its listeners come from the `Sidecar`
/// resource `sidecar` (applied first).
pub fn sidecar(c: &KubeCluster, app: &str, host: u8, sidecar: &str) -> IstioGateway {
    c.cp.apply(sidecar).expect("Sidecar resource");
    let istiod = c.istiod.as_ref().expect("istiod");
    IstioGateway::start(c.cp, istiod, sidecar_options(c.sim, app, host))
}

/// How [`sidecar`] runs pilot-agent for workload `app` (service account
/// `app`, pod `app-0`) of cluster `sim` on host `host`; callers may add to
/// its environment.
pub fn sidecar_options(sim: SimCluster, app: &str, host: u8) -> GatewayOptions {
    GatewayOptions {
        name: format!("{app}-0"),
        namespace: "abc".into(),
        service_account: app.into(),
        // Its locality (`istio-locality: region.zone`), which istiod reads from the
        // proxy's labels and, for the endpoint, from the WorkloadEntry's.
        labels: vec![("app".into(), app.into()), ("istio-locality".into(), locality(sim))],
        host,
        service: None,
        proxy_type: "sidecar",
        service_ports: vec![],
        wait_ready: true,
        env: vec![
            ("ISTIO_META_INTERCEPTION_MODE".into(), "NONE".into()),
            ("ISTIO_META_NETWORK".into(), network(sim)),
            ("PROXY_CONFIG_XDS_AGENT".into(), "true".into()),
        ],
    }
}

/// Namespace `abc` and the `Sidecar` resource of workload `app` on `ip`:
/// inbound port `inbound` (HTTP) to `default_endpoint`, egress to `foo`'s
/// port in namespace abc.
fn sidecar_resource(app: &str, ip: Ipv4Addr, inbound: u16, default_endpoint: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: abc}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {app}, namespace: abc}}\n\
         spec:\n  workloadSelector: {{labels: {{app: {app}}}}}\n\
         \x20 ingress: [{{port: {{number: {inbound}, protocol: HTTP, name: http}}, bind: {ip}, defaultEndpoint: '{default_endpoint}'}}]\n\
         \x20 egress: [{{port: {{number: {FOO_PORT}, protocol: HTTP, name: http}}, bind: {ip}, hosts: ['abc/*']}}]\n"
    )
}

/// The locality of cluster `c`'s workloads: `region-<N>.zone-<N>`.
pub fn locality(sim: SimCluster) -> String {
    format!("region-{0}.zone-{0}", sim.0)
}

/// `foo` in cluster `c`: the echo app on 127.0.0.1 (a `Sidecar`'s
/// defaultEndpoint must be a loopback or wildcard address), its sidecar on
/// 127.0.N.30 with its `WorkloadEntry` (the pod's stand-in), and the Service
/// `abc/foo` (port 8080) that selects it. No EndpointSlice: the API server
/// refuses loopback addresses in one; istiod makes the WorkloadEntry an
/// endpoint of the Service, and a peer's istiod reads it through the remote
/// secret (istiod reads WorkloadEntries of remote clusters too).
pub fn start_foo(c: &KubeCluster) -> (RecordingUpstream, IstioGateway) {
    start_foo_with(c, &[])
}

/// [`start_foo`] with more pilot-agent environment.
pub fn start_foo_with(c: &KubeCluster, env: &[(String, String)]) -> (RecordingUpstream, IstioGateway) {
    let ip = c.sim.ip(hosts::ISTIO_WORKLOAD);
    let app = RecordingUpstream::start_echo(Ipv4Addr::LOCALHOST, &object_name(c.sim));
    let inbound = crate::fixtures::free_port(ip);
    c.cp.apply(&sidecar_resource("foo", ip, inbound, &format!("127.0.0.1:{}", app.addr().port()))).expect("Sidecar resource");
    let mut opts = sidecar_options(c.sim, "foo", hosts::ISTIO_WORKLOAD);
    opts.env.extend(env.iter().cloned());
    let gw = IstioGateway::start(c.cp, c.istiod.as_ref().expect("istiod"), opts);
    c.cp.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: foo, namespace: abc}}\n\
         spec: {{selector: {{app: foo}}, ports: [{{name: http, port: {FOO_PORT}, targetPort: {inbound}}}]}}\n"
    ))
    .expect("Service abc/foo");
    (app, gw)
}

/// The client workload in cluster `c`: a sidecar with `foo`'s port on
/// 127.0.N.31 (egress to namespace abc), and an inbound port (mTLS STRICT,
/// so its `ROOTCA` secret is in use, and observable, whatever else it has).
pub fn start_client(c: &KubeCluster) -> (IstioGateway, SocketAddr, SocketAddr) {
    let ip = c.sim.ip(hosts::ISTIO_CLIENT);
    let inbound = crate::fixtures::free_port(ip);
    let gw = sidecar(c, "client", hosts::ISTIO_CLIENT, &sidecar_resource("client", ip, inbound, "127.0.0.1:9"));
    (gw, SocketAddr::from((ip, FOO_PORT)), SocketAddr::from((ip, inbound)))
}

/// `GET http://foo.abc.svc.cluster.local:8080/PATH` through the client's sidecar.
pub fn call_foo(client: SocketAddr, path: &str) -> Result<http::Resp, String> {
    http::try_request("GET", &format!("http://{client}{path}"), &[("Host", &format!("{FOO}:{FOO_PORT}"))])
}

// The roots in a proxy's `ROOTCA` secret (what it validates peers with).
pub fn rootca(gw: &IstioGateway) -> String {
    use base64::Engine as _;
    let Ok(text) = gw.admin_get("/config_dump?resource=dynamic_active_secrets") else { return String::new() };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out = String::new();
    for s in v["configs"].as_array().into_iter().flatten() {
        if s["name"] == "ROOTCA" {
            let b = s["secret"]["validation_context"]["trusted_ca"]["inline_bytes"].as_str().unwrap_or("");
            out.push_str(&String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default()));
        }
    }
    out
}

pub fn strip(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

pub fn has_root(bundle: &str, root: &str) -> bool {
    strip(bundle).contains(&strip(root))
}

pub fn strict_mtls(c: &KubeCluster) {
    c.cp.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .expect("mesh-wide STRICT mTLS");
}
