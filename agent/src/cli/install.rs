//! `multicloud-agent install`: the objects of deploy/ (the kustomize base,
//! plus the monitoring / WasmPlugin components and the metadata route when
//! asked) as one multi-document YAML stream, with the operator's values put
//! in place.
//!
//! The YAML files of deploy/ are embedded as they are (`include_str!`) and
//! patched as data (serde_json values), so deploy/ stays the one source:
//! with default values the output is what `kubectl kustomize` renders for
//! the matching overlay (tests/tests/deploy.rs checks that).

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;
use std::str::FromStr;

const CRD: &str = include_str!("../../../deploy/crd/istiomulticlouds.yaml");
const EDGE_FILTER: &str = include_str!("../../../deploy/base/edge-filter.yaml");
const API_PROXY_RBAC: &str = include_str!("../../../deploy/base/api-proxy-rbac.yaml");
const AGENT: &str = include_str!("../../../deploy/base/agent.yaml");
const ISTIO_MESH: &str = include_str!("../../../deploy/base/istio-mesh.yaml");
const SERVICE_MONITOR: &str = include_str!("../../../deploy/components/monitoring/servicemonitor.yaml");
const PROMETHEUS_RULE: &str = include_str!("../../../deploy/components/monitoring/prometheusrule.yaml");
const WASM_PLUGIN: &str = include_str!("../../../deploy/components/wasmplugin/wasmplugin.yaml");
const WASM_PLUGIN_COMPONENT: (&str, &str) =
    ("deploy/components/wasmplugin/kustomization.yaml", include_str!("../../../deploy/components/wasmplugin/kustomization.yaml"));
const METADATA_ROUTE: &str = include_str!("../../../deploy/components/metadata-route/metadata-route.yaml");
const API_PROXY_ROUTE: &str = include_str!("../../../deploy/components/api-proxy-route/api-proxy-route.yaml");

/// The namespace the files in deploy/ name.
const BASE_NAMESPACE: &str = "istio-system";

#[derive(clap::Args, Debug, Default, Clone)]
pub struct InstallArgs {
    /// The agent's container image, pinned by digest: REPO[:TAG]@sha256:<64 hex> (`make images`
    /// prints the digest; a tag alone is refused). Default: the placeholder in deploy/base/agent.yaml.
    #[arg(long)]
    pub image: Option<String>,
    /// The filter's Wasm image for the WasmPlugin (with --wasmplugin), pinned by digest:
    /// REPO[:TAG]@sha256:<64 hex>; becomes its `url: oci://...`. Default: the placeholder in
    /// deploy/components/wasmplugin.
    #[arg(long)]
    pub filter_image: Option<String>,
    /// Labels of the ingress gateway (k=v,...): the EnvoyFilter's / WasmPlugin's workload
    /// selector, the metadata Gateway's selector, and the agent's --gateway-selector (which it
    /// applies to the gateway Service). Default: istio=ingressgateway.
    #[arg(long)]
    pub gateway_selector: Option<String>,
    /// Also render the gateway's /metadata/ route for this host: an Istio Gateway (HTTPS 443,
    /// certificate from Secret multicloud-metadata-tls) and a VirtualService whose route is named
    /// multicloud-metadata, the route the edge filter is enabled on.
    #[arg(long)]
    pub metadata_host: Option<String>,
    /// The API proxy's host[:port] as peers reach it (the agent's --api-host). Also renders the
    /// gateway's route for HOST to the API server with the guard and the credential injector
    /// (deploy/components/api-proxy-route; certificate from Secret multicloud-api-tls), except
    /// with --wasmplugin.
    #[arg(long)]
    pub api_proxy_host: Option<String>,
    /// The gateway's cross-network port: the AUTO_PASSTHROUGH Gateway's server port (default
    /// 15443). The gateway Service's port named `tls` must be this port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub mesh_port: Option<u16>,
    /// Gateway address to advertise instead of the gateway Service's (host:port, repeatable;
    /// the agent's --advertise).
    #[arg(long)]
    pub advertise: Vec<String>,
    /// The label KEY that exports a Service (the agent exports Services labelled KEY=true;
    /// KEY=true is accepted too). The agent's --export-label.
    #[arg(long)]
    pub export_label: Option<String>,
    /// Namespace of the agent and of every namespaced object (the Istio gateway is expected there).
    #[arg(long, default_value = BASE_NAMESPACE)]
    pub namespace: String,
    /// SPIFFE ID of the ingress gateway, the only client the agent's xDS port serves the
    /// gateway's resources to (the agent's --xds-gateway-identity; repeatable). Default:
    /// spiffe://cluster.local/ns/<namespace>/sa/istio-ingressgateway-service-account.
    #[arg(long)]
    pub gateway_identity: Vec<String>,
    /// Add the ServiceMonitor and the PrometheusRule alerts (deploy/components/monitoring).
    #[arg(long)]
    pub monitoring: bool,
    /// The revision of this cluster's istiod, if it has one: the API proxy also lets peers'
    /// istiods read its mesh ConfigMap `istio-<revision>` (the API proxy's Role and the agent's
    /// --istio-revision).
    #[arg(long)]
    pub istio_revision: Option<String>,
    /// Attach the edge filter by Istio WasmPlugin instead of EnvoyFilter (deploy/components/wasmplugin;
    /// read deploy/README.md: the filter's configuration then does not come from the agent).
    #[arg(long)]
    pub wasmplugin: bool,
}

