//! Real tier: simulated clusters whose agents run in Kubernetes mode against
//! real API servers ([`crate::kube::ControlPlane`]), installed the way an
//! operator installs them: `multicloud-agent install` applied with
//! server-side apply, the agent process run with the DaemonSet's own args (the
//! test bed replaces only listen addresses and in-pod file paths) and with a
//! kubeconfig holding a TokenRequest token of deploy/'s ServiceAccount, so
//! deploy/'s RBAC is what the agent has.
//!
//! What Istio and Kubernetes controllers would write, the test writes as
//! admin and says so: the `istio-ca-root-cert` ConfigMap (istiod), the
//! gateway Service's load-balancer address (a cloud controller) and the
//! exported Service's EndpointSlice (kube-controller-manager). The gateway is
//! the test bed's Envoy with the built filter, fed by the agent over xDS.

use crate::agent::{Agent, AgentOptions, KubeMode};
use crate::envoy::Envoy;
use crate::fixtures::{free_port, ClusterIdentity, EdgeCa};
use crate::gateway::{ApiRoute, EdgeSource, Gateway, GatewayOptions, ServerTls, XdsClient};
use crate::kube::ControlPlane;
use crate::upstream::RecordingUpstream;
use crate::{hosts, paths, wait_until, SimCluster};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One simulated cluster of the real tier.
pub struct KubeCluster {
    pub sim: SimCluster,
    pub cp: &'static ControlPlane,
    /// Its Istio root (the ConfigMap istiod would write) and workload certificates.
    pub id: ClusterIdentity,
    /// The cluster UUID: kube-system's UID on this API server.
    pub uuid: String,
    pub edge_ca: EdgeCa,
    /// The gateway's TLS port for the metadata endpoint.
    pub tls_port: u16,
    /// The mesh port published through the gateway Service.
    pub mesh_port: u16,
    /// The port of its API host (`--api-proxy-host`).
    pub api_port: u16,
    pub agents: Vec<Agent>,
    /// The test bed's gateway Envoy (none with Istio: the istiod-run gateway
    /// serves the metadata endpoint, the API proxy and the mesh port).
    pub gateway: Option<Envoy>,
    /// The metadata endpoint peers name in their IstioMulticloud.
    pub metadata_endpoint: String,
    /// With [`KubeMeshOptions::istio`]: the cluster's istiod and its gateway.
    pub istiod: Option<crate::istio::Istiod>,
    pub istio_gateway: Option<crate::istio::IstioGateway>,
    pub upstream: RecordingUpstream,
    /// The agent ServiceAccount's kubeconfig (deploy/'s identity).
    pub agent_kubeconfig: PathBuf,
    /// The options it was started with (install args include its API host).
    pub opts: KubeMeshOptions,
    dir: tempfile::TempDir,
}

/// How the real-tier clusters are set up.
#[derive(Clone, Default)]
pub struct KubeMeshOptions {
    /// Agent replicas per cluster (each its own POD_NAME; one holds the Lease).
    pub replicas: usize,
    /// More `multicloud-agent install` flags.
    pub install_args: Vec<String>,
    /// More `multicloud-agent run` flags for every replica.
    pub agent_args: Vec<String>,
    /// Real Istio under the agents (tests/tests/istio_mesh.rs): per cluster an
    /// istiod reading its mesh config from ConfigMaps (`istio`, and the
    /// agent's `istio-multicloud-mesh` as SHARED_MESH_CONFIG, multi-root on)
    /// and an istiod-run gateway that serves the mesh port (deploy/'s
    /// AUTO_PASSTHROUGH Gateway) and whose certificate the test bed's gateway
    /// presents to the agent. No stand-ins: istiod writes the root, and the
    /// test writes no `foo` Service.
    pub istio: bool,
    /// With `istio`: the istio.io/istio snapshot every cluster runs
    /// (default: the pin, [`crate::paths::IstioBuild::current`]).
    pub istio_build: Option<crate::paths::IstioBuild>,
    /// With `istio`: more istiod environment, per cluster (by index; a
    /// missing entry adds nothing).
    pub istiod_env: Vec<Vec<(String, String)>>,
    /// With `istio`: more environment for the istiod-run gateway's
    /// pilot-agent, per cluster (by index; a missing entry adds nothing).
    pub istio_gateway_env: Vec<Vec<(String, String)>>,
    /// Start every cluster unlinked; [`link_all`] applies the objects later
    /// (to time a join from the objects' apply, not from the processes' start).
    pub defer_link: bool,
    /// The agents with deploy/'s timing (refresh, backoff, facts interval)
    /// instead of the test bed's short one: what a user's join takes.
    pub deploy_timing: bool,
}

