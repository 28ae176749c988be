//! Tier: real node (issue 22). One simulated cluster (140) of the real tier
//! with a real node (tests/src/node.rs): etcd + kube-apiserver, containerd
//! and runc (Debian's), the kubelet, kube-controller-manager,
//! kube-scheduler, kube-proxy (iptables) and CoreDNS, all from the pinned
//! sources scripts/tools.sh builds. Pods run from images imported into
//! containerd, on a bridge and subnet the test creates (10.88.140.0/24);
//! nothing else on the machine is touched, and the kernel settings the
//! components change are restored (and checked) at the end.
//!
//! What the tier still substitutes, and why: docs/testing.md, "The node
//! tier".

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::istio::IstioGateway;
use multicloud_e2e::istio::{Istiod, IstiodAt, ISTIOD_ENV};
use multicloud_e2e::istio_mesh::{call_foo, start_foo, strict_mtls, FOO, FOO_PORT};
use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::kube_mesh::{
    api_host, create_metadata_tls, imc_object, install, metadata_host, network, object_name, start_kube_mesh, KubeMeshOptions,
    ISTIOD_MESH_ENV,
};
use multicloud_e2e::mtls::{get_from, Outcome};
use multicloud_e2e::node::{
    container_processes, gateway_image_files, gateway_run_spec, istio_gateway_objects, istio_workload_objects, read_sysctls, ready_pods,
    Node, NodeNetwork, POD_READY, REGISTRY,
};
use multicloud_e2e::{http, paths, wait_until, SimCluster};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SIM: SimCluster = SimCluster(140);
/// The cluster ID of an istiod installed with Istio's defaults, which
/// deploy/'s DaemonSet assumes (the agent's `--istio-cluster-id` default).
const ISTIO_DEFAULT_CLUSTER_ID: &str = "Kubernetes";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=istio-multicloud-agent";
const GATEWAY_SELECTOR: &str = "istio=ingressgateway";
/// The gateway Service's load-balancer address (outside the node's IPAM
/// range: node.rs's host-local range ends below it).
const LB_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 88, 140, 250);
/// deploy/'s EnvoyFilter names the agent by its Service.
const AGENT_SERVICE_ADDRESS: &str = "address: multicloud-agent-xds.istio-system.svc.cluster.local";

/// `public.json` through the gateway's Service (its ClusterIP, port 443,
/// kube-proxy's DNAT to the gateway pod), TLS verified against `ca`.
fn public_json(svc: SocketAddr, host: &str, ca: &str) -> Result<serde_json::Value, String> {
    match get_from(svc, host, Some(ca), None, host, "/metadata/public/public.json", &[]) {
        Outcome::Http(200, body) => {
            let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(body.len().saturating_sub(1))];
            serde_json::from_str(json).map_err(|e| format!("{e}: {body}"))
        }
        other => Err(format!("{other:?}")),
    }
}

/// Whether the agent pod at `agent_ip` has the gateway pod `gateway` as
/// a connected xDS client (the agent's `/xds`: connected proxies and what
/// they ACKed).
fn gateway_connected(agent_ip: &str, gateway: &str) -> Result<serde_json::Value, String> {
    let r = http::try_request("GET", &format!("http://{agent_ip}:15090/xds"), &[])?;
    let text = r.text();
    if r.status == 200 && text.contains(gateway) {
        Ok(serde_json::from_str(&text).map_err(|e| e.to_string())?)
    } else {
        Err(format!("{} {text}", r.status))
    }
}