fn docs(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("an embedded deploy/ file does not parse")?;
    Ok(docs.into_iter().filter(|v| !v.is_null()).collect())
}

/// A DNS-1123 label value or name part: [A-Za-z0-9] at both ends, [-_.A-Za-z0-9] inside, at most 63.
fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: [prefix/]name, prefix a DNS subdomain.
fn label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => dns_name(prefix) && label_name(name),
        None => label_name(s),
    }
}

fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `k=v,...` into labels; every pair checked against Kubernetes' label syntax.
pub fn parse_selector(s: &str) -> Result<serde_json::Map<String, Value>> {
    let mut labels = serde_json::Map::new();
    ensure!(!s.trim().is_empty(), "--gateway-selector is empty: want key=value[,key=value...]");
    for kv in s.split(',') {
        let (k, v) = kv.split_once('=').with_context(|| format!("--gateway-selector {kv:?}: want key=value"))?;
        ensure!(label_key(k), "--gateway-selector {kv:?}: {k:?} is not a valid label key");
        ensure!(v.is_empty() || label_name(v), "--gateway-selector {kv:?}: {v:?} is not a valid label value");
        ensure!(labels.insert(k.to_string(), v.into()).is_none(), "--gateway-selector: key {k:?} given twice");
    }
    Ok(labels)
}

/// `host:port` with a DNS name or IP address and a port 1-65535.
fn parse_host_port(flag: &str, s: &str, port_required: bool) -> Result<()> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => bail!("{flag} {s:?}: {p:?} is not a port (1-65535)"),
        }
    } else if port_required {
        bail!("{flag} {s:?}: want host:port");
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ensure!(dns_name(host) || host.parse::<std::net::IpAddr>().is_ok(), "{flag} {s:?}: {host:?} is not a host name or IP address");
    Ok(())
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

/// Checks an image reference pinned by digest:
/// `[HOST[:PORT]/]PATH[:TAG]@sha256:<64 lower-case hex>`, by the
/// distribution reference grammar (oci-spec's `Reference`). A tag alone is
/// refused: the DaemonSet runs on every node and the WasmPlugin on every
/// gateway, and a tag that moves gives nodes different builds (Istio's Wasm
/// cache also keys modules by the image digest).
pub fn pinned_image_ref(flag: &str, s: &str) -> Result<()> {
    const WANT: &str = "want [HOST[:PORT]/]PATH[:TAG]@sha256:<64 lower-case hex>";
    let Some((name_tag, digest)) = s.rsplit_once('@') else {
        bail!(
            "{flag} {s:?} is not pinned by digest: {WANT} (`make images` prints the project's digests; `crane digest REPO:TAG` a pushed image's)"
        );
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    ensure!(
        hex.len() == 64 && hex.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x)),
        "{flag} {s:?}: the digest must be sha256: followed by 64 lower-case hex digits"
    );
    if let Err(e) = oci_spec::distribution::Reference::from_str(s) {
        // The grammar's one error says little; name the usual mistake.
        let path = name_tag.split_once('/').map_or(name_tag, |(first, rest)| if first.contains(['.', ':']) { rest } else { name_tag });
        let hint = if path.bytes().any(|x| x.is_ascii_uppercase()) { "; repository paths are lower case" } else { "" };
        bail!("{flag} {s:?} is not an image reference: {e} ({WANT}{hint})");
    }
    Ok(())
}

