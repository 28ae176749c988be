//! Tier: offline (schema checks; the real API server's verdict is in tests/tests/kube_deploy.rs).
//!
//! The CRD in deploy/ is exactly what the Rust types generate, it is a valid
//! Kubernetes CustomResourceDefinition, and the example object in deploy/
//! validates against its schema (while a broken one does not).
//!
//! Schema checks run PyPI `kubernetes-validate` and `jsonschema` (pinned in
//! scripts/requirements.txt) from the project's .venv, or from the Python
//! named by MULTICLOUD_PYTHON.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_agent::crd::crd_yaml;
use std::path::{Path, PathBuf};
use std::process::Command;

const REGENERATE: &str = "cargo run -p multicloud-agent -- crd > deploy/crd/istiomulticlouds.yaml";
/// The Kubernetes version the CRD is validated for (kubectl here is 1.32).
const KUBERNETES_VERSION: &str = "1.32.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn crd_file() -> PathBuf {
    workspace().join("deploy/crd/istiomulticlouds.yaml")
}

#[test]
fn the_crd_in_deploy_is_the_one_the_types_generate() {
    let on_disk = std::fs::read_to_string(crd_file())
        .unwrap_or_else(|e| panic!("cannot read deploy/crd/istiomulticlouds.yaml ({e}); generate it with `{REGENERATE}`"));
    if on_disk != crd_yaml() {
        let first =
            on_disk.lines().zip(crd_yaml().lines()).position(|(a, b)| a != b).map_or("the end".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "deploy/crd/istiomulticlouds.yaml is stale (first difference at {first}): agent/src/crd.rs changed. \
             Regenerate it from the workspace root with `{REGENERATE}` and commit it."
        );
    }
}

fn python() -> PathBuf {
    let py = std::env::var_os("MULTICLOUD_PYTHON").map_or_else(|| workspace().join(".venv/bin/python"), PathBuf::from);
    assert!(
        py.exists(),
        "{} is missing: run scripts/bootstrap.sh (it installs kubernetes-validate and jsonschema from scripts/requirements.txt into .venv), \
         or point MULTICLOUD_PYTHON at a Python that has them",
        py.display()
    );
    py
}

#[derive(Debug)]
struct Verdict {
    valid: bool,
    errors: Vec<String>,
}

/// Runs scripts/validate_crd.py; one verdict per file, in argument order.
fn validate(objects: &[&Path]) -> Vec<Verdict> {
    let out = Command::new(python())
        .arg(workspace().join("scripts/validate_crd.py"))
        .arg(KUBERNETES_VERSION)
        .arg(crd_file())
        .args(objects)
        .output()
        .expect("cannot run the Python validator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/validate_crd.py failed (run scripts/bootstrap.sh if a module is missing):\n{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("validator printed {l:?}: {e}"));
            Verdict {
                valid: v["valid"].as_bool().unwrap_or(false),
                errors: v["errors"].as_array().into_iter().flatten().map(|e| e.as_str().unwrap_or_default().to_string()).collect(),
            }
        })
        .collect()
}

#[test]
fn the_crd_and_the_example_validate_and_a_broken_object_does_not() {
    let example = workspace().join("deploy/examples/istiomulticloud.yaml");
    let mut broken: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    broken["spec"].as_object_mut().unwrap().remove("metadataEndpoint").expect("the example names a metadataEndpoint");
    let dir = tempfile::tempdir().unwrap();
    let broken_file = dir.path().join("broken.yaml");
    std::fs::write(&broken_file, serde_saphyr::to_string(&broken).unwrap()).unwrap();

    let verdicts = validate(&[&example, &broken_file]);
    let [crd, example, broken] = verdicts.as_slice() else { panic!("expected 3 verdicts, got {verdicts:?}") };
    assert!(
        crd.valid,
        "the CRD is not a valid apiextensions.k8s.io/v1 CustomResourceDefinition for Kubernetes {KUBERNETES_VERSION}: {:?}",
        crd.errors
    );
    assert!(example.valid, "deploy/examples/istiomulticloud.yaml does not match the CRD schema: {:?}", example.errors);
    assert!(!broken.valid, "an object without spec.metadataEndpoint passed the CRD schema");
    assert!(broken.errors.iter().any(|e| e.contains("metadataEndpoint")), "{:?}", broken.errors);
}