/// istiod's environment in the real-Istio mesh: [`crate::istio::ISTIOD_ENV`]
/// plus what deploy/ asks of an operator (docs/istio.md, "What the agent
/// writes into Istio"): the agent's ConfigMap merged into the mesh config,
/// and the peers' roots merged into the trust bundle pushed to proxies.
pub const ISTIOD_MESH_ENV: &[(&str, &str)] = &[("SHARED_MESH_CONFIG", "istio-multicloud-mesh"), ("ISTIO_MULTIROOT_MESH", "true")];

/// The Istio network of a simulated cluster (istio-system's
/// `topology.istio.io/network` label; the agent publishes it).
pub fn network(sim: SimCluster) -> String {
    format!("network-{}", sim.0)
}

pub fn object_name(sim: SimCluster) -> String {
    format!("cluster-{}", sim.0)
}

pub fn api_host(sim: SimCluster) -> String {
    format!("api.cluster-{}.example", sim.0)
}

fn metadata_endpoint(sim: SimCluster, port: u16) -> String {
    format!("https://{}:{port}/metadata", sim.ip(hosts::GATEWAY))
}

/// `multicloud-agent install ARGS`, run as an operator would.
pub fn install(args: &[String]) -> String {
    let out = std::process::Command::new(paths::agent()).arg("install").args(args).output().expect("multicloud-agent install");
    assert!(out.status.success(), "install {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The agent container's args in the DaemonSet that `yaml` holds.
pub fn daemonset_args(yaml: &str) -> Vec<String> {
    for v in serde_saphyr::from_multiple::<serde_json::Value>(yaml).expect("yaml") {
        if v["kind"] == "DaemonSet" {
            let c = v["spec"]["template"]["spec"]["containers"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == "agent"));
            let args = c.and_then(|c| c["args"].as_array()).expect("the agent container's args");
            return args.iter().map(|a| a.as_str().expect("string arg").to_string()).collect();
        }
    }
    panic!("no DaemonSet in the install output");
}

impl KubeCluster {
    /// `kubectl get imc NAME` as a person reads it: the READY column.
    pub fn imc_ready_column(&self, name: &str) -> String {
        let out = self.cp.kubectl_ok(&["get", "imc", name]);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        let i = header.iter().position(|h| *h == "READY").expect("a READY column");
        row.get(i).copied().unwrap_or_default().to_string()
    }

    /// The object's status as the API server has it.
    pub fn imc_status(&self, name: &str) -> serde_json::Value {
        self.cp.get_json(&["imc", name]).map(|o| o["status"].clone()).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `kubectl get imc NAME` shows Ready=True.
    pub fn wait_imc_ready(&self, name: &str, timeout: Duration) {
        wait_until(&format!("cluster {}: imc {name} Ready=True on the API server", self.sim.0), timeout, || {
            let s = self.imc_status(name);
            let ready = s["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
            match ready {
                Some(c) if c["status"] == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts one more agent replica named `pod_name`.
    pub fn start_replica(&self, pod_name: &str) -> Agent {
        start_agent(self.sim, &self.agent_kubeconfig, pod_name, &self.opts, &self.dir, None)
    }
}

/// What an operator provides for deploy/components/metadata-route: the
/// Secret `multicloud-metadata-tls` in istio-system, a certificate for
/// `host` from a new edge CA of `sim` (its files written into `dir`); the CA.
pub fn create_metadata_tls(cp: &ControlPlane, sim: SimCluster, host: &str, dir: &std::path::Path) -> EdgeCa {
    let edge_ca = EdgeCa::generate(&format!("cluster-{}", sim.0));
    let (cert, key) = edge_ca.server_cert_dns(host);
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert).expect("write");
    std::fs::write(&k, key).expect("write");
    let (cert_flag, key_flag) = (format!("--cert={}", c.display()), format!("--key={}", k.display()));
    cp.kubectl_ok(&["create", "secret", "tls", "multicloud-metadata-tls", "-n", "istio-system", &cert_flag, &key_flag]);
    edge_ca
}

/// The agent as the DaemonSet runs it (`args`, and `extra` for what names
/// in-pod files or addresses), replica `agent-0`, with deploy/'s
/// ServiceAccounts from `cp`: its own for the API server, the API proxy's
/// token as `--api-proxy-credential`; its files kept in its prepared
/// directory `adir` (a restart reads them again). The real-Istio tier's
/// single agent.
pub fn start_daemonset_agent(cp: &ControlPlane, sim: SimCluster, adir: tempfile::TempDir, args: Vec<String>, extra: &[String]) -> Agent {
    let dir = adir.path().to_path_buf();
    let kubeconfig = dir.join("agent.kubeconfig");
    cp.service_account_kubeconfig("istio-system", "istio-multicloud-agent", &kubeconfig);
    std::fs::write(dir.join("api-proxy-token"), cp.token("istio-system", "istio-multicloud-api-proxy", 3600)).expect("write");
    let mut extra_args = vec!["--api-proxy-credential".into(), dir.join("api-proxy-token").display().to_string()];
    extra_args.extend(extra.iter().cloned());
    Agent::start(
        adir,
        AgentOptions {
            cluster: sim,
            standalone: String::new(),
            ecds_file: dir.join("edge.pb"),
            refresh_seconds: 1,
            backoff_base_ms: 200,
            backoff_cap_ms: 1000,
            workload_cert: None,
            api_proxy_credential: None,
            extra_args,
            kubernetes: Some(KubeMode { kubeconfig, pod_name: "agent-0".into(), args, resolve_peers: false }),
        },
    )
}

fn start_agent(
    sim: SimCluster,
    kubeconfig: &std::path::Path,
    pod_name: &str,
    opts: &KubeMeshOptions,
    dir: &tempfile::TempDir,
    xds_port: Option<u16>,
) -> Agent {
    let rendered = install(&opts.install_args);
    let adir = Agent::prepare(sim);
    if let Some(port) = xds_port {
        // The port the EnvoyFilter names (tests/src/agent.rs reuses it).
        std::fs::write(adir.path().join("xds-port"), port.to_string()).expect("write xds port");
    }
    let mut extra_args = vec!["--api-proxy-credential".to_string(), dir.path().join("api-proxy-token").display().to_string()];
    // deploy/'s DaemonSet sets none of these: the agent's defaults.
    let (refresh_seconds, backoff_base_ms, backoff_cap_ms) = if opts.deploy_timing { (30, 1000, 60_000) } else { (1, 200, 1000) };
    extra_args.extend(opts.agent_args.iter().cloned());
    Agent::start(
        adir,
        AgentOptions {
            cluster: sim,
            standalone: String::new(),
            ecds_file: dir.path().join(format!("edge-{pod_name}.pb")),
            refresh_seconds,
            backoff_base_ms,
            backoff_cap_ms,
            workload_cert: None,
            api_proxy_credential: None,
            extra_args,
            kubernetes: Some(KubeMode {
                // With Istio, peers are named by host (metadata endpoint).
                resolve_peers: opts.istio,
                kubeconfig: kubeconfig.to_path_buf(),
                pod_name: pod_name.to_string(),
                args: daemonset_args(&rendered),
            }),
        },
    )
}

/// Writes, as admin, what istiod, a cloud controller and
/// kube-controller-manager would: the root ConfigMap, the gateway Service
/// with its load-balancer address, and an exported Service `foo.abc` with
/// one ready endpoint.
fn local_facts(cp: &ControlPlane, sim: SimCluster, id: &ClusterIdentity, mesh_port: u16) {
    let root = serde_json::to_string(&id.root_pem()).expect("json");
    cp.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio-ca-root-cert, namespace: istio-system}}\ndata: {{root-cert.pem: {root}}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: istio-ingressgateway, namespace: istio-system, labels: {{istio: ingressgateway}}}}\n\
         spec: {{type: LoadBalancer, selector: {{istio: ingressgateway}}, ports: [{{name: tls, port: {mesh_port}, targetPort: 15443}}]}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: abc}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: foo, namespace: abc, labels: {{istio-multicloud.dev/export: 'true'}}}}\n\
         spec: {{selector: {{app: foo}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: foo-1, namespace: abc, labels: {{kubernetes.io/service-name: foo}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.1.{n}.7], conditions: {{ready: true}}}}]\n",
        n = sim.0
    ))
    .expect("local facts");
    // The load balancer's address: a cloud controller writes it into the status.
    cp.set_load_balancer_ip("istio-system", "istio-ingressgateway", sim.ip(hosts::GATEWAY));
}

