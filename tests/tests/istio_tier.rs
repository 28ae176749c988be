//! Tier: real Istio (the first step of issue 12). Per simulated cluster a
//! real etcd + kube-apiserver (tests/src/kube.rs), a real istiod
//! (pilot-discovery built from the Go module proxy) outside a pod with its
//! own self-signed root, and an ingress gateway run by a real pilot-agent
//! (`proxy router`) with the pinned Envoy 1.40, VM-style (no kubelet, no
//! pod): tests/src/istio.rs. Every setting and why: docs/istio.md.
//!
//! Clusters: 131 and 132, and 139 for the credentials-controller switch
//! (loopback only: 127.0.131.x, 127.0.132.x, 127.0.139.x; the
//! gateways' Envoy admin on 127.0.0.1 and their health/Prometheus/status
//! ports on 0.0.0.0, all chosen at run time).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::agent::{Agent, AgentOptions};
use multicloud_e2e::fixtures::free_port;
use multicloud_e2e::istio::{self, GatewayOptions, IstioGateway, Istiod};
use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::kube_mesh::{create_metadata_tls, daemonset_args, install, start_daemonset_agent};
use multicloud_e2e::{dump, hosts, wait_until, SimCluster};
use std::process::Command;
use std::time::{Duration, Instant};

/// A probe of one istiod switch: (name, istiod env, host number, what
/// Envoy's CDS refusal must name ("" = no refusal), what its LDS refusal
/// must name).
type SwitchCase = (&'static str, &'static [(&'static str, &'static str)], u8, &'static str, &'static str);

