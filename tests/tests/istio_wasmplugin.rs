//! Tier: real Istio. deploy/'s WasmPlugin variant under a real istiod
//! (tests/src/istio.rs), cluster 133 (loopback only: 127.0.133.x).
//!
//! `multicloud-agent install --wasmplugin --filter-image <ref@digest>` is
//! server-side applied as rendered; the filter image `make images` built is
//! served by a registry on 127.0.133.12 (tests/src/registry.rs); the agent
//! runs in Kubernetes mode with the DaemonSet's args and writes the
//! WasmPlugin's `spec.pluginConfig`; istiod turns the WasmPlugin into ECDS
//! for the pilot-agent-run gateway, whose istio-agent pulls the module by
//! digest from the registry. No file is placed on the gateway by the test,
//! and the gateway's Envoy never talks to the agent. Settings: docs/istio.md,
//! "The WasmPlugin variant".

use multicloud_e2e::agent::Agent;
use multicloud_e2e::fixtures::free_port;
use multicloud_e2e::istio::{GatewayOptions, IstioGateway, Istiod};
use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::kube_mesh::{create_metadata_tls, daemonset_args, install, start_daemonset_agent};
use multicloud_e2e::{dump, hosts, istio, paths, registry, wait_until, SimCluster};
use sha2::Digest as _;
use std::time::{Duration, Instant};

