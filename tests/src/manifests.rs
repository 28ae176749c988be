//! `deploy/`'s manifests, read at run time, for the tests that run Envoy as
//! `deploy/` configures it: what the EnvoyFilter `multicloud-edge`
//! (`deploy/base/edge-filter.yaml`) patches into Istio's gateway is taken
//! from the file itself, so a change there reaches those tests and no copy
//! in the test bed can drift from it.
//!
//! istiod reads patch values with Go's protojson and sends Envoy binary
//! protobuf; the test bed hands them to Envoy's own (C++) JSON parser. The
//! two differ in one place the EnvoyFilter uses: protojson writes an `Any`
//! of `google.protobuf.Empty` as `{"@type": ..., "value": {}}` (Empty has a
//! "custom" JSON form there), which Envoy refuses (`no such field:
//! 'value'`). [`as_envoy_json`] rewrites that form, as istiod's
//! translation does.

use serde_json::Value;

use crate::paths::workspace_root;

/// `deploy/base/edge-filter.yaml`, as JSON.
pub fn edge_envoy_filter() -> Value {
    let path = workspace_root().join("deploy/base/edge-filter.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `patch.value` of the EnvoyFilter's patch that applies to `apply_to`
/// (`CLUSTER`, `HTTP_FILTER`, `HTTP_ROUTE`), as Envoy's JSON parser takes it.
pub fn edge_patch(apply_to: &str) -> Value {
    let ef = edge_envoy_filter();
    let patches = ef.pointer("/spec/configPatches").and_then(Value::as_array).cloned().unwrap_or_default();
    let value = patches
        .into_iter()
        .find(|p| p["applyTo"] == apply_to)
        .and_then(|p| p.pointer("/patch/value").cloned())
        .unwrap_or_else(|| panic!("deploy/base/edge-filter.yaml has no {apply_to} patch"));
    as_envoy_json(value)
}

/// A patch value as protojson (istiod) reads it, written the way Envoy's
/// JSON parser reads the same message: an `Any` of `google.protobuf.Empty`
/// loses protojson's `value` member.
pub fn as_envoy_json(v: Value) -> Value {
    match v {
        Value::Object(mut o) => {
            let empty = o.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("/google.protobuf.Empty"));
            if empty && o.get("value").is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty())) {
                o.remove("value");
            }
            Value::Object(o.into_iter().map(|(k, v)| (k, as_envoy_json(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(as_envoy_json).collect()),
        other => other,
    }
}

/// The edge filter's entry in the gateway's HTTP filter chain, as `deploy/`
/// inserts it (`disabled: true`, ECDS, the Wasm type URL), with its
/// configuration from `config_source` instead of the agent's per-type
/// service when that is given (the test bed's file or ADS).
pub fn edge_http_filter(config_source: Option<Value>) -> Value {
    let mut f = edge_patch("HTTP_FILTER");
    if let Some(source) = config_source {
        f["config_discovery"]["config_source"] = source;
    }
    f
}

/// What `deploy/` merges into the gateway's `/metadata/` route: the
/// `typed_per_filter_config` that enables the edge filter there.
pub fn metadata_route_patch() -> Value {
    edge_patch("HTTP_ROUTE")
}

/// `route` with [`metadata_route_patch`] merged in (keys of the patch win).
pub fn metadata_route(mut route: Value) -> Value {
    if let (Some(r), Value::Object(patch)) = (route.as_object_mut(), metadata_route_patch()) {
        r.extend(patch);
    }
    route
}

/// `v` as one line of YAML (JSON is YAML's flow style).
pub fn yaml_flow(v: &Value) -> String {
    v.to_string()
}
