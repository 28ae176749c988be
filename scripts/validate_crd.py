#!/usr/bin/env python3
"""Offline checks of a CustomResourceDefinition and objects of its kind.

Usage: validate_crd.py K8S_VERSION CRD.yaml [OBJECT.yaml ...]

1. The CRD must validate (strict) as apiextensions.k8s.io/v1
   CustomResourceDefinition for Kubernetes K8S_VERSION (PyPI kubernetes-validate).
2. Each object is validated against the openAPIV3Schema of the CRD version
   its apiVersion names (PyPI jsonschema).

Prints one JSON line per file: {"file", "valid", "errors"}. Exits 0 when it
could run the checks (the caller judges the results), 2 on a usage problem.
Used by agent/tests/crd.rs; runs from the project's .venv.
"""
import json
import sys

import jsonschema
import kubernetes_validate
import yaml


def report(path, errors):
    print(json.dumps({"file": path, "valid": not errors, "errors": errors}))


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    version, crd_path, objects = argv[1], argv[2], argv[3:]
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    try:
        kubernetes_validate.validate(crd, version, strict=True)
        report(crd_path, [])
    except kubernetes_validate.ValidationError as e:
        report(crd_path, [f"{'.'.join(map(str, e.path))}: {e.message}"])
    except kubernetes_validate.utils.VersionNotSupportedError as e:
        print(f"kubernetes-validate does not know Kubernetes {version}: {e}", file=sys.stderr)
        return 2

    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    schemas = {f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    for path in objects:
        with open(path) as f:
            obj = yaml.safe_load(f)
        errors = []
        if obj.get("kind") != kind:
            errors.append(f"kind: {obj.get('kind')!r} is not {kind!r}")
        schema = schemas.get(obj.get("apiVersion"))
        if schema is None:
            errors.append(f"apiVersion: {obj.get('apiVersion')!r} is not one of {sorted(schemas)}")
        else:
            validator = jsonschema.Draft7Validator(schema)
            for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
                where = ".".join(map(str, err.absolute_path)) or "(root)"
                errors.append(f"{where}: {err.message}")
        report(path, errors)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
