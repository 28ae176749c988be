//! This cluster's facts as Kubernetes has them: the cluster UUID
//! (kube-system's UID), the Istio root CA, the ingress gateway's addresses,
//! the exported Services and their ready endpoints.

use super::KubeOptions;
use crate::facts::LocalFacts;
use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service, ServicePort as KubeServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams};
use multicloud_core::metadata::{ExportedService, IngressGateway, ServicePort};
use std::collections::{BTreeMap, BTreeSet};

/// Istio's mesh mTLS port on the ingress gateway, when no port is named `tls`.
pub const MESH_TLS_PORT: i32 = 15443;

/// Reads what this cluster publishes about itself from the API server.
pub async fn read_local_facts(client: &kube::Client, opts: &KubeOptions) -> Result<LocalFacts> {
    let kube_system = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .context("cannot read Namespace kube-system (its UID is the cluster UUID); grant the agent `get` on namespaces")?;
    let cluster_uuid = kube_system
        .metadata
        .uid
        .ok_or_else(|| anyhow!("Namespace kube-system has no metadata.uid; the API server returned an incomplete object"))?;
    let network_name =
        if opts.network_name.is_empty() { default_network(client, opts, &cluster_uuid).await? } else { opts.network_name.clone() };
    let root_ca = read_root_ca(client, opts).await?;
    let ingress_gateways = if opts.advertise.is_empty() { read_gateways(client, opts).await? } else { opts.advertise.clone() };
    let services = read_exported_services(client, opts).await?;
    Ok(kube_facts(cluster_uuid, root_ca, ingress_gateways, opts, network_name, services))
}

/// The facts a Kubernetes cluster publishes, however they were read (one
/// pass of requests here, the holder's watches in `facts_watch.rs`): the
/// API host from the flags, no local endpoints, the default mesh mode.
pub(super) fn kube_facts(
    cluster_uuid: String,
    root_ca: String,
    ingress_gateways: Vec<IngressGateway>,
    opts: &KubeOptions,
    network_name: String,
    services: Vec<ExportedService>,
) -> LocalFacts {
    LocalFacts {
        cluster_uuid,
        root_ca,
        ingress_gateways,
        api_host: opts.api_host.clone(),
        network_name,
        services,
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    }
}

/// Istio's label for the network a cluster's (or namespace's) workloads are on.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// This cluster's network when `--network-name` is not given: Istio's own
/// setting (the `topology.istio.io/network` label on the agent's namespace,
/// as Istio's multi-network install sets it on istio-system), else one
/// derived from the cluster UUID, so that two clusters never share a network
/// by accident (each sits behind its own gateway).
async fn default_network(client: &kube::Client, opts: &KubeOptions, cluster_uuid: &str) -> Result<String> {
    let ns = Api::<Namespace>::all(client.clone()).get(&opts.namespace).await.with_context(|| {
        format!("cannot read Namespace {} (for its {NETWORK_LABEL} label); grant the agent `get` on namespaces", opts.namespace)
    })?;
    Ok(network_from(Some(&ns), cluster_uuid))
}

/// [`default_network`] from the agent's Namespace object (if read).
pub fn network_from(ns: Option<&Namespace>, cluster_uuid: &str) -> String {
    let label = ns.and_then(|n| n.metadata.labels.as_ref()).and_then(|l| l.get(NETWORK_LABEL)).filter(|n| !n.is_empty());
    label.cloned().unwrap_or_else(|| format!("network-{cluster_uuid}"))
}

/// The root from ConfigMap `istio-ca-root-cert`, if it has one.
pub fn root_from_config_map(cm: Option<&ConfigMap>) -> Option<String> {
    cm.and_then(|cm| cm.data.as_ref()).and_then(|d| d.get("root-cert.pem")).cloned()
}

/// Istio publishes its root in every namespace's `istio-ca-root-cert`; a
/// plugged-in CA also keeps it in `istio-system/cacerts`.
pub async fn read_root_ca(client: &kube::Client, opts: &KubeOptions) -> Result<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &opts.namespace)
        .get_opt("istio-ca-root-cert")
        .await
        .with_context(|| format!("cannot read ConfigMap {}/istio-ca-root-cert; grant the agent `get` on configmaps", opts.namespace))?;
    if let Some(pem) = root_from_config_map(cm.as_ref()) {
        return Ok(pem);
    }
    read_plugged_in_root(client, opts).await
}