/// `ss -ltnpH`: the TCP addresses process `pid` listens on.
fn listening(pid: u32) -> Vec<String> {
    let out = Command::new("ss").args(["-ltnpH"]).output().expect("ss (iproute2)");
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// `openssl verify` of `leaf` (PEM chain, leaf first) against `root` only.
fn verifies(root: &str, chain: &str, dir: &std::path::Path) -> Result<(), String> {
    let (r, c) = (dir.join("verify-root.pem"), dir.join("verify-chain.pem"));
    std::fs::write(&r, root).expect("write");
    std::fs::write(&c, chain).expect("write");
    let out = Command::new("openssl").args(["verify", "-purpose", "any", "-CAfile"]).arg(&r).arg(&c).output().expect("openssl");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn uri_sans(chain: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write as _;
    child.stdin.take().expect("stdin").write_all(chain.as_bytes()).expect("write");
    String::from_utf8_lossy(&child.wait_with_output().expect("openssl").stdout).into_owned()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "?".into())
}

/// istiod per cluster with its own root; a pilot-agent-run gateway per
/// cluster that gets its certificate and configuration from its istiod with
/// no NACK, selected by the `istio-ingressgateway` Service; everything stops
/// by PID and nothing outlives the test.
#[test]
fn istiod_and_pilot_agent_gateway_per_cluster() {
    let t0 = Instant::now();
    let sims = [SimCluster(131), SimCluster(132)];
    let cps = ControlPlane::shared_all(&sims);
    let t_kube = t0.elapsed();
    let istiods = Istiod::shared_all(&cps);

    // 1. istiod: ready, every listener on 127.0.N.20, its own root published.
    let mut roots = Vec::new();
    for (cp, istiod) in cps.iter().zip(&istiods) {
        let pid = istiod.pid().expect("istiod pid");
        let addrs = listening(pid);
        let ip = cp.sim.ip(hosts::ISTIOD).to_string();
        assert!(!addrs.is_empty(), "istiod of cluster {} listens", cp.sim.0);
        for a in &addrs {
            assert!(a.starts_with(&format!("{ip}:")), "istiod of cluster {} listens on {a}, not on {ip}: {addrs:?}", cp.sim.0);
        }
        assert_eq!(addrs.len(), 5, "secure gRPC, http, https, monitoring, ctrlz (no plaintext xDS): {addrs:?}");
        let root = istio::published_root(cp, Duration::from_secs(60));
        // Self-signed by istiod (no cacerts): the CA Secret istiod created.
        assert!(cp.get_json(&["secret", "istio-ca-secret", "-n", "istio-system"]).is_some(), "istiod's self-signed CA Secret");
        assert!(cp.get_json(&["secret", "cacerts", "-n", "istio-system"]).is_none(), "no cacerts");
        roots.push(root);
    }
    assert_ne!(roots[0], roots[1], "each cluster's istiod has its own root");

    // 2. A gateway per cluster, started in parallel.
    let t_gw = Instant::now();
    let mut gateways: Vec<IstioGateway> = std::thread::scope(|s| {
        let hs: Vec<_> = cps
            .iter()
            .zip(&istiods)
            .map(|(cp, istiod)| {
                // The Service's 443 -> a run-time port: where istiod binds the
                // gateway's listener for a Gateway server on 443.
                // The mesh TLS port (15443) is what the agent publishes as the
                // gateway's address; nothing serves it in this step.
                let any = std::net::Ipv4Addr::UNSPECIFIED;
                let ports = vec![("https".into(), 443, free_port(any)), ("tls".into(), 15443, free_port(any))];
                let opts = GatewayOptions { service_ports: ports, ..Default::default() };
                s.spawn(move || IstioGateway::start(cp, istiod, opts))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("gateway start")).collect()
    });
    let t_gw = t_gw.elapsed();

    for (i, (gw, istiod)) in gateways.iter().zip(&istiods).enumerate() {
        let n = gw.sim.0;
        // Its workload certificate came from its own istiod (CSR): the
        // gateway's SPIFFE ID, chained to this cluster's root, not the other's.
        let chain = wait_until(&format!("cluster {n}: the gateway's workload certificate"), Duration::from_secs(30), || {
            gw.workload_cert_pem().ok_or_else(|| "not written yet".to_string())
        });
        let sans = uri_sans(&chain);
        assert!(sans.contains("URI:spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"), "cluster {n}: {sans}");
        verifies(&roots[i], &chain, gw.dir()).unwrap_or_else(|e| panic!("cluster {n}: chains to its istiod's root: {e}"));
        assert!(verifies(&roots[1 - i], &chain, gw.dir()).is_err(), "cluster {n}: must not chain to the other cluster's root");

        // Its configuration came from istiod, and Envoy 1.40 took all of it.
        let proxy = gw.proxy_id();
        let entry = istiod.wait_synced(
            &format!("cluster {n}: istiod's syncz shows {proxy} in sync"),
            &proxy,
            &["Cluster", "Listener", "ClusterLoadAssignment"],
            Duration::from_secs(30),
        );
        for (t, r) in entry["resources"].as_object().expect("resources") {
            assert!(r["lastError"].as_str().unwrap_or("").is_empty(), "cluster {n}: istiod saw a NACK of {t}: {r}");
        }
        assert_eq!(entry["proxy_type"], "router");
        assert_eq!(entry["cluster_id"], istio::cluster_id(gw.sim).as_str());
        let rejected: Vec<_> = gw.stats_ending(".update_rejected").into_iter().filter(|(_, v)| *v > 0).collect();
        assert!(rejected.is_empty(), "cluster {n}: Envoy rejected config: {rejected:?}");
        let metrics = istiod.metrics();
        assert!(
            !metrics.lines().any(|l| l.starts_with("pilot_total_xds_rejects") && !l.ends_with(" 0")),
            "cluster {n}: istiod counted rejects:\n{}",
            metrics.lines().filter(|l| l.contains("reject")).collect::<Vec<_>>().join("\n")
        );

        // Selected by the istio-ingressgateway Service the way Istio selects a
        // pod: through the WorkloadEntry (labels istio=ingressgateway), so
        // the Service's endpoints (EDS, as istiod computes them) are the gateway.
        let cluster = "outbound|15021||istio-ingressgateway.istio-system.svc.cluster.local";
        let want = format!("{}:{}", gw.ip, gw.ports.envoy_status);
        wait_until(&format!("cluster {n}: {cluster} has the gateway's address"), Duration::from_secs(30), || {
            let eps = dump::endpoints(&gw.config_dump(), cluster);
            if eps.iter().any(|(a, _)| *a == want) {
                Ok(())
            } else {
                Err(format!("{eps:?}"))
            }
        });
        let log = gw.log();
        assert!(!log.contains("failed to get proxy service targets"), "cluster {n}");
        assert!(
            !istiod.log().contains(&format!("no instances found for {proxy}")),
            "cluster {n}: istiod matched the proxy to its WorkloadEntry"
        );
    }

    // Figures (docs/istio.md records them).
    for (gw, istiod) in gateways.iter().zip(&istiods) {
        eprintln!(
            "FIGURES cluster {}: istiod ready in {:?}, RSS {}; gateway ready in {:?}, pilot-agent RSS {}, Envoy RSS {}",
            gw.sim.0,
            istiod.started_in,
            mib(istiod.rss_kib()),
            gw.started_in,
            mib(gw.agent_pid().and_then(istio::rss_kib)),
            mib(gw.envoy_pid().and_then(istio::rss_kib)),
        );
    }
    eprintln!("FIGURES control planes {t_kube:?}; both gateways (parallel) {t_gw:?}; test so far {:?}", t0.elapsed());

    // 3. The edge filter attached to the istiod-run gateway by deploy/'s own
    //    EnvoyFilter (rendered by `multicloud-agent install`), configured by
    //    the agent in Kubernetes mode over its mTLS xDS port (the gateway
    //    presents the certificate istiod signed, served by pilot-agent as SDS
    //    `default` on `sds-grpc`): the gateway serves public.json with the
    //    root istiod wrote.
    let t_edge = Instant::now();
    let (cp, gw) = (cps[0], &gateways[0]);
    let (mut agent, public, edge_ca) = edge_through_istiod(cp, istiods[0], gw);
    assert_eq!(public["rootCA"].as_str().map(str::trim), Some(roots[0].trim()), "public.json carries the root istiod wrote");
    let uuid = cp.get_json(&["namespace", "kube-system"]).expect("kube-system")["metadata"]["uid"].clone();
    assert_eq!(public["clusterUUID"], uuid, "the cluster UUID is kube-system's UID");
    assert!(public["authnKeyPub"].as_str().unwrap_or("").contains("BEGIN PUBLIC KEY"), "{public}");
    let rejected: Vec<_> = gw.stats_ending(".update_rejected").into_iter().filter(|(_, v)| *v > 0).collect();
    assert!(rejected.is_empty(), "the gateway accepted deploy/'s EnvoyFilter as istiod rendered it: {rejected:?}");
    let log = istiods[0].log();
    assert!(
        !log.contains("failed to build envoy filter value"),
        "istiod applied every patch of deploy/'s EnvoyFilter: {}",
        log.lines().filter(|l| l.contains("envoyfilter")).collect::<Vec<_>>().join("\n")
    );
    eprintln!("FIGURES edge filter through istiod: {:?}", t_edge.elapsed());
    the_gateway_takes_its_configuration_only_from_the_agent(cp, gw, &mut agent, &public, &edge_ca);

    // 4. Why istiod needs its two switches: on cluster 132, two more
    //    istiods, each without one of them, and a probe gateway on each
    //    (own labels and address, a Gateway with an HTTP server). Vanilla
    //    Envoy 1.40 refuses istio.metadata_exchange (upstream filter on every
    //    cluster, and an HTTP filter in listeners) and istio.alpn (HTTP
    //    filter in listeners). Envoy names only the first unknown extension
    //    of a resource, hence one istiod per switch.
    let t_probe = Instant::now();
    let cp = cps[1];
    let cases: [SwitchCase; 2] = [
        // (name, istiod env, host, CDS error must name, LDS error must name)
        (
            "mx",
            &[("INJECT_ENABLED", "false"), ("PILOT_ENABLE_ALPN_FILTER", "false")],
            5,
            "istio.metadata_exchange",
            "istio.metadata_exchange",
        ),
        ("alpn", &[("INJECT_ENABLED", "false"), ("PILOT_ENABLE_METADATA_EXCHANGE", "false")], 6, "", "istio.alpn"),
    ];
    std::thread::scope(|s| {
        for (name, env, host, cds_want, lds_want) in cases {
            s.spawn(move || {
                let istiod = Istiod::start_with_env(cp, env);
                let ip = cp.sim.ip(host);
                let label = format!("probe-{name}");
                cp.apply(&format!(
                    "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {label}, namespace: istio-system}}\n\
                     spec: {{selector: {{istio: {label}}}, servers: [{{port: {{number: {}, name: http, protocol: HTTP}}, hosts: ['*'], bind: {ip}}}]}}\n",
                    free_port(ip)
                ))
                .expect("probe Gateway");
                let probe = IstioGateway::start(
                    cp,
                    &istiod,
                    GatewayOptions {
                        name: format!("{label}-0"),
                        labels: vec![("istio".into(), label.clone())],
                        host,
                        service: None,
                        wait_ready: false,
                        ..Default::default()
                    },
                );
                let proxy = probe.proxy_id();
                wait_until(&format!("{label}: NACKs in its istiod's syncz"), Duration::from_secs(60), || {
                    let all = istiod.syncz();
                    let e = all
                        .as_array()
                        .and_then(|a| a.iter().find(|e| e["proxy"] == proxy.as_str()).cloned())
                        .ok_or_else(|| "not connected".to_string())?;
                    let err = |t: &str| {
                        let r = e["resources"].as_object().and_then(|r| r.iter().find(|(k, _)| k.ends_with(t)).map(|(_, v)| v.clone()));
                        r.and_then(|v| v["lastError"].as_str().map(str::to_string)).unwrap_or_default()
                    };
                    let (cds, lds) = (err(".Cluster"), err(".Listener"));
                    let cds_ok = if cds_want.is_empty() { cds.is_empty() } else { cds.contains(cds_want) };
                    if cds_ok && lds.contains(lds_want) {
                        Ok(())
                    } else {
                        Err(format!("CDS: {cds:?}; LDS: {lds:?}"))
                    }
                });
                drop(probe);
                let _ = istiod.stop(Duration::from_secs(10));
                cp.kubectl_ok(&["delete", "gateway", &label, "-n", "istio-system"]);
                cp.kubectl_ok(&["delete", "workloadentry", &format!("{label}-0"), "-n", "istio-system"]);
            });
        }
    });
    eprintln!("FIGURES two switch-less istiods + probe gateways: {:?}", t_probe.elapsed());

    // 5. Stopping by PID leaves nothing behind: the gateway's Envoy goes with
    //    pilot-agent, istiod's ports are free again.
    for gw in &mut gateways {
        let envoy = gw.envoy_pid().expect("the gateway's Envoy runs under pilot-agent");
        let cmdline = std::fs::read(format!("/proc/{envoy}/cmdline")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        assert!(cmdline.contains(&gw.dir().display().to_string()), "Envoy's command line names its gateway's directory: {cmdline}");
        gw.kill();
        wait_until("the gateway's Envoy is gone", Duration::from_secs(10), || {
            let alive = std::fs::read_to_string(format!("/proc/{envoy}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false);
            if alive {
                Err(format!("Envoy {envoy} still runs"))
            } else {
                Ok(())
            }
        });
    }
    for istiod in &istiods {
        let pid = istiod.pid().expect("pid");
        let t = Instant::now();
        let exited = istiod.stop(Duration::from_secs(20));
        assert!(exited.is_some(), "istiod of cluster {} exits on SIGTERM", istiod.sim.0);
        eprintln!("FIGURES istiod of cluster {} stopped on SIGTERM in {:?}", istiod.sim.0, t.elapsed());
        assert!(listening(pid).is_empty(), "istiod's ports are closed");
    }
}

/// deploy/ installed as an operator installs it (`multicloud-agent install
/// --metadata-host`, server-side applied), the agent run with the
/// DaemonSet's args and deploy/'s ServiceAccount, and the one thing a
/// loopback test bed cannot have: DNS for the Service name
/// `multicloud-agent-xds.istio-system.svc.cluster.local` that the
/// EnvoyFilter's cluster resolves (STRICT_DNS through the host's resolver).
/// The test replaces that address and port, in the rendered EnvoyFilter and
/// nowhere else, with the agent's loopback xDS address. Returns the agent and
/// the public.json the gateway served.
fn edge_through_istiod(cp: &ControlPlane, istiod: &Istiod, gw: &IstioGateway) -> (Agent, serde_json::Value, String) {
    let sim = cp.sim;
    let host = format!("metadata.cluster-{}.example", sim.0);
    let rendered = install(&[format!("--metadata-host={host}")]);
    let adir = Agent::prepare(sim);
    let xds_port = free_port(sim.ip(hosts::AGENT));
    // The agent's test-bed starter reuses a port written here (tests/src/agent.rs).
    std::fs::write(adir.path().join("xds-port"), xds_port.to_string()).expect("write xds port");
    let service = "address: multicloud-agent-xds.istio-system.svc.cluster.local";
    assert_eq!(rendered.matches(service).count(), 1, "the EnvoyFilter's cluster names the agent's Service once");
    assert_eq!(rendered.matches("port_value: 15011").count(), 1);
    let local = rendered
        .replace(service, &format!("address: {}", sim.ip(hosts::AGENT)))
        .replace("port_value: 15011", &format!("port_value: {xds_port}"));
    cp.apply(&local).expect("install output applies");

    // What a cloud controller writes: the gateway Service's address (the
    // agent publishes it); what an operator provides: the metadata host's
    // certificate (deploy/components/metadata-route).
    cp.set_load_balancer_ip("istio-system", "istio-ingressgateway", gw.ip);
    let dir = tempfile::tempdir().expect("tempdir");
    let edge_ca = create_metadata_tls(cp, sim, &host, dir.path());

    // The agent, as the DaemonSet runs it, with deploy/'s ServiceAccount.
    // The CA's files with the agent's own (a restart reads them again).
    let ca_args = istio::agent_ca_args(cp, istiod, adir.path());
    let agent = start_daemonset_agent(cp, sim, adir, daemonset_args(&rendered), &ca_args);
    assert_eq!(agent.xds_addr().port(), xds_port);

    // The gateway's listener for the Gateway's 443 is on the Service's targetPort.
    let public = gw.wait_public_json(&host, &edge_ca.pem(), Duration::from_secs(60), || format!("agent /xds: {}", agent.xds_view()));
    // The gateway, and only it, is connected to the agent, as the gateway identity.
    let view = agent.xds_view();
    let proxies = view["proxies"].as_array().cloned().unwrap_or_default();
    assert_eq!(proxies.len(), 1, "{view}");
    assert_eq!(proxies[0]["group"], "gateway");
    assert_eq!(proxies[0]["identity"], "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account");
    assert!(proxies[0]["node_id"].as_str().unwrap_or("").starts_with("router~"), "{view}");
    assert_eq!(view["nacks"], 0, "{view}");
    // The module reached the gateway inside its ECDS resource (deploy/'s
    // --filter-module): no file on the gateway's side.
    let dump = gw.config_dump();
    let ecds = dump::ecds(&dump);
    let (_, edge) = ecds.iter().find(|(n, _)| n == "multicloud-edge").expect("the edge filter's ECDS resource on the gateway");
    let code = &edge["typed_config"]["config"]["vm_config"]["code"]["local"];
    assert!(code["inline_bytes"].as_str().is_some_and(|b| b.len() > 100_000), "module inline: {}", code.to_string().len());
    assert!(code.get("filename").is_none(), "no path on the gateway: {code}");
    (agent, public, edge_ca.pem())
}

/// Why the operator guide says to leave istiod's remote credentials
/// controller on (and what the API guard does instead): its only switch,
/// `PILOT_ENABLE_REMOTE_CREDENTIALS_CONTROLLER=false` (istio/istio#59874, in
/// 1.31 and both snapshots here), crashes istiod as soon as a remote cluster
/// is added: the switch leaves a nil controller whose `HasSynced` istiod
/// still calls. Shown on both snapshots, with a remote secret that names
/// the cluster's own API server (cluster 139; no peer is needed). When an
/// upstream fix lands in a pinned snapshot, this test fails, and the guide
/// and the support table must change with it.
#[test]
fn turning_the_remote_credentials_controller_off_crashes_istiod_when_a_remote_is_added() {
    use multicloud_e2e::paths::IstioBuild;
    let cp = ControlPlane::shared(SimCluster(139));
    let kubeconfig = std::fs::read_to_string(cp.admin_kubeconfig()).expect("admin kubeconfig");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-self", "namespace": "istio-system",
                     "labels": {"istio/multiCluster": "true"}, "annotations": {"networking.istio.io/cluster": "cluster-139-self"}},
        "stringData": {"cluster-139-self": kubeconfig},
    });
    let mut env: Vec<(&str, &str)> = istio::ISTIOD_ENV.to_vec();
    env.push(("PILOT_ENABLE_REMOTE_CREDENTIALS_CONTROLLER", "false"));
    for build in [IstioBuild::current(), IstioBuild::older()] {
        let istiod = Istiod::start_build(cp, &build, &env, false, false);
        cp.apply(&secret.to_string()).expect("the remote secret");
        let status =
            wait_until(&format!("istiod ({}) to exit once a remote cluster is added", build.label), Duration::from_secs(60), || {
                istiod.exited().ok_or_else(|| "still running".to_string())
            });
        let log = istiod.log();
        assert!(!status.success(), "{}: istiod exited with {status}", build.label);
        assert!(
            log.contains("nil pointer dereference") && log.contains("HasSynced"),
            "{}: the crash is the nil credentials controller's HasSynced: {}",
            build.label,
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        eprintln!(
            "FIGURES {}: PILOT_ENABLE_REMOTE_CREDENTIALS_CONTROLLER=false: istiod exited ({status}) when a remote cluster was added",
            build.label
        );
        cp.kubectl_ok(&["delete", "secret", "istio-remote-secret-self", "-n", "istio-system"]);
    }
}

/// The gateway verifies the agent (deploy/'s EnvoyFilter: chained to the
/// cluster's Istio root, `ROOTCA`, with the agent's SPIFFE ID). The agent
/// serves an istiod-signed certificate for its own ServiceAccount
/// (`--istio-ca-address`). An impostor at the agent's address, with a
/// certificate from the same istiod but of another identity (the gateway's
/// own), and willing to serve the gateway (it trusts the same root), gets no
/// connection: its handshakes with the gateway fail, the gateway keeps its
/// configuration, and the real agent, back, is connected again.
fn the_gateway_takes_its_configuration_only_from_the_agent(
    cp: &ControlPlane,
    gw: &IstioGateway,
    agent: &mut Agent,
    public: &serde_json::Value,
    edge_ca: &str,
) {
    assert!(
        agent.log().contains("the xDS port serves an istiod-signed certificate for the agent's identity"),
        "the agent got its certificate from istiod: {}",
        agent.log().lines().filter(|l| l.contains("istiod")).collect::<Vec<_>>().join("\n")
    );
    let connected = |a: &Agent| a.xds_view()["proxies"].as_array().is_some_and(|ps| ps.iter().any(|p| p["group"] == "gateway"));
    assert!(connected(agent), "the gateway is connected to the agent: {}", agent.xds_view());
    let port = agent.xds_addr().port();
    agent.kill();

    // The impostor: the agent binary, standalone, claiming another cluster,
    // at the agent's address, serving the gateway's own istiod-signed
    // certificate (right root, wrong identity).
    let sim = cp.sim;
    let dir = Agent::prepare(sim);
    std::fs::write(dir.path().join("xds-port"), port.to_string()).expect("xds port");
    let cert = dir.path().join("impostor.crt");
    let key = dir.path().join("impostor.key");
    std::fs::write(&cert, gw.workload_cert_pem().expect("the gateway's certificate")).expect("write");
    std::fs::write(&key, gw.workload_key_pem().expect("the gateway's key")).expect("write");
    let mut standalone: serde_json::Value = serde_json::from_str(&multicloud_e2e::mesh::standalone_file(
        sim,
        &multicloud_e2e::fixtures::ClusterIdentity::generate("impostor"),
        &[],
    ))
    .expect("json");
    standalone["cluster"]["rootCA"] = istio::published_root(cp, Duration::from_secs(10)).into();
    let impostor = Agent::start(
        dir,
        AgentOptions {
            cluster: sim,
            standalone: standalone.to_string(),
            ecds_file: std::env::temp_dir().join(format!("impostor-{}.pb", sim.0)),
            refresh_seconds: 1,
            backoff_base_ms: 200,
            backoff_cap_ms: 1000,
            workload_cert: None,
            api_proxy_credential: None,
            extra_args: vec!["--xds-cert".into(), cert.display().to_string(), "--xds-key".into(), key.display().to_string()],
            kubernetes: None,
        },
    );
    assert_eq!(impostor.xds_addr().port(), port);
    wait_until("the gateway to refuse the impostor's certificate (its handshakes fail)", Duration::from_secs(60), || {
        let m = impostor.metrics();
        let failed: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("multicloud_agent_xds_refusals_total") && l.contains("handshake_failed") && !l.ends_with(" 0"))
            .collect();
        if failed.is_empty() {
            Err(format!("no failed handshake yet: {}", m.lines().filter(|l| l.contains("refusals")).collect::<Vec<_>>().join("; ")))
        } else {
            Ok(())
        }
    });
    assert!(!connected(&impostor), "the gateway never opened a stream to the impostor: {}", impostor.xds_view());
    let host = format!("metadata.cluster-{}.example", sim.0);
    let now = gw.wait_public_json(&host, edge_ca, Duration::from_secs(10), String::new);
    assert_eq!(now["clusterUUID"], public["clusterUUID"], "the gateway keeps the agent's configuration");
    drop(impostor);

    // The real agent, back at its address: connected again.
    agent.restart();
    wait_until("the gateway to reconnect to the real agent", Duration::from_secs(60), || {
        if connected(agent) {
            Ok(())
        } else {
            Err(format!("{}", agent.xds_view()))
        }
    });
}
