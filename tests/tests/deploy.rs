//! Tier: offline (the pinned kustomize and published schemas; no API server: tests/tests/kube_deploy.rs applies the same objects to a real one).
//!
//! The manifests in deploy/ render with the real kustomize (the pinned kubectl
//! from scripts/tools.sh) and say what the test bed does in Envoy: the edge filter
//! disabled in the chain, enabled per route, configured by ECDS. Every
//! object of the base, the overlays and `multicloud-agent install` validates
//! against its kind's schema (scripts/validate_manifests.py), and `install`
//! with default values is what kustomize renders.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::paths::workspace_root;

#[test]
fn the_base_renders_with_kubectl_kustomize_and_wires_the_filter_like_the_test_bed() {
    let out = std::process::Command::new(multicloud_e2e::paths::kubectl())
        .args(["kustomize"])
        .arg(workspace_root().join("deploy/base"))
        .output()
        .expect("kubectl (scripts/tools.sh builds it; scripts/test.sh exports MULTICLOUD_KUBECTL)");
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("kind: EnvoyFilter"));
    assert!(text.contains("name: multicloud-edge"));
    assert!(text.contains("disabled: true"), "the filter must be disabled in the chain");
    assert!(text.contains("type.googleapis.com/envoy.config.route.v3.FilterConfig"), "enabled per route");
    assert!(text.contains(multicloud_proto::edge_filter::WASM_FILTER_TYPE_URL), "configured by ECDS");

    // The API proxy's credential: read-only, and never secrets.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "istio-multicloud-api-proxy-reader")
        .expect("the API proxy's ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(["get", "list", "watch"].contains(&verb.as_str().unwrap()), "the API proxy role must be read-only: {rule}");
        }
        assert!(!rule["resources"].to_string().contains("secrets"), "the API proxy role must not read secrets: {rule}");
    }

    // The agent's xDS port is mutual TLS: the gateway's cluster to it
    // presents Istio's workload certificate (SDS `default` from the
    // bootstrap's `sds-grpc`), and the agent serves the gateway's resources
    // to the gateway's identity only.
    let ef = docs.iter().find(|d| d["kind"] == "EnvoyFilter").expect("the EnvoyFilter");
    let cluster = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "CLUSTER" && p["patch"]["value"]["name"] == "multicloud-agent")
        .expect("the cluster to the agent");
    let tls = &cluster["patch"]["value"]["transport_socket"]["typed_config"];
    assert_eq!(tls["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
    let sds = &tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0];
    assert_eq!(sds["name"], "default");
    assert_eq!(sds["sds_config"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]["cluster_name"], "sds-grpc");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("the agent DaemonSet");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--xds-gateway-identity=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"),
        "{args}"
    );
}

fn kustomize(dir: &str) -> String {
    let out = std::process::Command::new(multicloud_e2e::paths::kubectl())
        .args(["kustomize"])
        .arg(workspace_root().join(dir))
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rendered() -> String {
    kustomize("deploy/base")
}

fn parse(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text).unwrap().into_iter().filter(|v| !v.is_null()).collect()
}

const OVERLAYS: &[&str] = &["deploy/base", "deploy/overlays/default", "deploy/overlays/monitoring", "deploy/overlays/wasmplugin"];

/// Every overlay directory under deploy/overlays is in [`OVERLAYS`].
#[test]
fn every_overlay_is_tested() {
    for e in std::fs::read_dir(workspace_root().join("deploy/overlays")).unwrap() {
        let name = format!("deploy/overlays/{}", e.unwrap().file_name().to_string_lossy());
        assert!(OVERLAYS.contains(&name.as_str()), "{name} is not rendered and validated by this test");
    }
}