/// The root of a plugged-in CA (`istio-system/cacerts`), read when the
/// ConfigMap has none.
pub async fn read_plugged_in_root(client: &kube::Client, opts: &KubeOptions) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get_opt("cacerts")
        .await
        .context("cannot read Secret istio-system/cacerts; grant the agent `get` on that secret")?;
    let bytes = secret.and_then(|s| s.data).and_then(|mut d| d.remove("root-cert.pem"));
    match bytes {
        Some(ByteString(b)) => String::from_utf8(b).context("Secret istio-system/cacerts key root-cert.pem is not UTF-8 PEM"),
        None => bail!(
            "no Istio root CA: neither ConfigMap {}/istio-ca-root-cert nor Secret istio-system/cacerts has key root-cert.pem; \
             is Istio installed and has istiod started?",
            opts.namespace
        ),
    }
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub(crate) async fn read_gateways(client: &kube::Client, opts: &KubeOptions) -> Result<Vec<IngressGateway>> {
    let sel = selector(&opts.gateway_selector);
    let ns = &opts.namespace;
    let list = Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&sel))
        .await
        .with_context(|| format!("cannot list Services {sel} in {ns}; grant the agent `list` on services"))?;
    match gateways_from(&list.items, None, opts)? {
        Gateways::Found(g) => Ok(g),
        Gateways::NeedNodes(node_port) => {
            let nodes = Api::<Node>::all(client.clone())
                .list(&ListParams::default())
                .await
                .context("cannot list Nodes (for the gateway's NodePort addresses); grant the agent `list` on nodes")?;
            match gateways_from(&list.items, Some(&nodes.items), opts)? {
                Gateways::Found(g) => Ok(g),
                Gateways::NeedNodes(_) => bail!("gateway NodePort {node_port}: no Node address"),
            }
        }
    }
}

/// The gateway's addresses from the gateway Services, or what else is
/// needed to know them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gateways {
    Found(Vec<IngressGateway>),
    /// A NodePort gateway without a load-balancer address: the Nodes'
    /// addresses are needed (only then are Nodes read at all).
    NeedNodes(u16),
}