/// The real-Istio mesh's facts of one cluster: istio-system labelled with the
/// cluster's network; istiod ([`ISTIOD_MESH_ENV`], mesh config from
/// ConfigMaps); the istiod-run gateway (labels `istio: ingressgateway`, the
/// `istio-ingressgateway` Service with the mesh port as its `tls` port and
/// targetPort, on its own network) and the Service's load-balancer address
/// (what a cloud controller writes): the test bed's gateway address, where
/// the istiod-run gateway's listener (bound on every address) answers.
fn istio_facts(
    cp: &ControlPlane,
    sim: SimCluster,
    mesh_port: u16,
    https_port: u16,
    build: &crate::paths::IstioBuild,
    extra_env: &[(String, String)],
    gateway_env: Vec<(String, String)>,
) -> (crate::istio::Istiod, crate::istio::IstioGateway) {
    use crate::istio::{GatewayOptions as IstioGatewayOptions, IstioGateway, Istiod, ISTIOD_ENV};
    cp.install_prerequisites();
    cp.kubectl_ok(&["label", "namespace", "istio-system", &format!("topology.istio.io/network={}", network(sim)), "--overwrite"]);
    let mut env: Vec<(&str, &str)> = ISTIOD_ENV.iter().chain(ISTIOD_MESH_ENV).copied().collect();
    env.extend(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let istiod = Istiod::start_build(cp, build, &env, true, true);
    let net = network(sim);
    let mut env = vec![
        // What Istio's gateway chart sets for a network gateway.
        ("ISTIO_META_NETWORK".into(), net.clone()),
        ("ISTIO_META_REQUESTED_NETWORK_VIEW".into(), net),
        // The peers' roots by PCDS (re-served as ROOTCA).
        ("PROXY_CONFIG_XDS_AGENT".into(), "true".into()),
    ];
    env.extend(gateway_env);
    let gw = IstioGateway::start(
        cp,
        &istiod,
        IstioGatewayOptions {
            name: "istio-ingressgateway-0".into(),
            host: hosts::ISTIO_GATEWAY,
            service_ports: vec![("tls".into(), mesh_port, mesh_port), ("https".into(), 443, https_port)],
            env,
            ..Default::default()
        },
    );
    cp.set_load_balancer_ip("istio-system", "istio-ingressgateway", sim.ip(hosts::GATEWAY));
    (istiod, gw)
}

/// `install`'s output with the one thing a loopback test bed cannot have:
/// DNS for `multicloud-agent-xds.istio-system.svc.cluster.local`, which the
/// EnvoyFilter's cluster resolves (STRICT_DNS). That address and port, and
/// nothing else, become the agent's loopback xDS address.
pub fn agent_address_on_loopback(rendered: &str, sim: SimCluster, xds_port: u16) -> String {
    let service = "address: multicloud-agent-xds.istio-system.svc.cluster.local";
    assert_eq!(rendered.matches(service).count(), 1, "the EnvoyFilter's cluster names the agent's Service once");
    assert_eq!(rendered.matches("port_value: 15011").count(), 1);
    rendered
        .replace(service, &format!("address: {}", sim.ip(hosts::AGENT)))
        .replace("port_value: 15011", &format!("port_value: {xds_port}"))
}

/// What the API proxy's route (deploy/components/api-proxy-route) and the
/// metadata route need from outside deploy/: the operator's certificates for
/// the API and metadata hosts (Secrets `multicloud-api-tls`,
/// `multicloud-metadata-tls`, from the cluster's edge CA, which peers pin), and
/// what Kubernetes itself has: the cluster CA in ConfigMap
/// `kube-root-ca.crt` (kube-controller-manager publishes it) and endpoints
/// for `kubernetes.default` (the API server's own reconciler writes them,
/// but the API server refuses loopback addresses in an EndpointSlice, so a
/// ServiceEntry for the same host gives istiod the API server's address).
fn api_proxy_facts(cp: &ControlPlane, sim: SimCluster, edge_ca: &EdgeCa) {
    let (cert, key) = edge_ca.server_cert_dns(&api_host(sim));
    let (mcert, mkey) = edge_ca.server_cert_dns(&metadata_host(sim));
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let objects = serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "multicloud-api-tls", "namespace": "istio-system"},
         "data": {"tls.crt": b64(&cert), "tls.key": b64(&key)}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "multicloud-metadata-tls", "namespace": "istio-system"},
         "data": {"tls.crt": b64(&mcert), "tls.key": b64(&mkey)}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "istio-system"},
         "data": {"ca.crt": cp.ca_pem}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "kubernetes-apiserver-stand-in", "namespace": "default"},
         "spec": {"hosts": ["kubernetes.default.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                  "ports": [{"number": 443, "name": "https", "protocol": "HTTPS", "targetPort": cp.addr().port()}],
                  "endpoints": [{"address": cp.addr().ip().to_string()}]}},
    ]);
    for o in objects.as_array().into_iter().flatten() {
        cp.apply(&o.to_string()).expect("API proxy facts");
    }
}

