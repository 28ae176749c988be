//! Tier: real Istio. Cross-cluster traffic the Istio way (issue 12).
//! Two simulated clusters (134 = A, 135 = B), each with a real etcd +
//! kube-apiserver, a real istiod with its own self-signed root, an istiod-run
//! gateway (pilot-agent `proxy router`, Envoy 1.40) and the agent in
//! Kubernetes mode installed by `multicloud-agent install` (tests/src/kube_mesh.rs,
//! `KubeMeshOptions::istio`). Workloads are pilot-agent-run sidecars
//! (`proxy sidecar`, `ISTIO_META_INTERCEPTION_MODE=NONE`, listeners from a
//! `Sidecar` resource) in front of the echo app; a `WorkloadEntry` stands in
//! for each pod.
//!
//! What the product does here, and nothing else does: the agents exchange
//! metadata, pin each other's root, write it into Istio's shared mesh config
//! (`caCertificates`, istiod merges it and pushes it to every proxy by PCDS)
//! together with the peer's network behind its gateway (`meshNetworks`), and
//! write the remote secret with which A's istiod reads B's services and
//! endpoints through B's API proxy. deploy/'s AUTO_PASSTHROUGH Gateway opens
//! the cross-network port on B's istiod-run gateway.
//!
//! One istiod-run gateway per cluster serves the metadata endpoint and the
//! API proxy (deploy/'s routes, the filter configured by the agent) and the
//! mesh port. What the test bed substitutes (DNS for the peers' hosts, in a
//! mount namespace of the processes that resolve them; the EnvoyFilter's
//! agent address; a ServiceEntry for `kubernetes.default`'s endpoints) and
//! why: docs/istio.md, "What the test bed substitutes".
//!
//! Run against both istio.io/istio snapshots the Go module proxy serves
//! (`scripts/tools.sh`: the pin, master of 2026-08-27, on clusters 134/135;
//! the older one, master of 2026-04-23, on 137/138). Both istiods run Istio's
//! remote credentials controller, as every release does by default (1.29
//! and 1.30 cannot turn it off, and its switch in 1.31,
//! `PILOT_ENABLE_REMOTE_CREDENTIALS_CONTROLLER=false`, crashes istiod when a
//! remote cluster is added: tests/tests/istio_tier.rs shows it). It lists
//! and watches every Secret of the peer; the API guard sends those requests
//! to an empty namespace, so both istiods sync the peer and stay quiet.
//!
//! Loopback only: cluster N on 127.0.N.x; the istiod-run gateways' mesh
//! listeners bind every address on ports chosen at run time.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::istio::{IstioGateway, Istiod};
use multicloud_e2e::istio_mesh::{call_foo, has_root, rootca, start_client, start_foo, strict_mtls, FOO, FOO_PORT};
use multicloud_e2e::kube_mesh::{link_all, link_endpoints, object_name, start_kube_mesh, KubeCluster, KubeMeshOptions};
use multicloud_e2e::paths::IstioBuild;
use multicloud_e2e::{dump, hosts, wait_until, SimCluster};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const JOIN: Duration = Duration::from_secs(120);
/// Lifetime of the remote secrets' API tokens here (the agent re-issues one
/// when a third of it remains).
const TOKEN_TTL: u64 = 15;
/// deploy/'s API proxy ServiceAccount: the user of every request a peer
/// sends through this cluster's API proxy.
const API_PROXY_USER: &str = "system:serviceaccount:istio-system:istio-multicloud-api-proxy";

/// The decoded kubeconfig of A's remote secret for `peer`.
fn remote_kubeconfig(a: &KubeCluster, peer: &str) -> String {
    use base64::Engine as _;
    let s = a.cp.get_json(&["secret", &format!("istio-remote-secret-{peer}"), "-n", "istio-system"]).expect("the remote secret");
    let b64 = s["data"][peer].as_str().expect("the remote secret's kubeconfig");
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("utf-8")
}

/// The value of `key:` in a kubeconfig.
fn kubeconfig_field(text: &str, key: &str) -> String {
    let v: serde_json::Value = serde_saphyr::from_str(text).expect("the remote secret's kubeconfig is YAML");
    let at = match key {
        "server" => &v["clusters"][0]["cluster"]["server"],
        "token" => &v["users"][0]["user"]["token"],
        other => panic!("no {other} in a kubeconfig"),
    };
    at.as_str().unwrap_or_else(|| panic!("no {key} in the kubeconfig: {v}")).to_string()
}

/// Kinds a peer may read through the API proxy (what the guard allows).
fn allowed_kind(kind: &str) -> bool {
    let k = kind.trim_end_matches("List");
    matches!(
        k,
        "Service"
            | "Endpoints"
            | "Pod"
            | "Namespace"
            | "Node"
            | "EndpointSlice"
            | "CustomResourceDefinition"
            | "APIResource"
            | "APIGroup"
            | "APIVersions"
            | "Status"
    )
}

