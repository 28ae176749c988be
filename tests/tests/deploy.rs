//! The manifests in deploy/ render with the real kustomize (kubectl 1.32 /
//! kustomize 5.5) and say what the test bed does in Envoy: the edge filter
//! disabled in the chain, enabled per route, configured by ECDS.

use multicloud_e2e::paths::workspace_root;

#[test]
fn the_base_renders_with_kubectl_kustomize_and_wires_the_filter_like_the_test_bed() {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(workspace_root().join("deploy/base"))
        .output()
        .expect("kubectl (preinstalled on the project's machines) must be on PATH");
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("kind: EnvoyFilter"));
    assert!(text.contains("name: multicloud-edge"));
    assert!(text.contains("disabled: true"), "the filter must be disabled in the chain");
    assert!(text.contains("type.googleapis.com/envoy.config.route.v3.FilterConfig"), "enabled per route");
    assert!(text.contains(multicloud_proto::edge_filter::WASM_FILTER_TYPE_URL), "configured by ECDS");

    // The API proxy's credential: read-only, and never secrets.
    assert!(text.contains("name: istio-multicloud-api-proxy-reader"));
    let role = text.split("kind: ClusterRole\n").nth(1).expect("a ClusterRole");
    let role = role.split("\n---").next().unwrap();
    let mut in_verbs = false;
    for line in role.lines() {
        if line.trim_start().starts_with("verbs:") {
            in_verbs = true;
            continue;
        }
        if in_verbs && line.trim_start().starts_with("- ") && line.starts_with("  ") && !line.starts_with("- ") {
            let verb = line.trim().trim_start_matches("- ").trim_matches('\'');
            assert!(["get", "list", "watch"].contains(&verb), "the API proxy role must be read-only, found verb {verb}");
        } else {
            in_verbs = false;
        }
    }
    assert!(!role.contains("secrets"), "the API proxy role must not read secrets: {role}");
}