/// The agent's container in the DaemonSet.
fn agent_container(objects: &mut [Value]) -> Result<&mut Value> {
    let ds = objects.iter_mut().find(|o| kind(o) == "DaemonSet").context("deploy/base/agent.yaml has no DaemonSet")?;
    ds.pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
        .and_then(|cs| cs.iter_mut().find(|c| c.get("name").and_then(Value::as_str) == Some("agent")))
        .context("the DaemonSet has no container named agent")
}

/// `v[keys[0]][keys[1]]... = value`, making objects of nulls on the way, as
/// serde_json's `IndexMut` does (without its panic on a non-object: then
/// nothing is set).
fn set(v: &mut Value, keys: &[&str], value: Value) {
    let mut at = v;
    for k in keys {
        if at.is_null() {
            *at = Value::Object(Default::default());
        }
        let Some(o) = at.as_object_mut() else { return };
        at = o.entry(*k).or_insert(Value::Null);
    }
    *at = value;
}

/// The objects, in install order (CRD first).
pub fn objects(a: &InstallArgs) -> Result<Vec<Value>> {
    ensure!(
        dns_name(&a.namespace) && !a.namespace.contains('.') && !a.namespace.bytes().any(|c| c.is_ascii_uppercase()),
        "--namespace {:?} is not a valid namespace name (lower case letters, digits and '-', at most 63)",
        a.namespace
    );
    let selector = a.gateway_selector.as_deref().map(parse_selector).transpose()?;
    if let Some(h) = &a.api_proxy_host {
        parse_host_port("--api-proxy-host", h, false)?;
    }
    for adv in &a.advertise {
        parse_host_port("--advertise", adv, true)?;
    }
    if let Some(h) = &a.metadata_host {
        ensure!(dns_name(h), "--metadata-host {h:?} is not a DNS name (no scheme, port or path)");
    }
    if let Some(rev) = &a.istio_revision {
        ensure!(
            !rev.is_empty() && rev.len() <= 57 && label_name(rev) && !rev.bytes().any(|c| c.is_ascii_uppercase() || c == b'.' || c == b'_'),
            "--istio-revision {rev:?} is not a revision name (lower case letters, digits and '-')"
        );
    }
    let export_label = match a.export_label.as_deref() {
        None => None,
        Some(l) => {
            let key = match l.split_once('=') {
                Some((k, "true")) => k,
                Some((_, v)) => {
                    bail!("--export-label {l:?}: the agent exports Services labelled KEY=true; the value {v:?} cannot be changed")
                }
                None => l,
            };
            ensure!(label_key(key), "--export-label {l:?}: {key:?} is not a valid label key");
            Some(key.to_string())
        }
    };
    if let Some(image) = &a.image {
        pinned_image_ref("--image", image)?;
    }
    if let Some(image) = &a.filter_image {
        ensure!(
            a.wasmplugin,
            "--filter-image is the WasmPlugin's module: it needs --wasmplugin (with the EnvoyFilter the gateway loads the module from its own filesystem)"
        );
        pinned_image_ref("--filter-image", image)?;
    }

    let mut objects = docs(CRD)?;
    objects.extend(docs(if a.wasmplugin { WASM_PLUGIN } else { EDGE_FILTER })?);
    objects.extend(docs(API_PROXY_RBAC)?);
    objects.extend(docs(AGENT)?);
    objects.extend(docs(ISTIO_MESH)?);
    if a.monitoring {
        objects.extend(docs(SERVICE_MONITOR)?);
        objects.extend(docs(PROMETHEUS_RULE)?);
    }
    if a.metadata_host.is_some() {
        objects.extend(docs(METADATA_ROUTE)?);
    }
    // The API proxy's route (deploy/components/api-proxy-route): with the
    // EnvoyFilter attachment only, whose cluster to the agent it uses.
    let api_route_host = a.api_proxy_host.as_deref().filter(|_| !a.wasmplugin).map(crate::host_port::HostPort::host_of);
    if api_route_host.is_some() {
        objects.extend(docs(API_PROXY_ROUTE)?);
    }

    // Values.
    let ns = a.namespace.as_str();
    for o in objects.iter_mut() {
        // Only what lives in the agent's namespace moves with it (the empty
        // namespace of the API proxy's Secret reads stays where it is).
        if let Some(n) = o.pointer_mut("/metadata/namespace").filter(|n| n.as_str() == Some(BASE_NAMESPACE)) {
            *n = ns.into();
        }
        for s in o.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
            if s["kind"] == "ServiceAccount" {
                s["namespace"] = ns.into();
            }
        }
        match kind(o) {
            "EnvoyFilter" => {
                for p in o.pointer_mut("/spec/configPatches").and_then(Value::as_array_mut).into_iter().flatten() {
                    let at = "/patch/value/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address";
                    if let Some(addr) = p.pointer_mut(at) {
                        *addr = format!("multicloud-agent-xds.{ns}.svc.cluster.local").into();
                    }
                    // The agent's identity the gateway verifies: its ServiceAccount in `ns`.
                    let san = "/patch/value/transport_socket/typed_config/common_tls_context/combined_validation_context/default_validation_context/match_typed_subject_alt_names/0/matcher/exact";
                    if let Some(id) = p.pointer_mut(san) {
                        *id = format!("spiffe://cluster.local/ns/{ns}/sa/istio-multicloud-agent").into();
                    }
                }
                if let Some(sel) = &selector {
                    set(o, &["spec", "workloadSelector", "labels"], Value::Object(sel.clone()));
                }
            }
            "WasmPlugin" => {
                if let Some(sel) = &selector {
                    set(o, &["spec", "selector", "matchLabels"], Value::Object(sel.clone()));
                }
                if let Some(image) = &a.filter_image {
                    set(o, &["spec", "url"], format!("oci://{image}").into());
                }
            }
            "Gateway" => {
                if let Some(sel) = &selector {
                    set(o, &["spec", "selector"], Value::Object(sel.clone()));
                }
                let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                if name == "istio-multicloud-crossnetwork" {
                    if let (Some(p), Some(server)) = (a.mesh_port, o.pointer_mut("/spec/servers/0")) {
                        set(server, &["port", "number"], p.into());
                    }
                } else {
                    let host = if name == "multicloud-api" { api_route_host.as_ref() } else { a.metadata_host.as_ref() };
                    if let (Some(h), Some(server)) = (host, o.pointer_mut("/spec/servers/0")) {
                        set(server, &["hosts"], serde_json::json!([h]));
                    }
                }
            }
            "VirtualService" => {
                let api = o.pointer("/metadata/name").and_then(Value::as_str) == Some("multicloud-api");
                let host = if api { api_route_host.as_ref() } else { a.metadata_host.as_ref() };
                if let Some(h) = host {
                    set(o, &["spec", "hosts"], serde_json::json!([h]));
                }
            }
            "DestinationRule" => {
                if let Some(c) = o.pointer_mut("/spec/trafficPolicy/tls/credentialName") {
                    *c = format!("configmap://{ns}/kube-root-ca.crt").into();
                }
            }
            "ServiceMonitor" => set(o, &["spec", "namespaceSelector", "matchNames"], serde_json::json!([ns])),
            _ => {}
        }
    }
    let c = agent_container(&mut objects)?;
    if let Some(image) = &a.image {
        c["image"] = image.as_str().into();
    }
    let args = c["args"].as_array_mut().context("the agent container has no args")?;
    if let Some(g) = &a.gateway_selector {
        args.push(format!("--gateway-selector={g}").into());
    }
    if let Some(k) = export_label {
        args.push(format!("--export-label={k}").into());
    }
    if let Some(h) = &a.api_proxy_host {
        args.push(format!("--api-host={h}").into());
    }
    if let Some(rev) = &a.istio_revision {
        args.push(format!("--istio-revision={rev}").into());
    }
    for adv in &a.advertise {
        args.push(format!("--advertise={adv}").into());
    }
    // The gateway's identity: given, or the file's with the gateway's namespace.
    const IDENTITY_FLAG: &str = "--xds-gateway-identity=";
    let from_file: Vec<String> =
        args.iter().filter_map(|v| v.as_str().and_then(|s| s.strip_prefix(IDENTITY_FLAG)).map(str::to_string)).collect();
    let identities: Vec<String> = if a.gateway_identity.is_empty() {
        from_file.iter().map(|id| id.replace(&format!("/ns/{BASE_NAMESPACE}/"), &format!("/ns/{ns}/"))).collect()
    } else {
        for id in &a.gateway_identity {
            ensure!(
                id.strip_prefix("spiffe://").is_some_and(|r| r.contains('/') && !r.starts_with('/')),
                "--gateway-identity {id:?} is not a SPIFFE ID: want spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
            );
        }
        a.gateway_identity.clone()
    };
    // In the file's place, so that the defaults render exactly as kustomize does.
    let is_identity = |v: &Value| v.as_str().is_some_and(|s| s.starts_with(IDENTITY_FLAG));
    let at = args.iter().position(is_identity).unwrap_or(args.len());
    args.retain(|v| !is_identity(v));
    let at = at.min(args.len());
    for (i, id) in identities.iter().enumerate() {
        args.insert(at + i, Value::from(format!("{IDENTITY_FLAG}{id}")));
    }
    if a.wasmplugin {
        // deploy/components/wasmplugin's own patches: the agent writes the
        // edge configuration into the WasmPlugin, and may get and patch it.
        super::component::apply(WASM_PLUGIN_COMPONENT.0, WASM_PLUGIN_COMPONENT.1, &mut objects)?;
    }
    if let Some(rev) = &a.istio_revision {
        let role = objects
            .iter_mut()
            .find(|o| {
                kind(o) == "Role" && o.pointer("/metadata/name").and_then(Value::as_str) == Some("istio-multicloud-api-proxy-mesh-config")
            })
            .context("the API proxy's mesh ConfigMap Role is missing")?;
        let names = role
            .pointer_mut("/rules/0/resourceNames")
            .and_then(Value::as_array_mut)
            .context("the mesh ConfigMap Role has no resourceNames")?;
        names.push(format!("istio-{rev}").into());
    }
    Ok(objects)
}