/// [`Gateways`] from the Services labelled with the gateway selector (the
/// first by name), and the Nodes if read. Errors name the Service and what
/// to fix.
pub fn gateways_from(services: &[Service], nodes: Option<&[Node]>, opts: &KubeOptions) -> Result<Gateways> {
    let sel = selector(&opts.gateway_selector);
    let ns = &opts.namespace;
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let svc = services
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no ingress gateway Service labelled {sel} in namespace {ns}; install the Istio ingress gateway or advertise addresses explicitly"))?;
    let name = format!("{ns}/{}", svc.metadata.name.as_deref().unwrap_or_default());
    let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let port =
        ports.iter().find(|p| p.name.as_deref() == Some("tls")).or_else(|| ports.iter().find(|p| p.port == MESH_TLS_PORT)).ok_or_else(
            || anyhow!("gateway Service {name} has no port named tls and no port {MESH_TLS_PORT}; add the mesh TLS port to it"),
        )?;
    let lb: Vec<IngressGateway> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .filter(|a| !a.is_empty())
        .map(|address| port_u16(port.port).map(|port| IngressGateway { address, port }))
        .collect::<Result<_>>()?;
    if !lb.is_empty() {
        return Ok(Gateways::Found(lb));
    }
    let node_port = port.node_port.ok_or_else(|| {
        anyhow!("gateway Service {name} has no load balancer address and no NodePort; wait for the load balancer, or advertise addresses explicitly")
    })?;
    let node_port = port_u16(node_port)?;
    let Some(nodes) = nodes else { return Ok(Gateways::NeedNodes(node_port)) };
    let mut out = Vec::new();
    for node in nodes {
        let addrs = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
        let pick = addrs.iter().find(|a| a.type_ == "ExternalIP").or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"));
        if let Some(a) = pick {
            out.push(IngressGateway { address: a.address.clone(), port: node_port });
        }
    }
    if out.is_empty() {
        bail!("gateway Service {name} is a NodePort but no Node has an ExternalIP or InternalIP; advertise addresses explicitly");
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(Gateways::Found(out))
}

fn port_u16(p: i32) -> Result<u16> {
    u16::try_from(p).map_err(|_| anyhow!("port {p} is out of range"))
}

/// Istio's protocol selection: `appProtocol`, else the port name's prefix.
pub(crate) fn port_protocol(p: &KubeServicePort) -> Option<String> {
    if let Some(ap) = p.app_protocol.as_deref().filter(|s| !s.is_empty()) {
        return Some(ap.to_string());
    }
    const KNOWN: &[&str] = &["http", "http2", "https", "grpc", "grpc-web", "mongo", "mysql", "redis", "tcp", "tls", "udp"];
    let name = p.name.as_deref()?;
    let prefix = match name.split_once('-') {
        // `grpc-web-foo` is grpc-web; `grpc-foo` is grpc.
        Some(_) if name == "grpc-web" || name.starts_with("grpc-web-") => "grpc-web",
        Some((prefix, _)) => prefix,
        None => name,
    };
    KNOWN.contains(&prefix).then(|| prefix.to_string())
}

async fn read_exported_services(client: &kube::Client, opts: &KubeOptions) -> Result<Vec<ExportedService>> {
    let sel = format!("{}=true", opts.export_label);
    let list = Api::<Service>::all(client.clone()).list(&ListParams::default().labels(&sel)).await.with_context(|| {
        format!("cannot list Services labelled {sel} in all namespaces; grant the agent cluster-wide `list` on services")
    })?;
    let mut slices = Vec::new();
    for svc in &list.items {
        let (Some(name), Some(ns)) = (svc.metadata.name.as_deref(), svc.metadata.namespace.as_deref()) else { continue };
        let l = Api::<EndpointSlice>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
            .await
            .with_context(|| format!("cannot list EndpointSlices of Service {ns}/{name}; grant the agent `list` on endpointslices"))?;
        slices.extend(l.items);
    }
    exported_from(&list.items, &slices)
}

/// The label EndpointSlices name their Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The exported Services (already selected by the export label) with their
/// ports and ready endpoints, counted over `slices` (which may hold others'
/// slices too: each Service counts its own, by namespace and label).
pub fn exported_from(services: &[Service], slices: &[EndpointSlice]) -> Result<Vec<ExportedService>> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(name), Some(ns)) = (svc.metadata.name.clone(), svc.metadata.namespace.clone()) else { continue };
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|ps| ps.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|p| {
                Ok(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: port_u16(p.port).with_context(|| format!("exported Service {ns}/{name}"))?,
                    protocol: port_protocol(p),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let own = slices.iter().filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == Some(name.as_str())
        });
        let ready_endpoints = count_ready_endpoints(own)?;
        out.push(ExportedService { hostname: format!("{name}.{ns}.svc.cluster.local"), ports, ready_endpoints });
    }
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(out)
}

/// Ready endpoints over all of a Service's EndpointSlices. A dual-stack
/// Service has one slice per address family for the same pods, so endpoints
/// are counted once per target (pod), or per address when there is none.
fn count_ready_endpoints<'a>(slices: impl Iterator<Item = &'a EndpointSlice>) -> Result<u32> {
    let mut seen = BTreeSet::new();
    for slice in slices {
        for ep in &slice.endpoints {
            // A nil `ready` means unknown; Kubernetes says to treat it as ready.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let id = match &ep.target_ref {
                Some(t) => format!(
                    "{}/{}/{}",
                    t.kind.as_deref().unwrap_or_default(),
                    t.namespace.as_deref().unwrap_or_default(),
                    t.name.as_deref().unwrap_or_default()
                ),
                None => ep.addresses.first().cloned().unwrap_or_default(),
            };
            seen.insert(id);
        }
    }
    u32::try_from(seen.len()).context("too many endpoints")
}