/// The client workload of the real-Istio tier's cross-cluster call
/// (tests/src/istio_mesh.rs), in this cluster: a pilot-agent-run sidecar on
/// 127.0.140.31 with its WorkloadEntry, against this cluster's istiod (at
/// the bridge address; `ISTIOD_SAN`: istiod's certificate names its
/// Service, not that address). The address of its egress port for foo.
fn start_client(cp: &ControlPlane, istiod: &Istiod) -> (IstioGateway, SocketAddr) {
    let ip = SIM.ip(multicloud_e2e::hosts::ISTIO_CLIENT);
    let inbound = multicloud_e2e::fixtures::free_port(ip);
    cp.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: abc}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: client, namespace: abc}}\n\
         spec:\n  workloadSelector: {{labels: {{app: client}}}}\n\
         \x20 ingress: [{{port: {{number: {inbound}, protocol: HTTP, name: http}}, bind: {ip}, defaultEndpoint: '127.0.0.1:9'}}]\n\
         \x20 egress: [{{port: {{number: {FOO_PORT}, protocol: HTTP, name: http}}, bind: {ip}, hosts: ['abc/*']}}]\n",
    ))
    .expect("Sidecar client");
    let mut options = multicloud_e2e::istio_mesh::sidecar_options(SIM, "client", multicloud_e2e::hosts::ISTIO_CLIENT);
    options.env.extend([
        ("ISTIOD_SAN".into(), "istiod.istio-system.svc".into()),
        // The cluster ID of this cluster's istiod (the test bed's
        // default for a cluster is `cluster-N`).
        ("ISTIO_META_CLUSTER_ID".into(), ISTIO_DEFAULT_CLUSTER_ID.into()),
    ]);
    let gw = IstioGateway::start(cp, istiod, options);
    (gw, SocketAddr::from((ip, FOO_PORT)))
}

