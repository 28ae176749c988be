//! Tier: real Kubernetes. `deploy/` applied to a real kube-apiserver (and etcd) with
//! server-side apply, as an operator applies it: the kustomize base, every
//! overlay, and `multicloud-agent install` with default and non-default
//! flags. Istio's and the Prometheus Operator's CRDs are registered first,
//! from the pinned upstream modules (`scripts/tools.sh crds`). The server's
//! own validation (built-in schemas, the CRDs' OpenAPI schemas, strict field
//! validation) refuses broken manifests, and the test says which field.
//!
//! Control plane: cluster 121 (127.0.121.10), shared by the tests here.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::paths::{self, workspace_root};
use multicloud_e2e::SimCluster;

const OVERLAYS: &[&str] = &["deploy/base", "deploy/overlays/default", "deploy/overlays/monitoring", "deploy/overlays/wasmplugin"];

/// The control plane with Istio's, the Prometheus Operator's and the
/// project's CRDs registered and Established, and istio-system created.
fn cluster() -> &'static ControlPlane {
    let cp = ControlPlane::shared(SimCluster(121));
    cp.install_prerequisites();
    cp
}

fn kustomize(dir: &str) -> String {
    let out = std::process::Command::new(paths::kubectl()).arg("kustomize").arg(workspace_root().join(dir)).output().expect("kubectl");
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn install(args: &[&str]) -> String {
    let out = std::process::Command::new(paths::agent()).arg("install").args(args).output().expect("multicloud-agent install");
    assert!(out.status.success(), "install {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn objects(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml).unwrap().into_iter().filter(|v| !v.is_null()).collect()
}

/// Applies `yaml` (server-side, strict field validation) and checks that
/// every object in it is then on the server.
fn apply_and_find_all(cp: &ControlPlane, what: &str, yaml: &str) {
    if let Err(e) = cp.apply(yaml) {
        panic!("{what}: the API server refused it:\n{e}");
    }
    let objs = objects(yaml);
    assert!(!objs.is_empty(), "{what}: nothing rendered");
    for o in objs {
        let kind = o["kind"].as_str().unwrap();
        let group = o["apiVersion"].as_str().unwrap().split_once('/').map(|(g, _)| g).unwrap_or("");
        let resource = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let name = o["metadata"]["name"].as_str().unwrap();
        let mut args = vec![resource.as_str(), name];
        let ns = o["metadata"]["namespace"].as_str();
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let got = cp.get_json(&args).unwrap_or_else(|| panic!("{what}: {resource} {name} was applied but is not on the server"));
        // Server-side apply records the applier as a field manager.
        let managers = got["metadata"]["managedFields"].to_string();
        assert!(managers.contains("test-admin"), "{what}: {resource} {name}: applied fields not owned by the applier: {managers}");
    }
}

#[test]
fn every_overlay_and_the_install_output_apply_to_a_real_api_server() {
    let cp = cluster();
    for dir in OVERLAYS {
        apply_and_find_all(cp, dir, &kustomize(dir));
    }
    let non_default = [
        "--image=registry.example/multicloud/agent:9.9.9@sha256:4f0c7a4a9cb5f6e2b3a8d1e0c9b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9",
        "--filter-image=registry.example/multicloud/edge-filter@sha256:0b5d8c6e4a2f1e3d5c7b9a8f6e4d2c1b3a5f7e9d8c6b4a2f1e3d5c7b9a8f6e4d",
        "--gateway-selector=app=multicloud-edge,istio.io/rev=stable",
        "--metadata-host=metadata.cluster-a.example.net",
        "--api-proxy-host=api.cluster-a.example.net:443",
        "--advertise=203.0.113.10:15443",
        "--export-label=example.net/federate",
        "--namespace=multicloud",
        "--monitoring",
        "--wasmplugin",
    ];
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: multicloud}\n").expect("namespace multicloud");
    apply_and_find_all(cp, "install (defaults)", &install(&[]));
    apply_and_find_all(cp, "install (non-default flags)", &install(&non_default));
    // The EnvoyFilter attachment with the API proxy's route (not rendered with --wasmplugin).
    let envoyfilter: Vec<&str> =
        non_default.iter().copied().filter(|f| !f.starts_with("--wasmplugin") && !f.starts_with("--filter-image")).collect();
    let out = install(&envoyfilter);
    assert!(out.contains("name: multicloud-api\n"), "the API proxy's route is rendered");
    apply_and_find_all(cp, "install (non-default flags, EnvoyFilter, API proxy route)", &out);
}

/// What the server refuses, and that its message names the field.
#[test]
fn the_server_refuses_a_wrong_field_or_type_and_names_it() {
    let cp = cluster();
    let base = kustomize("deploy/base");
    let daemonset = objects(&base).into_iter().find(|o| o["kind"] == "DaemonSet").expect("the agent DaemonSet");

    let mut wrong_type = daemonset.clone();
    wrong_type["metadata"]["name"] = "broken-type".into();
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http".into();
    let mut unknown_field = daemonset.clone();
    unknown_field["metadata"]["name"] = "broken-field".into();
    unknown_field["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always".into();
    let envoy_filter = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: broken, namespace: istio-system}\n\
                        spec: {priority: high, configPatches: []}\n";
    let wasm_plugin = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: broken, namespace: istio-system}\n\
                       spec: {url: 'oci://x/y:1', phase: EARLY}\n";
    let rule = "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: broken, namespace: istio-system}\n\
                spec: {groups: [{name: g, rules: [{alert: A, expr: up == 0, for: 5 minutes}]}]}\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("a DaemonSet port that is not a number", serde_json::to_string(&wrong_type).unwrap(), "containerPort"),
        ("a DaemonSet with an unknown field (strict field validation)", serde_json::to_string(&unknown_field).unwrap(), "imagePullPolice"),
        ("an EnvoyFilter whose priority is not an integer (Istio's CRD schema)", envoy_filter.into(), "spec.priority"),
        ("a WasmPlugin in a phase Istio does not have (Istio's CRD schema)", wasm_plugin.into(), "spec.phase"),
        ("a PrometheusRule whose `for` is no duration (the operator's CRD schema)", rule.into(), "for"),
    ];
    for (what, yaml, field) in cases {
        let err = cp.apply(&yaml).expect_err(&format!("{what}: the server accepted it"));
        assert!(err.contains(field), "{what}: the refusal does not name {field}: {err}");
        eprintln!("refused as it should be, {what}: {}", err.trim());
    }
}