/// scripts/validate_manifests.py on `text`: its exit code and one verdict per object.
fn validate(text: &str) -> (i32, Vec<serde_json::Value>) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(multicloud_e2e::paths::python())
        .arg(workspace_root().join("scripts/validate_manifests.py"))
        .arg("1.32.0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python from .venv (run scripts/bootstrap.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "scripts/validate_manifests.py could not run the checks (run scripts/bootstrap.sh: it installs .venv and .schemas): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn assert_all_valid(what: &str, text: &str) -> Vec<serde_json::Value> {
    let (code, lines) = validate(text);
    for l in &lines {
        assert!(l["valid"] == true, "{what}: invalid: {l}");
    }
    assert_eq!(code, 0, "{what}: {lines:?}");
    assert_eq!(lines.len(), parse(text).len(), "{what}: one verdict per object");
    lines
}

/// `multicloud-agent install ARGS`, through the library (the binary's own
/// command line is tested in [`the_install_command_line`]).
fn install(args: &[&str]) -> String {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        install: multicloud_agent::cli::install::InstallArgs,
    }
    let cli = Cli::try_parse_from(std::iter::once("install").chain(args.iter().copied())).unwrap();
    multicloud_agent::cli::install::render(&cli.install).unwrap()
}

const NON_DEFAULT: &[&str] = &[
    "--image=registry.example/multicloud/agent:9.9.9@sha256:4f0c7a4a9cb5f6e2b3a8d1e0c9b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9",
    "--gateway-selector=app=multicloud-edge,istio.io/rev=stable",
    "--metadata-host=metadata.cluster-a.example.net",
    "--api-proxy-host=api.cluster-a.example.net:443",
    "--advertise=203.0.113.10:15443",
    "--advertise=edge.cluster-a.example.net:443",
    "--export-label=example.net/federate",
    "--namespace=multicloud",
];

/// Every object of the base, of every overlay and of `install` (default and
/// non-default values, each component) validates against the schema of its
/// kind: Kubernetes 1.32 (kubernetes-validate, strict), the project's CRD,
/// Istio's and prometheus-operator's published schemas.
#[test]
fn every_rendered_object_validates() {
    let mut schemas = std::collections::BTreeSet::new();
    let example = std::fs::read_to_string(workspace_root().join("deploy/examples/istiomulticloud.yaml")).unwrap();
    for dir in OVERLAYS {
        for l in assert_all_valid(dir, &format!("{}---\n{example}", kustomize(dir))) {
            schemas.insert(l["schema"].as_str().unwrap().to_string());
        }
    }
    let mut with_wasm = NON_DEFAULT.to_vec();
    with_wasm.push("--wasmplugin");
    with_wasm.push("--filter-image=127.0.0.1:5000/istio-multicloud/edge-filter@sha256:0b5d8c6e4a2f1e3d5c7b9a8f6e4d2c1b3a5f7e9d8c6b4a2f1e3d5c7b9a8f6e4d");
    let mut with_monitoring = NON_DEFAULT.to_vec();
    with_monitoring.push("--monitoring");
    for args in [&[][..], &["--monitoring", "--wasmplugin"][..], NON_DEFAULT, &with_wasm, &with_monitoring] {
        for l in assert_all_valid(&format!("install {args:?}"), &install(args)) {
            schemas.insert(l["schema"].as_str().unwrap().to_string());
        }
    }
    let want = ["kubernetes-validate 1.32.0", "deploy/crd", "@kubernetes-models/istio", "@kubernetes-models/prometheus-operator"];
    assert_eq!(schemas, want.iter().map(|s| s.to_string()).collect(), "every schema source was used");
}