/// Applies the IstioMulticloud objects naming each of `peers`.
pub fn link(cp: &ControlPlane, peers: &[(SimCluster, u16, String)]) {
    let peers: Vec<(SimCluster, String, String)> =
        peers.iter().map(|(s, port, ca)| (*s, metadata_endpoint(*s, *port), ca.clone())).collect();
    link_endpoints(cp, &peers);
}

/// Applies the IstioMulticloud objects naming each of `peers`: (cluster,
/// metadata endpoint, the CA of its gateway's certificate).
pub fn link_endpoints(cp: &ControlPlane, peers: &[(SimCluster, String, String)]) {
    for (sim, endpoint, ca) in peers {
        cp.apply(&imc_object(*sim, endpoint, ca)).expect("apply IstioMulticloud");
    }
}

/// The IstioMulticloud object (YAML) that names cluster `sim` by its
/// metadata endpoint and the CA of its gateway's certificate.
pub fn imc_object(sim: SimCluster, endpoint: &str, ca: &str) -> String {
    let ca = serde_json::to_string(ca).expect("json");
    format!(
        "apiVersion: istio-multicloud.dev/v1alpha1\nkind: IstioMulticloud\nmetadata: {{name: {}}}\n\
         spec: {{metadataEndpoint: '{endpoint}', metadata: {{ca: {ca}}}}}\n",
        object_name(sim),
    )
}