fn guard_refuses_what_istiod_does_not_need(a: &KubeCluster, b: &KubeCluster, peer: &str) {
    let text = remote_kubeconfig(a, peer);
    let path = a.dir().join("remote-b.kubeconfig");
    std::fs::write(&path, &text).expect("write");
    // kubectl, as istiod, resolves the peer's API host by name.
    let kubectl = |args: &[&str]| {
        let mut cmd = multicloud_e2e::istio::with_peer_names(&multicloud_e2e::paths::kubectl(), a.dir());
        cmd.args(args).env("KUBECONFIG", &path).output().expect("kubectl")
    };
    let out = kubectl(&["get", "services", "-n", "abc", "-o", "name"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("service/foo"), "the control: a read passes: {out:?}");
    // A Secret list passes and is empty (the guard sends it to the empty
    // namespace), though istio-system holds Secrets (as B's admin sees).
    let out = kubectl(&["get", "secrets", "-n", "istio-system", "-o", "name"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty(), "a Secret list is empty: {out:?}");
    assert!(b.cp.kubectl_ok(&["get", "secrets", "-n", "istio-system", "-o", "name"]).contains("secret/istio-ca-secret"));
    // The mesh ConfigMap passes by name; no other ConfigMap does.
    let out = kubectl(&["get", "configmap", "istio", "-n", "istio-system", "-o", "jsonpath={.data.mesh}"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("trustDomain"), "the mesh ConfigMap passes: {out:?}");
    for (what, args, want) in [
        ("a write", vec!["create", "configmap", "x", "-n", "abc"], "(verb_not_allowed)"),
        ("a Secret by name", vec!["get", "secret", "istio-ca-secret", "-n", "istio-system"], "(resource_not_allowed)"),
        ("another ConfigMap by name", vec!["get", "configmap", "istio-multicloud-mesh", "-n", "istio-system"], "(resource_not_allowed)"),
        ("exec", vec!["get", "--raw", "/api/v1/namespaces/abc/pods/foo-0/exec?command=id&stdout=true"], "(subresource_not_allowed)"),
        ("impersonation", vec!["get", "services", "-n", "abc", "--as=system:admin"], "(impersonation)"),
        ("a ConfigMap list", vec!["get", "configmaps", "-A"], "(resource_not_allowed)"),
    ] {
        let out = kubectl(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(want), "{what} through the remote secret must be refused ({want}): {out:?}");
    }

    // Path tricks, raw (no client-side path cleaning), with the remote
    // secret's token, at the address and name the kubeconfig gives.
    let server = kubeconfig_field(&text, "server");
    let (sni, port) = server.trim_start_matches("https://").rsplit_once(':').expect("server host:port");
    assert_eq!(sni, multicloud_e2e::kube_mesh::api_host(b.sim), "the remote secret names B's API host");
    let proxy = SocketAddr::from((b.sim.ip(hosts::GATEWAY), port.parse::<u16>().expect("port")));
    let sni = sni.to_string();
    let token = kubeconfig_field(&text, "token");
    let judge = {
        b.cp.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: judge, namespace: default}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: judge}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: judge, namespace: default}]\n").expect("judge");
        b.cp.token("default", "judge", 600)
    };
    let tricks = [
        "/api/v1/namespaces/istio-system/secrets",
        "/api/v1/namespaces/istio-system/services/../secrets",
        "/api/v1/namespaces/istio-system/services/%2e%2e/secrets",
        "/api/v1/namespaces/istio-system/services%2F..%2Fsecrets",
        "/api/v1/namespaces/istio-system/%73ecrets",
        "/api/v1//namespaces/istio-system/secrets",
        "/api//v1/secrets",
        "/api/v1/namespaces/istio-system/secrets;services",
        "/api/v1/namespaces/istio-system/services;/../secrets",
        "/api/v1/namespaces/istio-system/./secrets",
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert/../../secrets/istio-ca-secret",
        "/apis/networking.istio.io/../../api/v1/secrets",
        "/api/v1/secrets?services",
        "/api/v1/secrets?watch=0&resource=services",
        "/api/v1/services?fieldSelector=metadata.name%3Dfoo&x=/secrets",
        "/api/v1/namespaces/istio-system/configmaps",
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
    ];
    let mut table = Vec::new();
    for path in tricks {
        let direct = multicloud_e2e::mtls::get(
            b.cp.addr(),
            "kubernetes",
            None,
            "kubernetes",
            path,
            &[("Authorization", &format!("Bearer {judge}"))],
        );
        // The body's first `"kind":"..."` (the response may be chunked).
        let direct_kind = match &direct {
            multicloud_e2e::mtls::Outcome::Http(200, body) => {
                body.split("\"kind\":\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string).unwrap_or_else(|| "(unknown)".into())
            }
            _ => String::new(),
        };
        let via = multicloud_e2e::mtls::get(proxy, &sni, None, &sni, path, &[("Authorization", &format!("Bearer {token}"))]);
        let served = direct.status() == Some(200)
            && !allowed_kind(&direct_kind)
            && !(direct_kind == "ConfigMap" && path.ends_with("/istio-ca-root-cert"));
        let emptied = via.status() == Some(200) && empty_secret_list(via.body());
        table.push(format!(
            "{path}: API server {:?} {direct_kind}; proxy {:?}{}",
            direct.status(),
            via.status(),
            if emptied { " (an empty SecretList)" } else { "" }
        ));
        if served {
            assert!(
                via.status() != Some(200) || emptied,
                "{path}: the API server would serve a {direct_kind}; the proxy must refuse it or answer an empty Secret list: {}",
                via.body()
            );
        }
        assert!(no_secret_object(via.body()), "{path}: a Secret came through the proxy: {}", via.body());
    }
    eprintln!("GUARD path tricks:\n{}", table.join("\n"));
}