/// istio-agent's module cache (pkg/config/constants.IstioDataDir).
const ISTIO_DATA_DIR: &str = "/var/lib/istio/data";

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Every file under `dir` (relative paths).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The WasmPlugin variant works under a real istiod with nothing placed by
/// hand: istio-agent pulls the built filter image by digest from the
/// loopback registry, istiod delivers the agent's `pluginConfig`, and the
/// gateway serves public.json with kube-system's UID and istiod's root.
#[test]
fn wasmplugin_variant_pulls_the_filter_by_digest_under_istiod() {
    let t0 = Instant::now();
    let sim = SimCluster(133);
    let cp = ControlPlane::shared(sim);
    let istiod = Istiod::shared(cp);
    let root = istio::published_root(cp, Duration::from_secs(60));

    // The filter image, by digest, on the cluster's loopback range.
    let served = registry::serve_filter_image(sim.ip(hosts::REGISTRY));
    let made = std::fs::read_to_string(paths::images().join("filter.digest")).expect("filter.digest");
    assert_eq!(served.digest, made.trim(), "the registry serves the image make images built");

    // The gateway (istio: ingressgateway), as in istio_tier. pilot-agent's
    // environment is the tier's; nothing is added for the registry (plain
    // HTTP on a loopback address: Istio's fetcher falls back to HTTP).
    // istio-agent keeps pulled modules in /var/lib/istio/data, a constant
    // (pkg/config/constants.IstioDataDir; a pod mounts its `istio-data`
    // emptyDir there) and creates only a directory per module inside it
    // (os.Mkdir): without it the pull fails with `mkdir
    // /var/lib/istio/data/<hash>: no such file or directory`, istio-agent
    // puts an allow-all RBAC filter in the module's place (FAIL_OPEN) and
    // /metadata/ gets the VirtualService's answer. The test bed makes the
    // empty directory, as the pod's volume would be; it places no file.
    std::fs::create_dir_all(ISTIO_DATA_DIR).expect("mkdir /var/lib/istio/data");
    let any = std::net::Ipv4Addr::UNSPECIFIED;
    let ports = vec![("https".into(), 443, free_port(any)), ("tls".into(), 15443, free_port(any))];
    let gw = IstioGateway::start(cp, istiod, GatewayOptions { service_ports: ports, ..Default::default() });
    let gw_files_before = files_under(gw.dir());

    // deploy/ as rendered by install, applied server-side, unchanged.
    let host = format!("metadata.cluster-{}.example", sim.0);
    let rendered = install(&["--wasmplugin".into(), format!("--filter-image={}", served.reference), format!("--metadata-host={host}")]);
    assert!(!rendered.contains("kind: EnvoyFilter"), "the WasmPlugin replaces the EnvoyFilter");
    let urls: Vec<String> = serde_saphyr::from_multiple::<serde_json::Value>(&rendered)
        .expect("install's output is YAML")
        .into_iter()
        .filter(|o| o["kind"] == "WasmPlugin")
        .map(|o| o["spec"]["url"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(urls, [served.wasmplugin_url()], "the WasmPlugin's url is the image by digest");
    cp.apply(&rendered).expect("install --wasmplugin output applies");
    let wp = cp.get_json(&["wasmplugin", "multicloud-edge", "-n", "istio-system"]).expect("the WasmPlugin");
    assert_eq!(wp["spec"]["url"], served.wasmplugin_url().as_str());

    // What a cloud controller writes and an operator provides (as istio_tier).
    cp.kubectl_ok(&[
        "patch",
        "service",
        "istio-ingressgateway",
        "-n",
        "istio-system",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"loadBalancer\":{{\"ingress\":[{{\"ip\":\"{}\"}}]}}}}}}", gw.ip),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let edge_ca = create_metadata_tls(cp, sim, &host, dir.path());

    // Before the agent writes anything: the gateway has pulled the module and
    // loaded it with install's empty pluginConfig, which the filter takes as
    // "not configured yet" (checked for NACKs below): the metadata route
    // answers 503 EdgeUnavailable, from the filter.
    let https = gw.opts.service_ports.iter().find(|(n, _, _)| n == "https").map(|(_, _, t)| *t).expect("https port");
    let at = std::net::SocketAddr::from((gw.ip, https));
    wait_until("the gateway to load the filter with install's empty pluginConfig", Duration::from_secs(120), || {
        match multicloud_e2e::mtls::get_from(at, &host, Some(&edge_ca.pem()), None, &host, "/metadata/public/public.json", &[]) {
            multicloud_e2e::mtls::Outcome::Http(503, body) if body.contains("EdgeUnavailable") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // The agent, as the DaemonSet runs it (its args include
    // --wasmplugin=multicloud-edge), with deploy/'s ServiceAccount.
    let args = daemonset_args(&rendered);
    assert!(args.iter().any(|a| a == "--wasmplugin=multicloud-edge"), "{args:?}");
    let adir = Agent::prepare(sim);
    let t_agent = Instant::now();
    let agent = start_daemonset_agent(cp, sim, adir, args, &[]);

    // The agent wrote the edge configuration into the WasmPlugin.
    let plugin_config = wait_until("the agent writes spec.pluginConfig", Duration::from_secs(60), || {
        let w = cp.get_json(&["wasmplugin", "multicloud-edge", "-n", "istio-system"]).ok_or("no WasmPlugin")?;
        let pc = w["spec"]["pluginConfig"].clone();
        if pc.as_object().is_some_and(|o| !o.is_empty()) {
            Ok(pc)
        } else {
            Err(format!("{pc}"))
        }
    });

    // public.json through the gateway: the filter pulled from the registry,
    // configured by istiod from the WasmPlugin.
    let public = gw.wait_public_json(&host, &edge_ca.pem(), Duration::from_secs(90), || format!("syncz: {}", istiod.syncz()));
    let t_public = t_agent.elapsed();
    assert_eq!(public["rootCA"].as_str().map(str::trim), Some(root.trim()), "public.json carries the root istiod wrote");
    let uuid = cp.get_json(&["namespace", "kube-system"]).expect("kube-system")["metadata"]["uid"].clone();
    assert_eq!(public["clusterUUID"], uuid, "the cluster UUID is kube-system's UID");
    assert_eq!(plugin_config["public"]["clusterUUID"], uuid, "the same configuration the agent wrote: {plugin_config}");

    // The registry served the image by digest: the manifest by its digest
    // and the module's blob (crane logs every request it serves).
    let (_, manifest) = served.registry.manifest(&served.repo, &served.digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest json");
    let layer = manifest["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm"))
        .and_then(|l| l["digest"].as_str())
        .expect("the module layer")
        .to_string();
    let log = served.registry.log();
    let manifest_get = format!("GET /v2/{}/manifests/{}", served.repo, served.digest);
    let blob_get = format!("GET /v2/{}/blobs/{layer}", served.repo);
    // The test's own manifest GET above is one; istio-agent's are before it.
    assert!(log.matches(&manifest_get).count() >= 2, "istio-agent fetched the manifest by digest:\n{log}");
    assert!(log.contains(&blob_get), "istio-agent fetched the module's blob:\n{log}");
    assert!(!log.contains(&format!("GET /v2/{}/manifests/{}", served.repo, env!("CARGO_PKG_VERSION"))), "nothing fetched by tag:\n{log}");

    // What the gateway's Envoy loads: istiod's ECDS resource for the
    // WasmPlugin, rewritten by istio-agent to the module file it pulled
    // (istio-agent's cache, /var/lib/istio/data), byte for byte the blob.
    let ecds = dump::ecds(&gw.config_dump());
    let (name, edge) = ecds
        .iter()
        .find(|(n, _)| n.contains("istio-system.multicloud-edge"))
        .unwrap_or_else(|| panic!("the WasmPlugin's ECDS resource on the gateway: {:?}", ecds));
    let vm = &edge["typed_config"]["config"]["vm_config"];
    let file = vm["code"]["local"]["filename"].as_str().unwrap_or_else(|| panic!("{name}: a local module file: {vm}")).to_string();
    assert!(file.starts_with(&format!("{ISTIO_DATA_DIR}/")), "istio-agent's module cache: {file}");
    let module = std::fs::read(&file).expect("the module istio-agent wrote");
    assert_eq!(format!("sha256:{}", sha256_hex(&module)), layer, "the file Envoy loads is the blob the registry served");
    let built = std::fs::read(paths::filter_wasm()).ok();
    eprintln!("module {file}: {} bytes, same as target/filter: {:?}", module.len(), built.map(|b| b == module));
    let cfg = edge["typed_config"]["config"]["configuration"].to_string();
    assert!(cfg.contains(uuid.as_str().expect("uid")), "the filter's configuration is the agent's pluginConfig: {cfg}");

    // No file placed on the gateway by the test: its directory holds what it
    // held before the install (plus what pilot-agent and Envoy write), and
    // no module.
    let gw_files = files_under(gw.dir());
    for f in &gw_files {
        assert!(!f.ends_with(".wasm"), "a module in the gateway's directory: {f}");
    }
    for f in &gw_files_before {
        assert!(gw_files.contains(f), "{f}");
    }
    eprintln!("gateway directory: {gw_files:?}");

    // No NACK: istiod's syncz (every type sent == acked, ECDS included, no
    // lastError), Envoy's counters, istiod's reject metric.
    let proxy = gw.proxy_id();
    let entry = istiod.wait_synced(
        &format!("istiod's syncz shows {proxy} in sync"),
        &proxy,
        &["Cluster", "Listener", "RouteConfiguration", "TypedExtensionConfig"],
        Duration::from_secs(30),
    );
    for (t, r) in entry["resources"].as_object().expect("resources") {
        assert!(r["lastError"].as_str().unwrap_or("").is_empty(), "istiod saw a NACK of {t}: {r}");
    }
    let rejected: Vec<_> = gw.stats_ending(".update_rejected").into_iter().filter(|(_, v)| *v > 0).collect();
    assert!(rejected.is_empty(), "Envoy rejected config: {rejected:?}");
    // Zero NACKs, the first update included: install creates the WasmPlugin
    // with `pluginConfig: {}`, and a gateway that gets it before the agent's
    // write loads the module with that empty configuration, which the filter
    // takes as "not configured yet" (503 on its documents) instead of
    // refusing it.
    let metrics = istiod.metrics();
    let rejects: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pilot_total_xds_rejects") && !l.ends_with(" 0")).collect();
    let gw_log = gw.log();
    let refusals: Vec<&str> = gw_log.lines().filter(|l| l.contains(" rejected: ")).collect();
    assert!(rejects.is_empty(), "istiod counted rejects: {rejects:?}");
    assert!(refusals.is_empty(), "Envoy refused an update: {refusals:?}");
    eprintln!("NACKS istiod {rejects:?}; Envoy {}", refusals.len());

    // The gateway never connected to the agent's xDS (the WasmPlugin path
    // needs no cluster of ours on the gateway).
    let view = agent.xds_view();
    assert_eq!(view["proxies"].as_array().map(Vec::len).unwrap_or(0), 0, "{view}");
    // istio-agent's cache directory for this module is named after the URL
    // (the registry's port changes every run): remove it, or each run leaves
    // one behind in /var/lib/istio/data.
    let module_dir = std::path::Path::new(&file).parent().expect("module directory");
    assert_ne!(module_dir, std::path::Path::new(ISTIO_DATA_DIR));
    std::fs::remove_dir_all(module_dir).expect("remove the module's cache directory");
    eprintln!(
        "FIGURES wasmplugin (cluster {}): agent start to public.json {t_public:?}; whole test {:?}; ECDS resource {name}",
        sim.0,
        t0.elapsed()
    );
}