/// One broken object per schema source is rejected, naming the field; so is
/// an object of a kind no schema covers.
#[test]
fn an_invalid_object_of_each_schema_source_is_rejected() {
    let cases = [
        // Kubernetes, strict: an unknown field.
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}], internalTraficPolicy: Local}\n", "internalTraficPolicy"),
        // The project's CRD: a wrong type.
        ("apiVersion: istio-multicloud.dev/v1alpha1\nkind: IstioMulticloud\nmetadata: {name: b}\nspec: {metadataEndpoint: 42}\n", "metadataEndpoint"),
        // Istio: an EnvoyFilter whose priority is not an integer.
        ("apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f}\nspec: {priority: high, configPatches: []}\n", "/spec/priority"),
        // Istio: a WasmPlugin in a phase Istio does not have.
        ("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w}\nspec: {url: 'oci://x/y:1', phase: EARLY}\n", "/spec/phase"),
        // prometheus-operator: a rule whose `for` is not a duration string.
        (
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\nspec: {groups: [{name: g, rules: [{alert: A, expr: up == 0, for: 5}]}]}\n",
            "/spec/groups/0/rules/0/for",
        ),
        // prometheus-operator: a ServiceMonitor scrape interval that is no duration.
        (
            "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: m}\nspec: {selector: {}, endpoints: [{port: http, interval: 30 seconds}]}\n",
            "/spec/endpoints/0/interval",
        ),
        // No schema at all.
        ("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n", "no schema"),
    ];
    for (doc, field) in cases {
        let (code, lines) = validate(doc);
        assert_eq!(code, 1, "{doc}: {lines:?}");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["valid"], false, "{doc}");
        assert!(lines[0]["errors"].to_string().contains(field), "{doc}: {}", lines[0]);
    }
    // Valid objects next to an invalid one keep their own verdicts.
    let (code, lines) = validate(&format!("{}---\n{}", kustomize("deploy/overlays/monitoring"), cases[4].0));
    assert_eq!(code, 1);
    assert_eq!(lines.iter().filter(|l| l["valid"] == false).count(), 1, "{lines:?}");
}

/// Numbers as kustomize writes them (`0.0` becomes `0`), so that objects compare as data.
fn normalize(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalize),
        serde_json::Value::Object(o) => o.values_mut().for_each(normalize),
        _ => {}
    }
}

fn as_set(text: &str) -> Vec<String> {
    let mut v: Vec<String> = parse(text)
        .into_iter()
        .map(|mut d| {
            normalize(&mut d);
            d.to_string()
        })
        .collect();
    v.sort();
    v
}

/// With default values `install` prints exactly the objects kustomize renders
/// for the matching overlay: deploy/ is the one source of both.
#[test]
fn install_with_defaults_is_the_kustomize_overlay() {
    for (args, dir) in [
        (&[][..], "deploy/overlays/default"),
        (&["--monitoring"][..], "deploy/overlays/monitoring"),
        (&["--wasmplugin"][..], "deploy/overlays/wasmplugin"),
    ] {
        assert_eq!(as_set(&install(args)), as_set(&kustomize(dir)), "install {args:?} differs from kubectl kustomize {dir}");
    }
}

/// The binary: help names every knob, an unknown flag exits 2 (clap), a bad
/// value exits 1 naming the flag and prints nothing on stdout.
#[test]
fn the_install_command_line() {
    let agent = multicloud_e2e::paths::agent();
    let run = |args: &[&str]| std::process::Command::new(&agent).arg("install").args(args).env("RUST_BACKTRACE", "0").output().unwrap();
    let help = run(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--image",
        "--gateway-selector",
        "--metadata-host",
        "--api-proxy-host",
        "--advertise",
        "--export-label",
        "--namespace",
        "--gateway-identity",
        "--monitoring",
        "--wasmplugin",
        "--filter-image",
    ] {
        assert!(help.contains(flag), "{flag} not in --help:\n{help}");
    }
    assert_eq!(run(&["--no-such-flag"]).status.code(), Some(2));
    assert_eq!(run(&["--advertise"]).status.code(), Some(2), "a flag without its value");
    let bad = run(&["--gateway-selector", "istio"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--gateway-selector \"istio\": want key=value"), "{bad:?}");
    assert!(bad.stdout.is_empty(), "nothing printed on a bad value");
    let tag_only = run(&["--image", "registry.example/agent:1.0"]);
    assert_eq!(tag_only.status.code(), Some(1), "an image named by a tag alone is refused");
    assert!(String::from_utf8_lossy(&tag_only.stderr).contains("is not pinned by digest"), "{tag_only:?}");
    let ok = run(NON_DEFAULT);
    assert!(ok.status.success(), "{ok:?}");
    let objs = parse(&String::from_utf8(ok.stdout).unwrap());
    let ds = objs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    for want in [
        "--advertise=203.0.113.10:15443",
        "--api-host=api.cluster-a.example.net:443",
        "--export-label=example.net/federate",
        // The gateway's identity follows --namespace (the gateway runs there).
        "--xds-gateway-identity=spiffe://cluster.local/ns/multicloud/sa/istio-ingressgateway-service-account",
    ] {
        assert!(args.contains(want), "{want} not in {args}");
    }
}