/// The first JSON value of an HTTP body (which may be chunked).
fn body_json(body: &str) -> Option<serde_json::Value> {
    let start = body.find('{')?;
    serde_json::Deserializer::from_str(&body[start..]).into_iter::<serde_json::Value>().next()?.ok()
}

/// A `SecretList` with no items (what the guard's empty namespace answers).
fn empty_secret_list(body: &str) -> bool {
    body_json(body).is_some_and(|v| v["kind"] == "SecretList" && v["items"].as_array().is_none_or(Vec::is_empty))
}

/// No Secret in the body: no `"kind":"Secret..."` at all, or an empty list.
fn no_secret_object(body: &str) -> bool {
    !body.contains("\"kind\":\"Secret") || empty_secret_list(body)
}

fn xds_refuses_all_but_the_gateway(a: &KubeCluster, client: &IstioGateway) {
    let gateway_node =
        format!("router~{}~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local", a.sim.ip(hosts::ISTIO_GATEWAY));
    use multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET as CREDENTIAL;
    use multicloud_e2e::xds_client::{fetch, node, Api, Refused, Transport};
    use multicloud_proto::type_url::{EXTENSION_CONFIG, SECRET};
    let addr = a.agents[0].xds_addr();
    let third = multicloud_e2e::fixtures::ClusterIdentity::generate("cluster-136")
        .workload_cert("istio-system", "istio-ingressgateway-service-account");
    let own = client.workload_cert_pem().zip(client.workload_key_pem()).expect("A's client certificate");
    for (what, transport) in [
        ("no certificate", Transport::Tls { client_cert: None }),
        ("a third CA's gateway certificate", Transport::Tls { client_cert: Some(third) }),
        ("A's client's certificate (istiod-signed, not the gateway)", Transport::Tls { client_cert: Some(own) }),
    ] {
        for (type_url, names) in [(SECRET, vec![CREDENTIAL]), (EXTENSION_CONFIG, vec!["multicloud-edge", "multicloud-api"])] {
            let r = fetch(addr, &transport, node(&gateway_node, None), Api::Ads, type_url, &names);
            assert!(!matches!(r, Ok(ref got) if !got.is_empty()), "{what} claiming the gateway must get nothing of {type_url}: {r:?}");
            if let Err(Refused::Status { code, .. }) = &r {
                assert_ne!(*code, tonic::Code::Ok, "{what}: {r:?}");
            }
        }
    }
    let view = a.agents[0].xds_view();
    let gateways: Vec<&serde_json::Value> = view["proxies"].as_array().into_iter().flatten().filter(|p| p["group"] == "gateway").collect();
    assert!(
        gateways.iter().any(|p| p["node_id"].as_str().is_some_and(|n| n.contains("istio-ingressgateway-0.istio-system"))),
        "the istiod-run gateway is connected as the gateway: {view}"
    );
    let metrics = a.agents[0].metrics();
    assert!(metrics.lines().any(|l| l.starts_with("multicloud_agent_xds_refusals_total") && !l.ends_with(" 0")), "refusals are counted");
}

/// The `exp` of the token in a remote secret's kubeconfig (base64 data).
fn jwt_exp(kubeconfig_b64: &str) -> u64 {
    use base64::Engine as _;
    let text =
        base64::engine::general_purpose::STANDARD.decode(kubeconfig_b64).map(|b| String::from_utf8_lossy(&b).into_owned()).expect("base64");
    let token = kubeconfig_field(&text, "token");
    let payload = token.split('.').nth(1).expect("a JWS");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url claims");
    serde_json::from_slice::<serde_json::Value>(&json).ok().and_then(|v| v["exp"].as_u64()).expect("an exp claim")
}

