// Validates Istio and prometheus-operator objects against the validators the
// npm packages @kubernetes-models/istio and @kubernetes-models/prometheus-operator
// publish (generated from those projects' CRD OpenAPI schemas and compiled
// with Ajv; the packages ship compiled validators, not JSON Schema documents,
// so they run here in Node rather than in Python's jsonschema).
//
// scripts/bootstrap.sh installs the pinned packages (scripts/schemas/) into
// .schemas/ (or $MULTICLOUD_SCHEMAS). Used by scripts/validate_manifests.py.
//
// stdin: one JSON object per line. stdout: one JSON line per object,
// {"valid": true} or {"valid": false, "errors": [...]}, or
// {"valid": false, "errors": ["no published schema for ..."]}.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = process.env.MULTICLOUD_SCHEMAS || join(dirname(fileURLToPath(import.meta.url)), "..", ".schemas");
const load = (pkg, sub) => import(pathToFileURL(join(root, "node_modules", "@kubernetes-models", pkg, sub, "index.js")).href);

let modules;
try {
  modules = {
    "networking.istio.io/v1alpha3": await load("istio", "networking.istio.io/v1alpha3"),
    "networking.istio.io/v1": await load("istio", "networking.istio.io/v1"),
    "extensions.istio.io/v1alpha1": await load("istio", "extensions.istio.io/v1alpha1"),
    "monitoring.coreos.com/v1": await load("prometheus-operator", "monitoring.coreos.com/v1"),
  };
} catch (e) {
  console.error(`cannot load the schema packages from ${root} (run scripts/bootstrap.sh): ${e.message}`);
  process.exit(2);
}

for (const line of readFileSync(0, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const obj = JSON.parse(line);
  const Model = modules[obj.apiVersion]?.[obj.kind];
  if (typeof Model !== "function") {
    console.log(JSON.stringify({ valid: false, errors: [`no published schema for ${obj.apiVersion} ${obj.kind}`] }));
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(JSON.stringify({ valid: true }));
  } catch (e) {
    const errors = (e.errors || []).map((x) => `${x.instancePath || "/"}: ${x.message}`);
    console.log(JSON.stringify({ valid: false, errors: errors.length ? errors : [String(e.message)] }));
  }
}
