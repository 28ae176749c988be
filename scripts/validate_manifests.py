#!/usr/bin/env python3
"""Validates every object of a multi-document YAML stream (stdin) against the
schema of its kind:

- Kubernetes kinds: the Kubernetes K8S_VERSION schemas (PyPI
  kubernetes-validate, strict: unknown fields are errors);
- the project's IstioMulticloud: the openAPIV3Schema of deploy/crd
  (PyPI jsonschema);
- Istio (EnvoyFilter, WasmPlugin, ...) and prometheus-operator
  (ServiceMonitor, PrometheusRule): the validators published in the npm
  packages @kubernetes-models/istio and @kubernetes-models/prometheus-operator,
  generated from those projects' CRD schemas (scripts/validate_crds.mjs; the
  packages ship compiled Ajv validators, not JSON Schema documents, so they
  run in Node). They check types, enums, patterns and required fields; like
  the CRDs' structural schemas they do not reject unknown fields.

An object of any other kind is invalid ("no schema").

Usage: kubectl kustomize deploy/base | validate_manifests.py [K8S_VERSION]
Prints one JSON line per object: {"kind","name","schema","valid","errors"}.
Exit code: 0 all valid, 1 some object invalid, 2 the checks could not run.
"""
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORE_GROUPS = (
    "v1",
    "apps/v1",
    "rbac.authorization.k8s.io/v1",
    "apiextensions.k8s.io/v1",
    "policy/v1",
    "coordination.k8s.io/v1",
    "networking.k8s.io/v1",
    "batch/v1",
    "admissionregistration.k8s.io/v1",
)
NPM_GROUPS = {
    "networking.istio.io": "@kubernetes-models/istio",
    "extensions.istio.io": "@kubernetes-models/istio",
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
}


def project_schemas():
    with open(os.path.join(ROOT, "deploy/crd/istiomulticlouds.yaml")) as f:
        crd = yaml.safe_load(f)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    return {(f"{group}/{v['name']}", kind): v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def npm_validate(docs):
    """Verdicts of scripts/validate_crds.mjs for docs, in order."""
    if not docs:
        return []
    node = os.environ.get("MULTICLOUD_NODE", "node")
    proc = subprocess.run(
        [node, os.path.join(ROOT, "scripts/validate_crds.mjs")],
        input="".join(json.dumps(d) + "\n" for d in docs),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"scripts/validate_crds.mjs failed: {proc.stderr.strip()}", file=sys.stderr)
        sys.exit(2)
    verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(verdicts) != len(docs):
        print(f"scripts/validate_crds.mjs answered {len(verdicts)} verdicts for {len(docs)} objects", file=sys.stderr)
        sys.exit(2)
    return verdicts


def main(argv):
    version = argv[1] if len(argv) > 1 else "1.32.0"
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    schemas = project_schemas()
    results = [None] * len(docs)
    npm = []
    for i, doc in enumerate(docs):
        api, kind = doc.get("apiVersion"), doc.get("kind")
        group = api.split("/")[0] if isinstance(api, str) and "/" in api else ""
        if api in CORE_GROUPS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                results[i] = (f"kubernetes-validate {version}", [])
            except kubernetes_validate.ValidationError as e:
                results[i] = (f"kubernetes-validate {version}", [f"{'.'.join(map(str, e.path))}: {e.message}"])
            except kubernetes_validate.utils.VersionNotSupportedError as e:
                print(f"kubernetes-validate does not know Kubernetes {version}: {e}", file=sys.stderr)
                return 2
        elif (api, kind) in schemas:
            validator = jsonschema.Draft7Validator(schemas[(api, kind)])
            errors = [
                f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            ]
            results[i] = ("deploy/crd", errors)
        elif group in NPM_GROUPS:
            npm.append(i)
        else:
            results[i] = ("none", [f"no schema for {api} {kind}"])
    for i, verdict in zip(npm, npm_validate([docs[i] for i in npm])):
        group = docs[i]["apiVersion"].split("/")[0]
        results[i] = (NPM_GROUPS[group], [] if verdict.get("valid") else verdict.get("errors", ["invalid"]))
    invalid = 0
    for doc, (schema, errors) in zip(docs, results):
        invalid += bool(errors)
        out = {"kind": doc.get("kind"), "name": (doc.get("metadata") or {}).get("name"), "schema": schema, "valid": not errors}
        if errors:
            out["errors"] = errors
        print(json.dumps(out))
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