/// A's workload calls `foo.abc.svc.cluster.local`, which runs only in B: B
/// answers through B's istiod-run gateway (AUTO_PASSTHROUGH from deploy/),
/// each side validating the other with the root the agents put into Istio's
/// `caCertificates`. Both istiods sync the peer and stay quiet, their remote
/// credentials controllers on; no Secret and no ConfigMap but the mesh's
/// passes either API proxy. Calls run through two
/// token rotations with none failing. Unlinking removes B's root from A's
/// proxies and the call fails closed; relinking recovers; nothing restarts.
/// With `foo` in both clusters both answer, and locality failover moves A's
/// calls to B when A's copy fails.
#[test]
fn a_workload_calls_a_service_of_the_peer_through_istio() {
    cross_cluster([SimCluster(134), SimCluster(135)], IstioBuild::current(), true);
}

/// The same on the older istio.io/istio snapshot (master of 2026-04-23, ten
/// days after the 1.30 branch cut): the call, quiet synced istiods, no
/// Secret through the proxy, calls
/// through two rotations, unlink and relink. (Locality failover is Istio's
/// own and runs on the pin only.)
#[test]
fn the_same_holds_on_the_older_istio_snapshot() {
    cross_cluster([SimCluster(137), SimCluster(138)], IstioBuild::older(), false);
}

/// Waits until `istiod` reports `peer` as a synced remote cluster
/// (`/debug/clusterz`, what `istioctl remote-clusters` shows; the older
/// snapshot's `istiod_remote_cluster_sync_status` metric says `timeout` 30 s
/// after any remote, synced or not, as 1.29 does: istio/istio#60098).
fn wait_remote_synced(istiod: &Istiod, peer: &str) {
    wait_until(&format!("istiod of cluster {} to report {peer} synced", istiod.sim.0), JOIN, || {
        let clusters = istiod.get("/debug/clusterz").map(|r| r.json()).map_err(|e| e.to_string())?;
        let state = clusters.as_array().into_iter().flatten().find(|c| c["id"] == peer).map(|c| c["syncStatus"].clone());
        match state {
            Some(s) if s == "synced" => Ok(()),
            other => Err(format!("{peer}: {other:?} in {clusters}")),
        }
    });
}

