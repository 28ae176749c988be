#!/usr/bin/env python3
"""Validates every object of a multi-document YAML stream (stdin) against the
Kubernetes schemas of K8S_VERSION (PyPI kubernetes-validate, strict). Objects
of kinds Kubernetes does not define (the project's CRD objects, Istio's
EnvoyFilter) are reported as skipped with that reason.

Usage: kubectl kustomize deploy/base | validate_manifests.py 1.32.0
Prints one JSON line per object: {"kind","name","valid","errors"|"skipped"}.
"""
import json
import sys

import kubernetes_validate
import yaml

CORE_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1", "policy/v1", "coordination.k8s.io/v1")


def main(argv):
    version = argv[1] if len(argv) > 1 else "1.32.0"
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc:
            continue
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if doc.get("apiVersion") not in CORE_GROUPS:
            print(json.dumps({"kind": kind, "name": name, "skipped": f"{doc.get('apiVersion')} is not a Kubernetes API"}))
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            print(json.dumps({"kind": kind, "name": name, "valid": True}))
        except kubernetes_validate.ValidationError as e:
            print(json.dumps({"kind": kind, "name": name, "valid": False, "errors": [f"{'.'.join(map(str, e.path))}: {e.message}"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