/// The objects as multi-document YAML.
pub fn render(a: &InstallArgs) -> Result<String> {
    let mut out = String::from("# Rendered by `multicloud-agent install` from deploy/ (docs/operator-guide.md).\n");
    for o in objects(a)? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&o)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(objs: &'a [Value], k: &str) -> &'a Value {
        objs.iter().find(|o| kind(o) == k).unwrap_or_else(|| panic!("no {k}"))
    }

    fn args_of(objs: &[Value]) -> Vec<String> {
        find(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn defaults_are_the_base_and_flags_add_components() {
        let objs = objects(&InstallArgs { namespace: BASE_NAMESPACE.into(), ..Default::default() }).unwrap();
        let kinds: Vec<&str> = objs.iter().map(kind).collect();
        assert_eq!(kinds[0], "CustomResourceDefinition");
        assert!(kinds.contains(&"EnvoyFilter") && !kinds.contains(&"WasmPlugin") && !kinds.contains(&"PrometheusRule"));
        assert!(!args_of(&objs).iter().any(|a| a.starts_with("--gateway-selector")));
        let objs =
            objects(&InstallArgs { namespace: BASE_NAMESPACE.into(), monitoring: true, wasmplugin: true, ..Default::default() }).unwrap();
        let kinds: Vec<&str> = objs.iter().map(kind).collect();
        assert!(!kinds.contains(&"EnvoyFilter") && kinds.contains(&"WasmPlugin"));
        assert!(kinds.contains(&"ServiceMonitor") && kinds.contains(&"PrometheusRule"));
    }

    #[test]
    fn values_land_in_the_daemonset_args_and_the_filter_attachment() {
        let a = InstallArgs {
            image: Some(format!("registry.example/agent:1.2.3@sha256:{}", "ab".repeat(32))),
            filter_image: None,
            gateway_selector: Some("app=edge,istio.io/rev=canary".into()),
            metadata_host: Some("metadata.a.example".into()),
            api_proxy_host: Some("api.a.example:443".into()),
            advertise: vec!["203.0.113.7:15443".into(), "edge.a.example:443".into()],
            export_label: Some("example.com/federate=true".into()),
            namespace: "mesh-edge".into(),
            gateway_identity: vec![],
            monitoring: true,
            wasmplugin: false,
            mesh_port: Some(15444),
            istio_revision: Some("1-30".into()),
        };
        let objs = objects(&a).unwrap();
        for o in &objs {
            if kind(o) != "CustomResourceDefinition" && !o["metadata"]["namespace"].is_null() {
                // The empty namespace of the API proxy's Secret reads stays.
                let ns = o["metadata"]["namespace"].as_str().unwrap();
                assert!(ns == "mesh-edge" || ns == "istio-multicloud-empty", "{o}");
            }
            assert!(!o.to_string().contains("\"istio-system\""), "a namespace left behind: {o}");
        }
        let ds = find(&objs, "DaemonSet");
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("registry.example/agent:1.2.3@sha256:{}", "ab".repeat(32))
        );
        let args = args_of(&objs);
        for want in [
            "--gateway-selector=app=edge,istio.io/rev=canary",
            "--export-label=example.com/federate",
            "--api-host=api.a.example:443",
            "--advertise=203.0.113.7:15443",
            "--advertise=edge.a.example:443",
            "--xds-gateway-identity=spiffe://cluster.local/ns/mesh-edge/sa/istio-ingressgateway-service-account",
            "--istio-revision=1-30",
        ] {
            assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
        }
        let mesh_role =
            objs.iter().find(|o| o["metadata"]["name"] == "istio-multicloud-api-proxy-mesh-config" && kind(o) == "Role").unwrap();
        assert_eq!(mesh_role["rules"][0]["resourceNames"], serde_json::json!(["istio", "istio-1-30"]), "the revision's mesh ConfigMap too");
        let ef = find(&objs, "EnvoyFilter");
        assert_eq!(ef["spec"]["workloadSelector"]["labels"], serde_json::json!({"app": "edge", "istio.io/rev": "canary"}));
        assert!(ef.to_string().contains("multicloud-agent-xds.mesh-edge.svc.cluster.local"));
        let gateway = |name: &str| objs.iter().find(|o| kind(o) == "Gateway" && o["metadata"]["name"] == name).expect(name).clone();
        assert_eq!(
            gateway("multicloud-api")["spec"]["servers"][0]["hosts"],
            serde_json::json!(["api.a.example"]),
            "the host without its port"
        );
        assert_eq!(gateway("multicloud-api")["spec"]["selector"], serde_json::json!({"app": "edge", "istio.io/rev": "canary"}));
        let api_vs =
            objs.iter().find(|o| kind(o) == "VirtualService" && o["metadata"]["name"] == "multicloud-api").expect("api VirtualService");
        assert_eq!(api_vs["spec"]["hosts"], serde_json::json!(["api.a.example"]));
        let api_ef = objs.iter().find(|o| kind(o) == "EnvoyFilter" && o["metadata"]["name"] == "multicloud-api").expect("api EnvoyFilter");
        assert_eq!(api_ef["spec"]["workloadSelector"]["labels"], serde_json::json!({"app": "edge", "istio.io/rev": "canary"}));
        assert_eq!(gateway("multicloud-metadata")["spec"]["servers"][0]["hosts"], serde_json::json!(["metadata.a.example"]));
        let cross = gateway("istio-multicloud-crossnetwork");
        assert_eq!(cross["spec"]["servers"][0]["port"]["number"], 15444);
        assert_eq!(cross["spec"]["servers"][0]["tls"]["mode"], "AUTO_PASSTHROUGH");
        assert_eq!(cross["spec"]["servers"][0]["hosts"], serde_json::json!(["*.local"]), "not the metadata host");
        assert_eq!(cross["spec"]["selector"], serde_json::json!({"app": "edge", "istio.io/rev": "canary"}));
        let meta_vs = objs
            .iter()
            .find(|o| kind(o) == "VirtualService" && o["metadata"]["name"] == "multicloud-metadata")
            .expect("metadata VirtualService");
        assert_eq!(meta_vs["spec"]["hosts"], serde_json::json!(["metadata.a.example"]));
        assert_eq!(meta_vs["spec"]["http"][0]["name"], "multicloud-metadata");
        assert_eq!(find(&objs, "ServiceMonitor")["spec"]["namespaceSelector"]["matchNames"], serde_json::json!(["mesh-edge"]));
        let ids = vec!["spiffe://a.example/ns/edge/sa/gw".to_string(), "spiffe://a.example/ns/edge/sa/gw2".to_string()];
        let objs = objects(&InstallArgs { gateway_identity: ids.clone(), ..a.clone() }).unwrap();
        let given: Vec<String> =
            args_of(&objs).into_iter().filter_map(|s| s.strip_prefix("--xds-gateway-identity=").map(String::from)).collect();
        assert_eq!(given, ids, "--gateway-identity replaces the default");
        let filter = format!("registry.example:5000/mc/edge-filter@sha256:{}", "0f".repeat(32));
        let wasm = objects(&InstallArgs { wasmplugin: true, filter_image: Some(filter.clone()), ..a }).unwrap();
        assert_eq!(find(&wasm, "WasmPlugin")["spec"]["selector"]["matchLabels"]["app"], "edge");
        assert_eq!(find(&wasm, "WasmPlugin")["spec"]["url"], format!("oci://{filter}"));
    }

    #[test]
    fn pinned_references_are_accepted() {
        let d = "9".repeat(64);
        for r in [
            format!("agent@sha256:{d}"),
            format!("registry.example/istio-multicloud/agent@sha256:{d}"),
            format!("127.0.0.1:5000/istio-multicloud/edge-filter:0.1.0@sha256:{d}"),
            format!("localhost/a__b/c.d/e---f:v1.2_3-rc.1@sha256:{d}"),
        ] {
            pinned_image_ref("--image", &r).unwrap();
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let base = InstallArgs { namespace: BASE_NAMESPACE.into(), ..Default::default() };
        let cases: Vec<(InstallArgs, &str)> = vec![
            (InstallArgs { gateway_selector: Some("istio".into()), ..base.clone() }, "want key=value"),
            (InstallArgs { gateway_selector: Some("istio=ingress gateway".into()), ..base.clone() }, "not a valid label value"),
            (InstallArgs { gateway_selector: Some("=x".into()), ..base.clone() }, "not a valid label key"),
            (InstallArgs { gateway_selector: Some("a=1,a=2".into()), ..base.clone() }, "given twice"),
            (InstallArgs { advertise: vec!["1.2.3.4".into()], ..base.clone() }, "want host:port"),
            (InstallArgs { advertise: vec!["1.2.3.4:99999".into()], ..base.clone() }, "is not a port"),
            (InstallArgs { api_proxy_host: Some("https://api.example".into()), ..base.clone() }, "--api-proxy-host"),
            (InstallArgs { gateway_identity: vec!["istio-ingressgateway".into()], ..base.clone() }, "--gateway-identity"),
            (InstallArgs { metadata_host: Some("a.example:443".into()), ..base.clone() }, "--metadata-host"),
            (InstallArgs { export_label: Some("k=yes".into()), ..base.clone() }, "cannot be changed"),
            (InstallArgs { namespace: "Istio_System".into(), ..base.clone() }, "--namespace"),
            (
                InstallArgs { image: Some("registry.example/agent:1.2.3".into()), ..base.clone() },
                "--image \"registry.example/agent:1.2.3\" is not pinned by digest",
            ),
            (InstallArgs { image: Some("registry.example/agent@sha256:abc".into()), ..base.clone() }, "64 lower-case hex"),
            (
                InstallArgs { image: Some(format!("registry.example/Agent@sha256:{}", "a".repeat(64))), ..base.clone() },
                "repository paths are lower case",
            ),
            (
                InstallArgs { image: Some(format!("-registry.example/agent@sha256:{}", "a".repeat(64))), ..base.clone() },
                "is not an image reference: invalid reference format",
            ),
            (InstallArgs { image: Some(format!("agent:-x@sha256:{}", "a".repeat(64))), ..base.clone() }, "not an image reference"),
            (InstallArgs { filter_image: Some(format!("r.example/f@sha256:{}", "a".repeat(64))), ..base.clone() }, "needs --wasmplugin"),
            (
                InstallArgs { filter_image: Some("r.example/f:0.1.0".into()), wasmplugin: true, ..base.clone() },
                "--filter-image \"r.example/f:0.1.0\" is not pinned",
            ),
        ];
        for (a, want) in cases {
            let e = objects(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }
}