fn imc_is_ready(cp: &ControlPlane, name: &str) -> bool {
    cp.get_json(&["imc", name]).is_some_and(|imc| {
        imc["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
}

/// Waits until IstioMulticloud `name` on `cp` is Ready.
fn wait_imc_ready(cp: &ControlPlane, name: &str, timeout: Duration) {
    wait_until(&format!("cluster {}: imc {name} Ready", cp.sim.0), timeout, || {
        let imc = cp.get_json(&["imc", name]).ok_or("no object")?;
        let ready = imc["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
        match ready {
            Some(c) if c["status"] == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

fn pod_ip(cp: &ControlPlane, name: &str) -> String {
    cp.get_json(&["pod", name, "-n", "istio-system"]).unwrap()["status"]["podIP"].as_str().unwrap().to_string()
}

/// istiod, outside the node (a host process, as in the real-Istio tier,
/// resolving peers' API hosts as there),
/// on the node bridge's address, behind Service `istio-system/istiod` (no
/// selector; its EndpointSlice, written here, names the bridge address):
/// pods reach it at `istiod.istio-system.svc:15012`, as deploy/'s
/// DaemonSet names it.
fn start_istiod(cp: &ControlPlane, node: &Node) -> Istiod {
    let env: Vec<(&str, &str)> = ISTIOD_ENV.iter().chain(ISTIOD_MESH_ENV).copied().collect();
    let at = IstiodAt {
        ip: node.net.host_ip,
        cluster_id: ISTIO_DEFAULT_CLUSTER_ID.into(),
        discovery_address: Some("istiod.istio-system.svc:15012".into()),
    };
    let istiod = Istiod::start_at(cp, &paths::IstioBuild::current(), &env, true, true, &at);
    let a = istiod.addrs;
    cp.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: istiod, namespace: istio-system, labels: {{app: istiod}}}}\n\
         spec: {{ports: [{{name: grpc-xds, port: 15012, targetPort: {grpc}}}, {{name: https-webhook, port: 443, targetPort: {https}}}, {{name: http-monitoring, port: 15014, targetPort: {mon}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: istiod-host, namespace: istio-system, labels: {{kubernetes.io/service-name: istiod}}}}\n\
         addressType: IPv4\nports: [{{name: grpc-xds, port: {grpc}}}, {{name: https-webhook, port: {https}}}, {{name: http-monitoring, port: {mon}}}]\n\
         endpoints: [{{addresses: ['{ip}'], conditions: {{ready: true}}}}]\n",
        grpc = a.secure_grpc.port(),
        https = a.https.port(),
        mon = a.monitoring.port(),
        ip = node.net.host_ip,
    ))
    .expect("Service istiod");
    node.wait_service_programmed("istio-system/istiod:grpc-xds", &a.secure_grpc.to_string(), Duration::from_secs(120));
    istiod
}

/// The agent's image as `make images` wrote it, imported under one fully
/// qualified name; the reference pinned by digest.
fn import_agent_image(node: &Node) -> String {
    let tar = paths::images().join("agent.tar");
    let layout = multicloud_images::Layout::read_tar(&tar).unwrap();
    let tag = layout.manifest_descriptor().unwrap().annotations().as_ref().unwrap()[multicloud_images::ANN_REF_NAME].clone();
    let name = format!("{REGISTRY}/istio-multicloud/agent:{tag}");
    node.import_image(&tar, &name);
    // deploy/ pins the image by digest (`install --image` wants one).
    format!("{name}@{}", layout.digest().unwrap())
}

/// deploy/ runs as a cluster runs it: the node is Ready and its pods reach
/// the API server and each other by Service name (CoreDNS, kube-proxy); the
/// agent's DaemonSet pod, from `make images`' image, is Ready by its own
/// probes with its pod-bound ServiceAccount token and deploy/'s security
/// settings; Istio's gateway pod reaches it by deploy/'s Service name and
/// serves public.json through its Service; the agent's pod is deleted and
/// replaced with no failed fetch; afterwards nothing of the node is left
/// and the kernel settings are as before.
#[test]
fn deploy_runs_as_pods_on_a_real_node_and_leaves_nothing_behind() {
    let t0 = Instant::now();
    let sysctls_before = read_sysctls();
    let net = NodeNetwork::of(SIM);
    let cp = ControlPlane::start_for_node(SIM, &net.control_plane());
    let node = Node::start(&cp);
    eprintln!("node {} Ready with DNS in {:?} (control plane and node from {:?})", net.node_name, node.started_in, t0.elapsed());

    // Cluster DNS and the kubernetes Service from inside a pod: nslookup
    // asks CoreDNS through the kube-dns ClusterIP, then busybox's wget
    // connects to the address it got with nc (busybox's wget crashes in
    // this static build). A plain HTTP request: the API server's TLS port
    // answers it with 400, the proof that the connection through the
    // `kubernetes` ClusterIP arrived.
    let t = Instant::now();
    let script = "set -e; nslookup kubernetes.default.svc.cluster.local > /tmp/ns; cat /tmp/ns; \
                  ip=$(awk '/^Address: /{print $2}' /tmp/ns | tail -n 1); test \"$ip\" = 10.96.0.1; \
                  out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $ip 443 2>&1 || true); echo \"$out\"; \
                  case \"$out\" in *400*) exit 0;; esac; exit 1";
    let probe = node.run_probe_pod(&cp, "default", "dns-probe", script, POD_READY);
    if let Err(e) = &probe {
        let logs = cp.kubectl(&["logs", "-n", "default", "dns-probe"]);
        eprintln!("probe pod logs: {}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
        panic!("{e}");
    }
    eprintln!("probe pod (DNS + kubernetes Service) succeeded in {:?}", t.elapsed());

    // The agent: deploy/ as `multicloud-agent install` renders it, with the
    // image imported from `make images` (--image: the one change).
    let t = Instant::now();
    let istiod = start_istiod(&cp, &node);
    // This cluster's Istio network (what the agent publishes).
    cp.kubectl_ok(&["label", "namespace", "istio-system", &format!("topology.istio.io/network={}", network(SIM)), "--overwrite"]);
    eprintln!("istiod ready behind Service istiod in {:?}", t.elapsed());
    let image = import_agent_image(&node);
    let rendered = install(&[
        format!("--image={image}"),
        format!("--metadata-host={}", metadata_host(SIM)),
        format!("--api-proxy-host={}:443", api_host(SIM)),
        "--mesh-port=15443".to_string(),
    ]);
    let ds = serde_saphyr::from_multiple::<serde_json::Value>(&rendered).unwrap().into_iter().find(|v| v["kind"] == "DaemonSet").unwrap();
    assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], image.as_str(), "the DaemonSet names the imported image");
    // The ingress gateway as Istio's gateway chart runs it, from an image
    // of the cached pilot-agent and the pinned Envoy. The agent is Ready
    // once it knows its gateway's Service and address.
    let build = paths::IstioBuild::current();
    let host = metadata_host(SIM);
    let edge_ca = create_metadata_tls(&cp, SIM, &host, node.dir());
    // What an operator provides for deploy/'s API proxy route: its TLS
    // certificate, from the same edge CA.
    {
        let (cert, key) = edge_ca.server_cert_dns(&api_host(SIM));
        let (c, k) = (node.dir().join("api-tls.crt"), node.dir().join("api-tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        cp.kubectl_ok(&[
            "create",
            "secret",
            "tls",
            "multicloud-api-tls",
            "-n",
            "istio-system",
            &format!("--cert={}", c.display()),
            &format!("--key={}", k.display()),
        ]);
    }
    let gw_image = format!("{REGISTRY}/istio/proxyv2:test-bed");
    node.build_and_import(&gw_image, &gateway_image_files(&build), &gateway_run_spec());
    assert_eq!(rendered.matches(AGENT_SERVICE_ADDRESS).count(), 1, "deploy/'s EnvoyFilter names the agent's Service, unchanged");
    let t = Instant::now();
    cp.apply(&rendered).expect("install output applies");
    // The mesh port (`tls`, 15443) as the chart's networkGateway values add it.
    cp.apply(&istio_gateway_objects(&gw_image, &[("tls", 15443)], &network(SIM))).expect("gateway objects");
    // What a cloud controller writes: the load balancer's address, one of
    // the node subnet's that no pod gets (kube-proxy routes it to the
    // gateway pod, as it does for a load balancer's address).
    cp.set_load_balancer_ip("istio-system", "istio-ingressgateway", LB_IP);
    let pods = node.wait_pods_ready(&cp, "istio-system", AGENT_SELECTOR, POD_READY);
    eprintln!("agent pod {pods:?} Ready (its own readiness probe) {:?} after the apply", t.elapsed());
    let pod = cp.get_json(&["pod", &pods[0], "-n", "istio-system"]).unwrap();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet", "made by the DaemonSet controller");
    assert_eq!(pod["spec"]["nodeName"], net.node_name.as_str());
    let agent_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    // Its requests come from the pod's address with the pod's ServiceAccount
    // token (the API server's audit log records both).
    let events = wait_until("the agent pod's requests in the audit log", Duration::from_secs(60), || {
        let ev: Vec<_> = cp
            .audit("system:serviceaccount:istio-system:istio-multicloud-agent")
            .into_iter()
            .filter(|e| e["sourceIPs"].as_array().is_some_and(|ips| ips.iter().any(|ip| ip == agent_ip.as_str())))
            .collect();
        if ev.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(ev)
        }
    });
    let bound_pod = events[0]["user"]["extra"]["authentication.kubernetes.io/pod-name"].clone();
    eprintln!("{} audit events of the agent's ServiceAccount from pod IP {agent_ip}; token bound to pod {bound_pod}", events.len());
    assert_eq!(bound_pod[0], pods[0].as_str(), "the token is the pod's projected ServiceAccount token");
    // As deploy/ runs it: its user, no capability, a seccomp filter, no
    // privilege escalation, a read-only root.
    let agent_procs = container_processes("/usr/local/bin/multicloud-agent", "usr/share/istio-multicloud/multicloud_filter.wasm");
    eprintln!("the agent's process as the kernel sees it: {agent_procs:?}");
    assert_eq!(agent_procs.len(), 1, "one agent process: {agent_procs:?}");
    let p = &agent_procs[0];
    assert_eq!(
        (p.uid.as_str(), p.cap_eff.as_str(), p.seccomp.as_str(), p.no_new_privs.as_str(), p.root_read_only),
        ("65532", "0000000000000000", "2", "1", true)
    );

    let gws = node.wait_pods_ready(&cp, "istio-system", GATEWAY_SELECTOR, POD_READY);
    eprintln!("gateway pod {gws:?} Ready {:?} after the apply (with the agent's)", t.elapsed());
    let gw_procs = container_processes("/usr/local/bin/pilot-agent", "var/lib/istio/envoy/envoy_bootstrap_tmpl.json");
    let envoy_procs = container_processes("/usr/local/bin/envoy", "var/lib/istio/envoy/envoy_bootstrap_tmpl.json");
    eprintln!("the gateway's pilot-agent {gw_procs:?} and Envoy {envoy_procs:?}");
    assert!(gw_procs.len() == 1 && envoy_procs.len() == 1, "one pilot-agent and its Envoy");
    for p in gw_procs.iter().chain(&envoy_procs) {
        assert_eq!(
            (p.uid.as_str(), p.cap_eff.as_str(), p.root_read_only),
            ("1337", "0000000000000000", true),
            "as the gateway chart runs it"
        );
    }
    let svc = cp.get_json(&["service", "istio-ingressgateway", "-n", "istio-system"]).unwrap();
    let svc_addr = SocketAddr::new(svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap(), 443);
    let gw_ip = pod_ip(&cp, &gws[0]);
    let doc = wait_until("public.json through the gateway Service", Duration::from_secs(180), || {
        public_json(svc_addr, &host, &edge_ca.pem())
            .map_err(|e| format!("{e}; agent's xDS clients: {:?}", gateway_connected(&agent_ip, &gws[0])))
    });
    eprintln!("public.json through Service istio-ingressgateway ({svc_addr}) {:?} after the gateway's apply: {doc}", t.elapsed());
    let view = gateway_connected(&agent_ip, &gws[0]).unwrap();
    eprintln!(
        "gateway {} ({gw_ip}) connected to the agent pod through multicloud-agent-xds.istio-system.svc.cluster.local: {view}",
        gws[0]
    );

    // Federation with a peer of today's real-Istio tier (cluster 145: its
    // istiod, gateway and agent are host processes on its loopback range).
    // The peer's agent reaches this cluster's metadata host at the gateway
    // Service's load-balancer address (its /etc/hosts, as the real-Istio
    // tier gives every peer's), this cluster's agent pod reaches the peer's
    // through CoreDNS (a `hosts` entry: the bridge address, where the peer's
    // gateway listener, bound on every address, answers).
    let peer = SimCluster(145);
    multicloud_e2e::istio::set_peer_address(SIM, LB_IP);
    let lb = SocketAddr::from((LB_IP, 443));
    wait_until("public.json at the load-balancer address", Duration::from_secs(60), || public_json(lb, &host, &edge_ca.pem()));
    let t = Instant::now();
    let peers = start_kube_mesh(&[peer], KubeMeshOptions { replicas: 1, istio: true, defer_link: true, ..Default::default() });
    let b = &peers[0];
    eprintln!("peer cluster {} up in {:?}", peer.0, t.elapsed());
    node.set_dns_hosts(&[(metadata_host(peer), net.host_ip)]);
    let t = Instant::now();
    cp.apply(&imc_object(peer, &b.metadata_endpoint, &b.edge_ca.pem())).expect("imc for the peer");
    b.cp.apply(&imc_object(SIM, &format!("https://{host}:443/metadata"), &edge_ca.pem())).expect("the peer's imc for this cluster");
    b.wait_imc_ready(&object_name(SIM), Duration::from_secs(180));
    wait_imc_ready(&cp, &object_name(peer), Duration::from_secs(180));
    eprintln!("joined with cluster {} in {:?} (both IstioMulticloud objects Ready)", peer.0, t.elapsed());
    let b_status = b.imc_status(&object_name(SIM));
    let a_status = cp.get_json(&["imc", &object_name(peer)]).unwrap()["status"].clone();
    eprintln!("the peer's view of this cluster: {b_status}\nthis cluster's view of the peer: {a_status}");
    let uuid = doc["clusterUUID"].as_str().unwrap();
    assert!(b_status.to_string().contains(uuid), "the peer fetched this cluster's document (its cluster UUID {uuid}): {b_status}");
    assert!(a_status.to_string().contains(&b.uuid), "this cluster's agent pod fetched the peer's document ({}): {a_status}", b.uuid);

    // The real-Istio tier's cross-cluster call, from a client here to foo in
    // the peer: this cluster's agent pod wrote the peer's remote secret and
    // network (meshNetworks) and root (caCertificates) for istiod here; the
    // peer's agent, from what it fetched through the pod-run gateway, this
    // cluster's root for the peer's istiod.
    strict_mtls(b);
    cp.apply("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
        .expect("STRICT mTLS");
    let (_foo_app, _foo_sidecar) = start_foo(b);
    let (client, client_addr) = start_client(&cp, &istiod);
    let t = Instant::now();
    let resp = wait_until("the client here calls foo.abc.svc.cluster.local, answered by the peer", Duration::from_secs(180), || {
        match call_foo(client_addr, "/hello") {
            Ok(r) if r.status == 200 => Ok(r),
            Ok(r) => Err(format!("{} {}", r.status, r.text())),
            Err(e) => Err(e),
        }
    });
    let body = resp.json();
    eprintln!(
        "cross-cluster call answered by cluster {} {:?} after the client was ready: {}",
        body["cluster"],
        t.elapsed(),
        body["headers"]["x-forwarded-client-cert"]
    );
    assert_eq!(body["cluster"], object_name(peer).as_str(), "the peer's echo app answered: {body}");
    assert!(body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .contains("URI=spiffe://cluster.local/ns/abc/sa/client"));
    // The way it went: istiod here sent the client to the peer's gateway
    // (the network the agent pod wrote into meshNetworks).
    let eps = multicloud_e2e::dump::endpoints(&client.config_dump(), &format!("outbound|{FOO_PORT}||{FOO}"));
    let gw_b = format!("{}:{}", peer.ip(multicloud_e2e::hosts::GATEWAY), b.mesh_port);
    assert_eq!(eps.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), [gw_b.as_str()], "foo only through the peer's gateway");

    // The call into this cluster: a client in the peer calls `bar`, a pod
    // here with Istio's sidecar; the peer's istiod reads it through the
    // remote secret (this API server, through the pod-run gateway's API
    // proxy) and sends the client to this cluster's gateway (the pod, at
    // its load-balancer address, mesh port 15443).
    let t = Instant::now();
    cp.apply(&istio_workload_objects(
        &gw_image,
        "abc",
        "bar",
        FOO_PORT,
        &format!("{{\"cluster\": \"{}\"}}", object_name(SIM)),
        &network(SIM),
    ))
    .expect("bar");
    node.wait_pods_ready(&cp, "abc", "app=bar", POD_READY);
    eprintln!("bar (app + sidecar) Ready in {:?}", t.elapsed());
    let (peer_client, peer_client_addr, _) = multicloud_e2e::istio_mesh::start_client(b);
    let bar = "bar.abc.svc.cluster.local";
    // The peer's istiod's debug page `path`, only the lines `keep` keeps.
    let istiod_debug = |path: &str, keep: &dyn Fn(&str) -> bool| -> String {
        let text = b.istiod.as_ref().and_then(|i| i.get(path).ok()).map(|r| r.text()).unwrap_or_default();
        text.lines().filter(|l| keep(l)).collect::<Vec<_>>().join(" ")
    };
    let t = Instant::now();
    let resp =
        wait_until(
            "the peer's client calls bar.abc.svc.cluster.local, answered here",
            Duration::from_secs(180),
            || match http::try_request("GET", &format!("http://{peer_client_addr}/"), &[("Host", &format!("{bar}:{FOO_PORT}"))]) {
                Ok(r) if r.status == 200 => Ok(r),
                Ok(r) => Err(format!(
                    "{} {}; peer client's endpoints: {:?}; the peer's istiod's shards: {}; its meshNetworks: {}",
                    r.status,
                    r.text(),
                    multicloud_e2e::dump::endpoints(&peer_client.config_dump(), &format!("outbound|{FOO_PORT}||{bar}")),
                    istiod_debug("/debug/endpointShardz", &|l| l.contains("bar") || l.contains("10.88.140")),
                    istiod_debug("/debug/mesh", &|l| {
                        l.contains("network") || l.contains("address") || l.contains("registry") || l.contains("port")
                    }),
                )),
                Err(e) => Err(e),
            },
        );
    eprintln!("call into this cluster answered {:?} after the peer's client was ready: {}", t.elapsed(), resp.text());
    assert!(resp.text().contains(&object_name(SIM)));
    let eps = multicloud_e2e::dump::endpoints(&peer_client.config_dump(), &format!("outbound|{FOO_PORT}||{bar}"));
    assert_eq!(
        eps.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        [format!("{LB_IP}:15443").as_str()],
        "bar only through this cluster's pod-run gateway"
    );

    // Pod fault: the agent's pod deleted; the DaemonSet makes another, the
    // gateway reconnects, public.json stays served.
    let lease_before = cp.get_json(&["lease", "istio-multicloud-agent", "-n", "istio-system"]).unwrap()["spec"]["holderIdentity"].clone();
    let t = Instant::now();
    cp.kubectl_ok(&["delete", "pod", &pods[0], "-n", "istio-system", "--wait=false"]);
    let (mut failures, mut peer_not_ready) = (0u32, 0u32);
    let new_pods = wait_until("a new agent pod Ready", POD_READY, || {
        if public_json(svc_addr, &host, &edge_ca.pem()).is_err() {
            failures += 1;
        }
        if !imc_is_ready(b.cp, &object_name(SIM)) {
            peer_not_ready += 1;
        }
        let names = ready_pods(&cp, "istio-system", AGENT_SELECTOR)?;
        if names.iter().any(|n| n == &pods[0]) {
            Err(format!("still {names:?}"))
        } else {
            Ok(names)
        }
    });
    let recreated_in = t.elapsed();
    let new_ip = pod_ip(&cp, &new_pods[0]);
    wait_until("the gateway reconnected to the new agent pod", Duration::from_secs(120), || gateway_connected(&new_ip, &gws[0]));
    let reconnected_in = t.elapsed();
    let doc_after = wait_until("public.json after the agent pod's replacement", Duration::from_secs(120), || {
        public_json(svc_addr, &host, &edge_ca.pem())
    });
    let lease_after = wait_until("the Lease held by the new pod", Duration::from_secs(120), || {
        let h = cp.get_json(&["lease", "istio-multicloud-agent", "-n", "istio-system"]).unwrap()["spec"]["holderIdentity"].clone();
        if h == new_pods[0].as_str() {
            Ok(h)
        } else {
            Err(format!("{h}"))
        }
    });
    eprintln!(
        "agent pod {} deleted: {} Ready in {recreated_in:?}; gateway reconnected to it {reconnected_in:?} and public.json served again {:?} after the delete; \
         {failures} failed public.json fetches meanwhile; Lease {lease_before} -> {lease_after}",
        pods[0], new_pods[0], t.elapsed()
    );
    assert_eq!(doc_after["clusterUUID"], doc["clusterUUID"], "the same cluster's document: {doc_after}");
    // No federation lost: the peer kept this cluster Ready throughout, and
    // the new pod has the peer Ready.
    wait_imc_ready(&cp, &object_name(peer), Duration::from_secs(120));
    eprintln!("during the replacement the peer saw this cluster not Ready {peer_not_ready} times; the new pod has the peer Ready {:?} after the delete", t.elapsed());
    assert_eq!((failures, peer_not_ready), (0, 0), "public.json failures, peer's view not Ready");
    let again = call_foo(client_addr, "/again").map(|r| r.status);
    eprintln!("the cross-cluster call after the replacement: {again:?}");
    assert_eq!(again, Ok(200));
    let into =
        http::try_request("GET", &format!("http://{peer_client_addr}/"), &[("Host", &format!("{bar}:{FOO_PORT}"))]).map(|r| r.status);
    eprintln!("the call into this cluster after the replacement: {into:?}");
    assert_eq!(into, Ok(200));
    drop(client);

    drop(istiod);

    let report = node.stop(&cp);
    eprintln!("teardown: {report:#?}");
    assert!(report.clean(), "the node left something behind: {report:#?}");
    assert_eq!(read_sysctls(), sysctls_before, "kernel settings after the tier");
    eprintln!("node tier: {:?} in all", t0.elapsed());
}