/// The metadata host of a simulated cluster (install's `--metadata-host`
/// with Istio; resolved by [`crate::istio::with_peer_names`]).
pub fn metadata_host(sim: SimCluster) -> String {
    format!("metadata.cluster-{}.example", sim.0)
}

/// Starts the real-tier clusters `sims`, each linked to every other.
pub fn start_kube_mesh(sims: &[SimCluster], opts: KubeMeshOptions) -> Vec<KubeCluster> {
    let cps = ControlPlane::shared_all(sims);
    let ids: Vec<ClusterIdentity> = sims.iter().map(|s| ClusterIdentity::generate(&object_name(*s))).collect();
    let cas: Vec<EdgeCa> = sims.iter().map(|s| EdgeCa::generate(&object_name(*s))).collect();
    let ca_pems: Vec<String> = cas.iter().map(EdgeCa::pem).collect();
    let tls_ports: Vec<u16> = sims.iter().map(|s| free_port(s.ip(hosts::GATEWAY))).collect();
    // With Istio: the istiod-run gateway's HTTPS port (the Service's 443
    // targetPort, bound on every address), where the API proxy's route is.
    let https_ports: Vec<u16> = sims.iter().map(|_| free_port(std::net::Ipv4Addr::UNSPECIFIED)).collect();
    let mut out = Vec::new();
    for (i, (id, edge_ca)) in ids.into_iter().zip(cas).enumerate() {
        let (sim, cp) = (sims[i], cps[i]);
        cp.install_prerequisites();
        // With Istio, peers' istiods reach the API host by name (see
        // `Istiod::start_with`) on the istiod-run gateway's HTTPS port.
        let api_port = if opts.istio { https_ports[i] } else { tls_ports[i] };
        let mut install_args = vec![format!("--api-proxy-host={}:{api_port}", api_host(sim))];
        if opts.istio {
            install_args.push(format!("--metadata-host={}", metadata_host(sim)));
        }
        install_args.extend(opts.install_args.iter().cloned());
        let mesh_port = free_port(std::net::Ipv4Addr::UNSPECIFIED);
        let (mut istiod, mut istio_gateway, mut xds_port) = (None, None, None);
        if opts.istio {
            install_args.push(format!("--mesh-port={mesh_port}"));
            let port = free_port(sim.ip(hosts::AGENT));
            cp.apply(&agent_address_on_loopback(&install(&install_args), sim, port)).expect("install output applies");
            api_proxy_facts(cp, sim, &edge_ca);
            let build = opts.istio_build.clone().unwrap_or_else(crate::paths::IstioBuild::current);
            let extra = opts.istiod_env.get(i).cloned().unwrap_or_default();
            let gateway_env = opts.istio_gateway_env.get(i).cloned().unwrap_or_default();
            let (d, g) = istio_facts(cp, sim, mesh_port, https_ports[i], &build, &extra, gateway_env);
            (istiod, istio_gateway, xds_port) = (Some(d), Some(g), Some(port));
        } else {
            cp.apply(&install(&install_args)).expect("install output applies");
            local_facts(cp, sim, &id, mesh_port);
        }
        let dir = tempfile::Builder::new().prefix(&format!("multicloud-agent-{}-kube-", sim.0)).tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("agent.kubeconfig");
        cp.service_account_kubeconfig("istio-system", "istio-multicloud-agent", &kubeconfig);
        // What the kubelet mounts from the api-proxy token Secret: a real
        // token of the API proxy's ServiceAccount.
        std::fs::write(dir.path().join("api-proxy-token"), cp.token("istio-system", "istio-multicloud-api-proxy", 3600)).expect("write");
        let endpoint = |j: usize| {
            let s = sims[j];
            if opts.istio {
                format!("https://{}:{}/metadata", metadata_host(s), https_ports[j])
            } else {
                metadata_endpoint(s, tls_ports[j])
            }
        };
        let peers: Vec<(SimCluster, String, String)> =
            sims.iter().enumerate().filter(|(j, _)| *j != i).map(|(j, s)| (*s, endpoint(j), ca_pems[j].clone())).collect();
        if !opts.defer_link {
            link_endpoints(cp, &peers);
        }
        let uuid = cp.get_json(&["namespace", "kube-system"]).expect("kube-system")["metadata"]["uid"].as_str().expect("uid").to_string();
        // The peers' API hosts are names no DNS here resolves: the remote
        // secrets connect to the peer's gateway instead (keeping the name as
        // the TLS server name), like `curl --resolve`.
        let mut agent_args = opts.agent_args.clone();
        // Under istiod the agent's xDS certificate comes from istiod's CA, as
        // deploy/ has it (the gateway verifies it).
        if let Some(istiod) = &istiod {
            agent_args.extend(crate::istio::agent_ca_args(cp, istiod, dir.path()));
        }
        for (j, s) in sims.iter().enumerate().filter(|(j, _)| *j != i && !opts.istio) {
            agent_args.extend(["--api-host-override".to_string(), format!("{}={}:{}", api_host(*s), s.ip(hosts::GATEWAY), tls_ports[j])]);
        }
        let opts = KubeMeshOptions { install_args, agent_args, ..opts.clone() };
        let agents: Vec<Agent> = (0..opts.replicas.max(1))
            .map(|r| start_agent(sim, &kubeconfig, &format!("agent-{r}"), &opts, &dir, xds_port.filter(|_| r == 0)))
            .collect();
        let upstream = RecordingUpstream::start(sim.ip(hosts::UPSTREAM), true);
        let gateway = (!opts.istio).then(|| {
            let (cert_pem, key_pem) = edge_ca.server_cert(sim.ip(hosts::GATEWAY));
            let mut spec = Gateway::spec_with(GatewayOptions {
                cluster: sim,
                upstream: upstream.addr(),
                source: EdgeSource::Ads { xds: XdsClient::gateway(&id, agents[0].xds_addr()), delta: true },
                tls: Some(ServerTls { cert_pem, key_pem, port: tls_ports[i] }),
                // The API proxy in front of this cluster's real API server, with
                // the API proxy ServiceAccount's real token as the credential.
                api: Some(ApiRoute {
                    host: api_host(sim),
                    apiserver: cp.addr(),
                    tls: Some(edge_ca.server_cert_dns(&api_host(sim))),
                    upstream_ca: Some(cp.ca_pem.clone()),
                }),
            });
            add_mesh_port_stand_in(&mut spec, sim, &id, mesh_port);
            Envoy::start_all(vec![spec]).pop().expect("gateway")
        });
        out.push(KubeCluster {
            sim,
            cp,
            id,
            uuid,
            edge_ca,
            tls_port: tls_ports[i],
            mesh_port,
            api_port,
            agents,
            gateway,
            metadata_endpoint: endpoint(i),
            istiod,
            istio_gateway,
            upstream,
            agent_kubeconfig: kubeconfig,
            opts,
            dir,
        });
    }
    // Up means serving: each istiod-run gateway has the agent's filter
    // configuration and answers its public document (so that a join timed
    // from the objects' apply does not include the gateways' start).
    for c in out.iter().filter(|c| c.opts.istio) {
        let gw = c.istio_gateway.as_ref().expect("the istiod-run gateway");
        let last_access = || gw.log().lines().rfind(|l| l.starts_with("ACCESS")).unwrap_or_default().to_string();
        gw.wait_public_json(&metadata_host(c.sim), &c.edge_ca.pem(), Duration::from_secs(120), last_access);
        // The API proxy's guard has its configuration too: a request without
        // a token gets the guard's 401 (not Envoy's 500 for a missing filter
        // configuration).
        let api = SocketAddr::from((gw.ip, c.api_port));
        let host = api_host(c.sim);
        wait_until(
            &format!("cluster {}: the API proxy's guard answers", c.sim.0),
            Duration::from_secs(120),
            || match crate::mtls::get_from(api, &host, Some(&c.edge_ca.pem()), None, &host, "/api/v1/namespaces", &[]) {
                crate::mtls::Outcome::Http(401, body) if body.contains("TokenMissing") => Ok(()),
                other => Err(format!("{other:?}; {}", last_access())),
            },
        );
    }
    out
}