/// The project's CRD: an `IstioMulticloud` with an invalid spec is refused
/// by the CRD's schema, and the message names the field.
#[test]
fn an_invalid_istiomulticloud_is_refused_by_the_crd_schema() {
    let cp = cluster();
    let cases = [
        ("not https", "spec: {metadataEndpoint: 'http://cluster-b.example/metadata'}", "spec.metadataEndpoint"),
        ("no endpoint", "spec: {enableIngressGateway: true}", "spec.metadataEndpoint"),
        ("endpoint not a string", "spec: {metadataEndpoint: 42}", "spec.metadataEndpoint"),
        ("an unknown field", "spec: {metadataEndpoint: 'https://b.example/metadata', metadataEndpiont: x}", "metadataEndpiont"),
        (
            "insecureSkipVerify not a boolean",
            "spec: {metadataEndpoint: 'https://b.example/metadata', metadata: {insecureSkipVerify: maybe}}",
            "insecureSkipVerify",
        ),
    ];
    for (what, spec, field) in cases {
        let yaml = format!("apiVersion: istio-multicloud.dev/v1alpha1\nkind: IstioMulticloud\nmetadata: {{name: broken}}\n{spec}\n");
        let err = cp.apply(&yaml).expect_err(&format!("{what}: the server accepted it"));
        assert!(err.contains(field), "{what}: the refusal does not name {field}: {err}");
        eprintln!("refused as it should be, {what}: {}", err.trim());
    }
    let example = std::fs::read_to_string(workspace_root().join("deploy/examples/istiomulticloud.yaml")).unwrap();
    cp.apply(&example).expect("the example object is accepted");
}