/// What `istiod` logged about `peer` that a user would call noise: refused
/// or failed lists and watches, and sync timeouts.
fn noise_about(istiod: &Istiod, peer: &str) -> Vec<String> {
    istiod
        .log()
        .lines()
        .filter(|l| l.contains(peer))
        .filter(|l| ["forbidden", "failed to list", "failed to sync", "watch error", "Forbidden"].iter().any(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// What a peer's istiod read through `cp`'s API proxy (its audit log):
/// reads only, of what the guard allows; Secrets only in the empty
/// namespace and never one returned; ConfigMaps only the mesh's. Returns
/// `verb resource` for each kind of request seen.
fn audited_reads(cp: &multicloud_e2e::kube::ControlPlane) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for e in cp.audit(API_PROXY_USER) {
        let (verb, group, resource) = (
            e["verb"].as_str().unwrap_or(""),
            e["objectRef"]["apiGroup"].as_str().unwrap_or(""),
            e["objectRef"]["resource"].as_str().unwrap_or(""),
        );
        let (ns, name) = (e["objectRef"]["namespace"].as_str().unwrap_or(""), e["objectRef"]["name"].as_str().unwrap_or(""));
        assert!(["get", "list", "watch"].contains(&verb), "only reads reach the API server through the proxy: {e}");
        let allowed = match (group, resource) {
            ("", "services" | "endpoints" | "pods" | "namespaces" | "nodes") => true,
            ("", "configmaps") => ns == "istio-system" && (name == "istio" || name == "istio-ca-root-cert"),
            ("", "secrets") => ns == "istio-multicloud-empty",
            ("discovery.k8s.io", "endpointslices") | ("apiextensions.k8s.io", "customresourcedefinitions") => true,
            ("networking.istio.io" | "security.istio.io", _) => true,
            ("", "") => e["requestURI"].as_str().is_some_and(|u| !u.contains("/secrets") && !u.contains("/configmaps")),
            _ => false,
        };
        assert!(allowed, "not on the guard's allow-list: {e}");
        if resource == "secrets" {
            let items = e["responseObject"]["items"].as_array().map_or(0, Vec::len);
            assert_eq!(items, 0, "no Secret is ever returned through the proxy: {e}");
            assert_ne!(e["responseObject"]["kind"], "Secret", "{e}");
        }
        let ns_part = if resource == "secrets" || resource == "configmaps" { format!(" in {ns}") } else { String::new() };
        seen.insert(format!("{verb} {}{resource}{ns_part}", if group.is_empty() { String::new() } else { format!("{group}/") }));
    }
    seen
}

fn cross_cluster(sims: [SimCluster; 2], build: IstioBuild, full: bool) {
    let t0 = Instant::now();
    eprintln!("ISTIO {} ({})", build.version, build.label);
    // 15-second API tokens in the remote secrets: rotated several times in the test.
    let opts = KubeMeshOptions {
        replicas: 1,
        istio: true,
        agent_args: vec![format!("--api-token-ttl-seconds={TOKEN_TTL}")],
        istio_build: Some(build.clone()),
        defer_link: true,
        ..Default::default()
    };
    let clusters = start_kube_mesh(&sims, opts);
    let t_started = t0.elapsed();
    let (a, b) = (&clusters[0], &clusters[1]);
    let (name_a, name_b) = (object_name(sims[0]), object_name(sims[1]));
    // Both clusters up: now the operator links them.
    let t_link = Instant::now();
    link_all(&clusters);
    a.wait_imc_ready(&name_b, JOIN);
    b.wait_imc_ready(&name_a, JOIN);
    let t_join = t_link.elapsed();
    let root_a = multicloud_e2e::istio::published_root(a.cp, JOIN);
    let root_b = multicloud_e2e::istio::published_root(b.cp, JOIN);
    assert!(!has_root(&root_a, &root_b), "each cluster has its own root");
    for c in [a, b] {
        strict_mtls(c);
    }

    let (_foo_app, foo_sidecar) = start_foo(b);
    let (client, client_addr, client_inbound) = start_client(a);
    let pids = |g: &IstioGateway| (g.agent_pid(), g.envoy_pid());
    let (client_pids, foo_pids) = (pids(&client), pids(&foo_sidecar));
    let istiod_pids = (a.istiod.as_ref().and_then(|i| i.pid()), b.istiod.as_ref().and_then(|i| i.pid()));

    // 1. The call, answered by B.
    let diag = || {
        let eps = dump::endpoints(&client.config_dump(), &format!("outbound|{FOO_PORT}||{FOO}"));
        let log = a.istiod.as_ref().map(|i| i.log()).unwrap_or_default();
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains(&name_b) || l.contains("remote") || l.contains("error") || l.contains("warn")).collect();
        format!(
            "A's client listeners: {:?}; EDS for foo: {eps:?}; A's ROOTCA has B's root: {}; B's foo ROOTCA has A's root: {}\nA's istiod:\n{}",
            client.admin_get("/listeners").unwrap_or_default().lines().collect::<Vec<_>>(),
            has_root(&rootca(&client), &root_b),
            has_root(&rootca(&foo_sidecar), &root_a),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    };
    let t_call = Instant::now();
    let resp = wait_until("A's client calls foo.abc.svc.cluster.local, answered by B", JOIN, || match call_foo(client_addr, "/hello") {
        Ok(r) if r.status == 200 => Ok(r),
        Ok(r) => Err(format!("{} {}; {}", r.status, r.text(), diag())),
        Err(e) => Err(format!("{e}; {}", diag())),
    });
    let t_call = t_call.elapsed();
    let body = resp.json();
    assert_eq!(body["cluster"], name_b.as_str(), "B's echo app answered: {body}");
    // B's sidecar terminated mTLS with A's client certificate (validated
    // against A's root, which B's agent put into B's caCertificates).
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/abc/sa/client"), "B's sidecar saw A's client identity: {body}");
    // The way it went: A's istiod sent A's client to B's gateway (meshNetworks
    // from A's agent), and B's istiod-run gateway passed it through by SNI.
    let gw_b = format!("{}:{}", sims[1].ip(hosts::GATEWAY), b.mesh_port);
    let eps = dump::endpoints(&client.config_dump(), &format!("outbound|{FOO_PORT}||{FOO}"));
    assert_eq!(eps.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), [gw_b.as_str()], "A reaches foo only through B's gateway");
    let sni_cluster = format!("outbound_.{FOO_PORT}_._.{FOO}");
    // Per-host counters of Envoy's /clusters (Istio's stats matcher keeps
    // cluster stats out of /stats): B's gateway connected to foo's sidecar.
    let foo_host = format!("{}::{}:", sni_cluster, sims[1].ip(hosts::ISTIO_WORKLOAD));
    let clusters_b = b.istio_gateway.as_ref().expect("B's gateway").admin_get("/clusters").unwrap_or_default();
    let cx: u64 = clusters_b
        .lines()
        .filter(|l| l.starts_with(&foo_host) && l.contains("::cx_total::"))
        .filter_map(|l| l.rsplit("::").next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    assert!(
        cx > 0,
        "B's gateway opened connections to foo's sidecar on {sni_cluster}: {}",
        clusters_b.lines().filter(|l| l.contains("foo")).collect::<Vec<_>>().join("\n")
    );
    assert!(has_root(&rootca(&client), &root_b) && has_root(&rootca(&client), &root_a), "A's client trusts A's and B's roots");
    assert!(has_root(&rootca(&foo_sidecar), &root_a), "B's foo trusts A's root");
    eprintln!("FIGURES clusters up {t_started:?}; both objects applied to both Ready {t_join:?}; first call answered {t_call:?} after the workloads started");

    // B publishes no services in its private document (no Service carries
    // the export label: the shape of a Deckhouse-format peer), and still gets
    // the traffic, because A's istiod read B's endpoints itself. `check`
    // fetches B's private document as A's agent does.
    // (`check` resolves B's hosts by name, as the agent does.)
    // Polled with a deadline: one full run saw a single probe's TLS handshake
    // fail ("received corrupt message of type InvalidContentType") while B's
    // gateway was being re-pushed; every failed attempt is printed.
    let mut attempts = 0;
    let private = wait_until("`multicloud-agent check` to fetch B's private document", Duration::from_secs(30), || {
        attempts += 1;
        let out = multicloud_e2e::istio::with_peer_names(&multicloud_e2e::paths::agent(), a.dir())
            .args(["check", &name_b, "--kubernetes"])
            .env("KUBECONFIG", a.cp.admin_kubeconfig())
            .output()
            .map_err(|e| format!("multicloud-agent check: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.lines().find(|l| l.starts_with("PASS") && l.split_whitespace().nth(1) == Some("private")) {
            Some(line) => Ok(line.to_string()),
            None => {
                eprintln!("check attempt {attempts} did not pass the private step:\n{text}{}", String::from_utf8_lossy(&out.stderr));
                Err(text)
            }
        }
    });
    assert!(private.contains(" 0 service(s)"), "B's private document lists no services: {private}");

    // 2. Both istiods synced the peer. What A's istiod read through B's API
    //    proxy, as B's API server audited it (deploy/'s API proxy
    //    ServiceAccount): reads only, of what the guard allows; the remote
    //    credentials controller's Secret lists and watches went to the empty
    //    namespace and returned nothing; the one ConfigMap read is the mesh
    //    config. The same holds the other way round.
    let (istiod_a, istiod_b) = (a.istiod.as_ref().expect("A's istiod"), b.istiod.as_ref().expect("B's istiod"));
    wait_remote_synced(istiod_a, &name_b);
    wait_remote_synced(istiod_b, &name_a);
    let seen = audited_reads(b.cp);
    // (client-go lists by streaming watch: lists show as watches.)
    for want in ["watch services", "watch networking.istio.io/workloadentries", "watch namespaces", "watch discovery.k8s.io/endpointslices"]
    {
        assert!(seen.contains(want), "A's istiod did {want:?} through B's API proxy: {seen:?}");
    }
    assert!(
        seen.iter().any(|r| r.ends_with("secrets in istio-multicloud-empty")),
        "A's credentials controller read Secrets, in the empty namespace only: {seen:?}"
    );
    assert!(seen.iter().any(|r| r.ends_with("configmaps in istio-system")), "A's istiod read B's mesh ConfigMap: {seen:?}");
    let seen_a = audited_reads(a.cp);
    assert!(seen_a.iter().any(|r| r.ends_with("secrets in istio-multicloud-empty")), "{seen_a:?}");
    eprintln!("REQUESTS A's istiod through B's API proxy: {seen:?}");
    eprintln!("REQUESTS B's istiod through A's API proxy: {seen_a:?}");

    // 2b. The same remote secret (A's kubeconfig for B) can do nothing else:
    //     no write, no Secret, no exec, no impersonation. Path tricks are
    //     judged by what B's real API server would have served for them (as
    //     an admin): where that is anything the guard does not allow, the
    //     proxy must not answer 200, and nothing through it is ever a Secret.
    guard_refuses_what_istiod_does_not_need(a, b, &name_b);

    // 3. A third CA gets into neither cluster; a certificate from a linked
    //    cluster's istiod does (the control, through the same doors).
    let sni = format!("outbound_.{FOO_PORT}_._.{FOO}");
    let gw_addr: SocketAddr = gw_b.parse().expect("B's gateway address");
    let own = client.workload_cert_pem().zip(client.workload_key_pem()).expect("A's client certificate");
    let third = multicloud_e2e::fixtures::ClusterIdentity::generate("cluster-136").workload_cert("abc", "client");
    // ALPN `istio`, as an Istio client offers it (the sidecar's mTLS filter
    // chain matches on it).
    let via_b = |cert: &(String, String)| multicloud_e2e::mtls::get_alpn(gw_addr, &sni, None, Some(cert), &["istio"], FOO, "/direct", &[]);
    let ok = via_b(&own);
    assert_eq!(ok.status(), Some(200), "A's istiod-signed certificate through B's gateway to foo: {ok:?}");
    assert!(ok.body().contains(&name_b), "{ok:?}");
    let denied = via_b(&third);
    assert!(denied.is_refused(), "a third CA's certificate must not reach B's foo: {denied:?}");
    let foo_cert = foo_sidecar.workload_cert_pem().zip(foo_sidecar.workload_key_pem()).expect("B's foo certificate");
    let into_a = |cert: &(String, String)| {
        multicloud_e2e::mtls::get_alpn(client_inbound, "client", None, Some(cert), &["istio"], "client", "/", &[])
    };
    let ok = into_a(&foo_cert);
    assert!(!ok.is_refused(), "B's istiod-signed certificate passes A's sidecar's mTLS (A trusts B's root): {ok:?}");
    let denied = into_a(&third);
    assert!(denied.is_refused(), "a third CA's certificate must not pass A's sidecar's mTLS: {denied:?}");

    // 3b. The agent's xDS port under istiod: a client that claims the
    //     gateway's node id gets no secret and no private document, with no
    //     certificate, with a third CA's certificate of the gateway's
    //     ServiceAccount, or with a workload certificate istiod signed for
    //     another identity; the istiod-run gateway itself got its resources
    //     (B's API proxy above is its route, with the guard and the
    //     credential from B's agent).
    xds_refuses_all_but_the_gateway(a, &client);

    // 4. Token rotation (istio/istio#37925): calls run while the remote
    //    secret's token is replaced twice, and none fails; then B's API
    //    server restarts (every watch breaks, so istiod must reconnect with a
    //    token it holds now), and a Service created in B afterwards still
    //    shows up in A's proxies.
    let secret = format!("istio-remote-secret-{name_b}");
    let token_of = || {
        let s = a.cp.get_json(&["secret", &secret, "-n", "istio-system"]).unwrap_or_default();
        s["data"][&name_b].as_str().map(str::to_string).unwrap_or_default()
    };
    let mut tokens = vec![token_of()];
    let (mut calls, mut failed) = (0u32, Vec::new());
    let loop_deadline = Instant::now() + Duration::from_secs(6 * TOKEN_TTL);
    // Bounded: two rotations take about 2 x 2/3 x TOKEN_TTL; at most 3000 calls.
    while tokens.len() < 3 && Instant::now() < loop_deadline && calls < 3000 {
        match call_foo(client_addr, &format!("/rotation/{calls}")) {
            Ok(r) if r.status == 200 && r.json()["cluster"] == name_b.as_str() => {}
            Ok(r) => failed.push(format!("call {calls}: {} {}", r.status, r.text())),
            Err(e) => failed.push(format!("call {calls}: {e}")),
        }
        calls += 1;
        if calls % 10 == 0 {
            let t = token_of();
            if !t.is_empty() && tokens.last() != Some(&t) {
                tokens.push(t);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tokens.len() >= 3, "two token rotations within {:?} ({} tokens seen)", 6 * TOKEN_TTL, tokens.len());
    assert!(failed.is_empty(), "{} of {calls} calls failed across two token rotations: {failed:?}", failed.len());
    let first_exp = jwt_exp(&tokens[0]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    assert!(now > first_exp, "the first token has expired: istiod runs on a later one");
    eprintln!("FIGURES {calls} calls across two token rotations ({TOKEN_TTL} s tokens): {} failed", failed.len());
    // Quiet: from the remote secrets' arrival through both rotations (and
    // before B's deliberate restart below), neither istiod logged a refused
    // or failed list, watch or sync of its peer.
    for (istiod, peer, peer_cluster) in [(istiod_a, &name_b, b), (istiod_b, &name_a, a)] {
        let noise = noise_about(istiod, peer);
        let errors = || {
            let log = peer_cluster.istio_gateway.as_ref().map(IstioGateway::log).unwrap_or_default();
            log.lines().filter(|l| l.starts_with("ACCESS") && !l.contains(" 200 ")).map(str::to_string).collect::<Vec<_>>()
        };
        assert!(
            noise.is_empty(),
            "istiod of cluster {} about {peer}: {noise:#?}\n{peer}'s gateway answered: {:#?}",
            istiod.sim.0,
            errors()
        );
    }
    let since_join = t0.elapsed();
    b.cp.restart_apiserver();
    b.cp.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bar, namespace: abc}}\n\
         spec: {{selector: {{app: foo}}, ports: [{{name: http, port: {FOO_PORT}, targetPort: 8080}}]}}\n"
    ))
    .expect("Service abc/bar in B");
    let t_bar = Instant::now();
    wait_until("B's new Service bar in A's client (read with a rotated token)", JOIN, || {
        let text = client.admin_get("/clusters").unwrap_or_default();
        if text.contains(&format!("outbound|{FOO_PORT}||bar.abc.svc.cluster.local")) {
            Ok(())
        } else {
            let log = a.istiod.as_ref().map(|i| i.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&name_b) && !l.contains("waiting for sync")).collect();
            Err(lines[lines.len().saturating_sub(12)..].join("\n"))
        }
    });
    eprintln!(
        "FIGURES token rotation: {since_join:?} into the test (tokens of {TOKEN_TTL} s), B's restart to bar in A {:?}",
        t_bar.elapsed()
    );

    // 5. Unlink on A: B's root leaves A's proxies (PCDS, no restart) and the
    //    call fails closed.
    let t_unlink = Instant::now();
    a.cp.kubectl_ok(&["delete", "imc", &name_b]);
    wait_until("B's root to leave A's client's ROOTCA", JOIN, || {
        if has_root(&rootca(&client), &root_b) {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    });
    wait_until("the call to fail closed", JOIN, || match call_foo(client_addr, "/after-unlink") {
        Ok(r) if r.status == 200 => Err(format!("still answered: {}", r.text())),
        _ => Ok(()),
    });
    let t_unlink = t_unlink.elapsed();
    let bundle = rootca(&client);
    assert!(
        has_root(&bundle, &root_a),
        "A's own root stays: ROOTCA has {} certificates: {}",
        bundle.matches("BEGIN CERTIFICATE").count(),
        client.admin_get("/config_dump?resource=dynamic_active_secrets").unwrap_or_default().chars().take(3000).collect::<String>()
    );

    // 6. Relink: recovers, again without restarts.
    let t_relink = Instant::now();
    link_endpoints(a.cp, &[(sims[1], b.metadata_endpoint.clone(), b.edge_ca.pem())]);
    let resp = wait_until("the call to be answered by B again", JOIN, || match call_foo(client_addr, "/relinked") {
        Ok(r) if r.status == 200 => Ok(r),
        Ok(r) => Err(format!("{} {}; {}", r.status, r.text(), diag())),
        Err(e) => Err(format!("{e}; {}", diag())),
    });
    assert_eq!(resp.json()["cluster"], name_b.as_str());
    let t_relink = t_relink.elapsed();
    assert_eq!(pids(&client), client_pids, "A's client sidecar (pilot-agent, Envoy) did not restart");
    assert_eq!(pids(&foo_sidecar), foo_pids, "B's foo sidecar did not restart");
    assert_eq!((a.istiod.as_ref().and_then(|i| i.pid()), b.istiod.as_ref().and_then(|i| i.pid())), istiod_pids, "neither istiod restarted");
    eprintln!("FIGURES unlink to fail-closed {t_unlink:?}; relink to answered {t_relink:?}",);

    if !full {
        eprintln!("FIGURES whole test {:?} ({})", t0.elapsed(), build.label);
        return;
    }
    // 7. foo in both clusters: both answer; with outlier detection, Istio's
    //    locality load balancing keeps A's calls in A, and fails over to B
    //    when A's copy fails.
    let (foo_app_a, _foo_a) = start_foo(a);
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..200 {
        if let Ok(r) = call_foo(client_addr, &format!("/both/{i}")) {
            if r.status == 200 {
                answered.insert(r.json()["cluster"].as_str().unwrap_or("").to_string());
            }
        }
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, [name_a.clone(), name_b.clone()].into_iter().collect(), "both clusters' foo answer A's client");
    a.cp.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: foo, namespace: abc}}\n\
         spec: {{host: {FOO}, trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}}}}}}\n"
    ))
    .expect("DestinationRule foo (outlier detection)");
    // Who answers `n` calls in a row.
    let answers = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| match call_foo(client_addr, &format!("/locality/{i}")) {
                Ok(r) if r.status == 200 => r.json()["cluster"].as_str().unwrap_or("").to_string(),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => e,
            })
            .collect()
    };
    // Waits for 10 answers in a row from `want`, then 40 more must all come
    // from it too (by chance alone, with both copies healthy: 2^-40).
    let local_only = |what: &str, want: &str| {
        wait_until(what, JOIN, || {
            let got = answers(10);
            if got.iter().all(|g| g == want) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
        let got = answers(40);
        assert!(got.iter().all(|g| g == want), "{what}: then 40 more from {want}: {got:?}");
    };
    local_only("A's client to stay in its locality (A's foo answers 10 calls in a row)", &name_a);
    let t_failover = Instant::now();
    drop(foo_app_a);
    local_only("the calls to fail over to B (B's foo answers 10 calls in a row)", &name_b);
    eprintln!("FIGURES A's foo stopped to B answering 10 in a row: {:?}; whole test {:?}", t_failover.elapsed(), t0.elapsed());
}