/// The alerts use only metrics the agent exports; each has a summary and a
/// description naming the peer/object and a runbook link to a section of
/// docs/operator-guide.md.
#[test]
fn the_alerts_use_exported_metrics_and_link_existing_runbooks() {
    let rule =
        parse(&kustomize("deploy/overlays/monitoring")).into_iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let guide = std::fs::read_to_string(workspace_root().join("docs/operator-guide.md")).unwrap();
    // GitHub's heading anchors: lower case, spaces to '-', other punctuation dropped.
    let anchors: Vec<String> = guide
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let exported: Vec<&str> = multicloud_agent::metrics::METRICS.iter().map(|m| m.0).collect();
    let mut alerts = Vec::new();
    for r in rule["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = r["alert"].as_str().unwrap();
        alerts.push(name.to_string());
        let expr = r["expr"].as_str().unwrap();
        let used: Vec<&str> = expr.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| w.starts_with("multicloud_")).collect();
        assert!(!used.is_empty(), "{name}: no agent metric in {expr}");
        for m in used {
            assert!(exported.contains(&m), "{name}: {m} is not exported by the agent (agent/src/metrics.rs)");
        }
        for key in ["summary", "description"] {
            assert!(r["annotations"][key].as_str().is_some_and(|s| s.contains("{{ $labels.")), "{name}: {key} must name the peer/object");
        }
        let link = r["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = link.strip_prefix("docs/operator-guide.md#").unwrap_or_else(|| panic!("{name}: runbook {link}"));
        assert!(anchors.iter().any(|a| a == anchor), "{name}: no section #{anchor} in docs/operator-guide.md");
    }
    for want in [
        "MulticloudPeerUnreachable",
        "MulticloudMetadataStale",
        "MulticloudRemoteUUIDChanged",
        "MulticloudEnvoyNACK",
        "MulticloudRemoteSecretTokenExpiring",
    ] {
        assert!(alerts.iter().any(|a| a == want), "{want} missing");
    }
    // The UUID alert counts the label the agent counts RemoteUUIDChanged under
    // (taken from the agent's own reasons, not from its source text).
    use multicloud_agent::reasons::{FetchResult, Reason};
    let uuid_changed = Reason::ALL.into_iter().find(|r| r.as_str() == "RemoteUUIDChanged").expect("the reason exists");
    let label = FetchResult::Failed(uuid_changed).as_str();
    assert_eq!(label, "uuid_changed");
    assert!(rule.to_string().contains(&format!(r#"result=\"{label}\""#)));
}

/// The agent's DaemonSet meets the `restricted` Pod Security Standard.
#[test]
fn the_agent_pod_meets_the_restricted_pod_security_standard() {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rendered()).unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("the agent DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[key].is_null() || pod[key] == false, "{key}");
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        assert!(v["hostPath"].is_null(), "no hostPath volumes: {v}");
    }
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(sc["capabilities"]["add"].is_null());
        for p in c["ports"].as_array().into_iter().flatten() {
            assert!(p["hostPort"].is_null(), "no hostPort: {p}");
        }
        assert!(c["readinessProbe"].is_object() && c["livenessProbe"].is_object() && c["resources"]["requests"].is_object());
    }
    let xds = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "multicloud-agent-xds").unwrap();
    assert_eq!(xds["spec"]["internalTrafficPolicy"], "Local", "xDS stays node-local");
}