/// Links every cluster of `clusters` to every other (their IstioMulticloud
/// objects, as [`start_kube_mesh`] applies them without
/// [`KubeMeshOptions::defer_link`]), all clusters at once.
pub fn link_all(clusters: &[KubeCluster]) {
    std::thread::scope(|s| {
        for c in clusters {
            let peers: Vec<(SimCluster, String, String)> =
                clusters.iter().filter(|o| o.sim != c.sim).map(|o| (o.sim, o.metadata_endpoint.clone(), o.edge_ca.pem())).collect();
            s.spawn(move || link_endpoints(c.cp, &peers));
        }
    });
}

/// What istiod programs on a gateway's mesh port under Istio
/// (`AUTO_PASSTHROUGH`: TLS passed through by SNI to the service's
/// endpoint, whose sidecar terminates it with a workload certificate from
/// this cluster's root), written into the gateway's bootstrap since no
/// istiod runs in this tier: `outbound_.80_._.foo.abc.svc.cluster.local` on
/// the mesh port goes to a listener standing in for foo's sidecar (mTLS with
/// `abc/foo`'s certificate), which forwards to the upstream.
fn add_mesh_port_stand_in(spec: &mut crate::envoy::EnvoySpec, sim: SimCluster, id: &ClusterIdentity, mesh_port: u16) {
    let ip = sim.ip(hosts::GATEWAY);
    let inbound = free_port(ip);
    let (cert, key) = id.workload_cert("abc", "foo");
    let listeners = format!(
        r#"{header}    - filter_chain_match: {{server_names: ["outbound_.80_._.foo.abc.svc.cluster.local"]}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: mesh, cluster: foo_sidecar}}
  - name: foo_sidecar_stand_in
    address: {{socket_address: {{address: {ip}, port_value: {inbound}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: foo_inbound, cluster: local_upstream}}
{tls}"#,
        header = crate::gateway::tls_inspector_listener("mesh_passthrough_stand_in", ip, mesh_port),
        tls = crate::gateway::server_tls_yaml(&cert, &key),
    );
    let clusters = format!(
        "  - name: foo_sidecar\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: foo_sidecar\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {inbound}}}}}}}\n"
    );
    spec.bootstrap = spec.bootstrap.replacen("  listeners:\n", &format!("  listeners:\n{listeners}"), 1).replacen(
        "  clusters:\n",
        &format!("  clusters:\n{clusters}"),
        1,
    );
}
