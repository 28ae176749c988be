//! Simulated clusters joined by the real agent: per cluster, an agent in
//! standalone mode and a gateway Envoy whose filter the agent configures,
//! with the metadata endpoint on TLS (a per-cluster edge CA, pinned by the
//! peers in `spec.metadata.ca`).

use crate::agent::{Agent, AgentOptions};
use crate::apiserver::RecordedApiServer;
use crate::envoy::{Envoy, EnvoySpec};
use crate::fixtures::{free_port, ClusterIdentity, EdgeCa};
use crate::gateway::{ApiRoute, EdgeSource, Gateway, GatewayOptions, ServerTls, XdsClient, GATEWAY_SERVICE_ACCOUNT};
use crate::sidecar::{LocalRouteTls, TrafficSidecar};
use crate::upstream::RecordingUpstream;
use crate::{hosts, wait_until, SimCluster};
use multicloud_core::metadata::{ExportedService, IngressGateway, MeshMode, ServicePort};
use multicloud_proto::traffic::Sameness;
use std::time::Duration;

/// One simulated cluster, before or after start.
pub struct Cluster {
    pub sim: SimCluster,
    pub id: ClusterIdentity,
    pub edge_ca: EdgeCa,
    pub tls_port: u16,
    pub upstream: RecordingUpstream,
    pub agent: Agent,
    pub gateway: Envoy,
    /// What the standalone file says (rewrite with [`Cluster::rewrite_standalone`]).
    pub peers: Vec<PeerRef>,
    pub services: Vec<ExportedService>,
    /// With [`MeshOptions::api`]: the recorded API server and the proxy credential.
    pub apiserver: Option<RecordedApiServer>,
    pub api_credential: Option<String>,
    /// With [`MeshOptions::traffic`]: the workload's sidecar, its echo app and the ports.
    pub traffic: Option<ClusterTraffic>,
}

/// A cluster's workload in a traffic test bed.
pub struct ClusterTraffic {
    pub sidecar: Envoy,
    pub echo: RecordingUpstream,
    /// The sidecar's inbound (mTLS) port: this cluster's endpoint of its services.
    pub inbound_port: u16,
    /// The gateway's mesh port (agent-served listener `multicloud-mesh`).
    pub mesh_port: u16,
    pub mode: MeshMode,
    /// Whether this cluster runs (and exports) `foo.abc`.
    pub runs_foo: bool,
}

/// How the simulated clusters are wired.
#[derive(Clone, Copy, Default)]
pub struct MeshOptions {
    /// Gateways get the filter's configuration over ADS (`Some(delta)`)
    /// instead of from the agent's ECDS file.
    pub ads: Option<bool>,
    /// The API proxy: per cluster a recorded API server behind the gateway
    /// (`api.cluster-<n>.example`, on `edge` by Host and on `edge_tls` by
    /// SNI), the agent serving the proxy credential and writing remote
    /// secrets (`{agent dir}/remote-secrets`) with tokens of this lifetime.
    pub api: Option<ApiOptions>,
    /// Workloads and mesh ports (needs [`MeshOptions::ads`]).
    pub traffic: Option<TrafficOptions>,
    /// The agents also serve per-peer clusters (`--per-peer-clusters`).
    pub per_peer_clusters: bool,
}

/// The traffic test bed: per cluster a sidecar (outbound + inbound) in front
/// of an echo app, and the gateway's mesh port served by the agent.
#[derive(Clone, Copy)]
pub struct TrafficOptions {
    pub mode: MeshMode,
    pub sameness: Sameness,
    /// Which clusters (by index) run `foo.abc` (and export it). Every
    /// cluster runs `secret.abc`, which none exports.
    pub foo_in: &'static [bool],
    /// Each sidecar also routes Host [`crate::sidecar::LOCAL_ROUTE_HOST`]
    /// straight to its own inbound port (the benchmark's local baseline).
    pub local_route: bool,
    /// Each sidecar's inbound port closes a connection after one request,
    /// so every call from a peer is a new mTLS handshake (what a test of
    /// certificates changing under load needs: pooled connections would
    /// carry the calls on handshakes made before the change).
    pub one_request_per_connection: bool,
}

pub const FOO: &str = "foo.abc.svc.cluster.local";
pub const SECRET: &str = "secret.abc.svc.cluster.local";

#[derive(Clone, Copy)]
pub struct ApiOptions {
    pub token_ttl_seconds: i64,
}

/// The proxy credential (a stand-in ServiceAccount token) of cluster `sim`.
pub fn api_proxy_credential(sim: SimCluster) -> String {
    format!("proxy-sa-token-of-cluster-{}-{}", sim.0, crate::fixtures::random_uuid())
}

pub fn api_host(sim: SimCluster) -> String {
    format!("api.cluster-{}.example", sim.0)
}

/// What a cluster is told about its peers.
#[derive(Clone)]
pub struct PeerRef {
    pub object_name: String,
    pub endpoint: String,
    pub ca_pem: String,
}

impl Cluster {
    pub fn metadata_endpoint(sim: SimCluster, port: u16) -> String {
        format!("https://{}:{port}/metadata", sim.ip(hosts::GATEWAY))
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.listener("edge"), path)
    }

    pub fn object_name(sim: SimCluster) -> String {
        format!("cluster-{}", sim.0)
    }

    /// Rewrites the agent's standalone file from `peers` and `services`
    /// (and, in a traffic test bed, `traffic`).
    pub fn rewrite_standalone(&mut self) {
        let text = match &self.traffic {
            Some(t) => traffic_standalone_file(self.sim, &self.id, &self.peers, t.mode, t.mesh_port, t.inbound_port, t.runs_foo),
            None => standalone_file_with(self.sim, &self.id, &self.peers, &self.services),
        };
        self.agent.rewrite_standalone(&text);
    }

    /// How a workload `ns/sa` of this cluster reaches its agent's xDS port.
    pub fn xds_client(&self, ns: &str, sa: &str) -> XdsClient {
        XdsClient::workload(&self.id, self.agent.xds_addr(), ns, sa)
    }

    /// The application's call to `host` through its sidecar.
    pub fn call(&self, host: &str, headers: &[(&str, &str)]) -> Result<crate::http::Resp, String> {
        let t = self.traffic.as_ref().expect("a traffic test bed");
        let url = format!("http://{}/whoami", t.sidecar.listener("outbound"));
        let mut h = vec![("host", host)];
        h.extend_from_slice(headers);
        crate::http::try_request("GET", &url, &h)
    }
}

pub fn default_services() -> Vec<ExportedService> {
    vec![ExportedService {
        hostname: "foo.abc.svc.cluster.local".into(),
        ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) }],
        ready_endpoints: 1,
    }]
}

/// The standalone file for `sim` knowing `peers`.
pub fn standalone_file(sim: SimCluster, id: &ClusterIdentity, peers: &[PeerRef]) -> String {
    standalone_file_with(sim, id, peers, &default_services())
}

pub fn standalone_file_with(sim: SimCluster, id: &ClusterIdentity, peers: &[PeerRef], services: &[ExportedService]) -> String {
    let objects: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "apiVersion": "istio-multicloud.dev/v1alpha1",
                "kind": "IstioMulticloud",
                "metadata": {"name": p.object_name},
                "spec": {"metadataEndpoint": p.endpoint, "metadata": {"ca": p.ca_pem}}
            })
        })
        .collect();
    serde_json::json!({
        "cluster": {
            "clusterUUID": id.uuid,
            "rootCA": id.root_pem(),
            "ingressGateways": [IngressGateway { address: sim.ip(hosts::GATEWAY).to_string(), port: 15443 }],
            "apiHost": format!("api.cluster-{}.example:443", sim.0),
            "networkName": format!("network-{}", sim.0),
            "services": services,
        },
        "objects": objects,
    })
    .to_string()
}

/// The standalone file of a traffic test bed's cluster: its gateway's mesh
/// port, its mode, its local endpoints (`secret.abc`, and `foo.abc` when it
/// runs it, both on the sidecar's inbound port) and its exports (`foo.abc`
/// when it runs it).
pub fn traffic_standalone_file(
    sim: SimCluster,
    id: &ClusterIdentity,
    peers: &[PeerRef],
    mode: MeshMode,
    mesh_port: u16,
    inbound_port: u16,
    runs_foo: bool,
) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&standalone_file_with(sim, id, peers, &[])).expect("json");
    let endpoint = format!("{}:{inbound_port}", sim.ip(hosts::SIDECAR));
    let mut local = vec![serde_json::json!({"hostname": SECRET, "port": 80, "addresses": [endpoint]})];
    let mut services = vec![];
    if runs_foo {
        local.push(serde_json::json!({"hostname": FOO, "port": 80, "addresses": [endpoint]}));
        services.push(ExportedService {
            hostname: FOO.into(),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) }],
            ready_endpoints: 1,
        });
    }
    let c = &mut v["cluster"];
    c["ingressGateways"] = serde_json::json!([{"address": sim.ip(hosts::GATEWAY).to_string(), "port": mesh_port}]);
    c["meshMode"] = serde_json::json!(mode);
    c["localEndpoints"] = serde_json::json!(local);
    c["services"] = serde_json::json!(services);
    v.to_string()
}

/// A traffic test bed (gateways and sidecars over ADS, state of the world):
/// every gateway in `mode`, sidecars sharing by `sameness`, `foo.abc` run
/// by the clusters `foo_in` marks.
pub fn start_traffic_mesh(sims: &[SimCluster], mode: MeshMode, sameness: Sameness, foo_in: &'static [bool]) -> Vec<Cluster> {
    start_mesh(
        sims,
        MeshOptions {
            ads: Some(false),
            traffic: Some(TrafficOptions { mode, sameness, foo_in, local_route: false, one_request_per_connection: false }),
            ..Default::default()
        },
    )
}

/// Waits until every cluster's agent reports every peer `Ready`.
pub fn wait_joined(clusters: &[Cluster], timeout: Duration) {
    for c in clusters {
        for p in &c.peers {
            c.agent.wait_condition(&p.object_name, "Ready", "True", timeout);
        }
    }
}

/// Starts clusters that all federate with each other: agents first (they
/// write the filter's configuration), then the gateways, in parallel.
pub fn start_full_mesh(sims: &[SimCluster]) -> Vec<Cluster> {
    start_mesh(sims, MeshOptions::default())
}

pub fn start_mesh(sims: &[SimCluster], opts: MeshOptions) -> Vec<Cluster> {
    let ids: Vec<ClusterIdentity> = sims.iter().map(|s| ClusterIdentity::generate(&Cluster::object_name(*s))).collect();
    let cas: Vec<EdgeCa> = sims.iter().map(|s| EdgeCa::generate(&Cluster::object_name(*s))).collect();
    let ports: Vec<u16> = sims.iter().map(|s| free_port(s.ip(hosts::GATEWAY))).collect();
    let mut agents = Vec::new();
    let mut specs: Vec<EnvoySpec> = Vec::new();
    let mut upstreams = Vec::new();
    let mut all_peers = Vec::new();
    let mut apis = Vec::new();
    let (mut sidecar_specs, mut traffic_parts) = (Vec::new(), Vec::new());
    for (i, sim) in sims.iter().enumerate() {
        let peers: Vec<PeerRef> = sims
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, s)| PeerRef {
                object_name: Cluster::object_name(*s),
                endpoint: Cluster::metadata_endpoint(*s, ports[j]),
                ca_pem: cas[j].pem(),
            })
            .collect();
        let credential = opts.api.map(|_| api_proxy_credential(*sim));
        let mut extra_args = Vec::new();
        if opts.per_peer_clusters {
            extra_args.push("--per-peer-clusters".to_string());
        }
        if let Some(api) = opts.api {
            extra_args.extend(["--remote-secrets-dir".to_string(), "{dir}/remote-secrets".into()]);
            extra_args.extend(["--api-token-ttl-seconds".to_string(), api.token_ttl_seconds.to_string()]);
            for (j, s) in sims.iter().enumerate().filter(|(j, _)| *j != i) {
                extra_args.extend(["--api-host-override".to_string(), format!("{}={}:{}", api_host(*s), s.ip(hosts::GATEWAY), ports[j])]);
            }
        }
        let dir = Agent::prepare(*sim);
        let ecds = dir.path().join("edge.pb");
        let mut standalone = standalone_file(*sim, &ids[i], &peers);
        let mut traffic_ports = None;
        if let Some(t) = opts.traffic {
            assert!(opts.ads.is_some(), "the traffic test bed needs the agent's ADS");
            let (mesh_port, inbound_port) = (free_port(sim.ip(hosts::GATEWAY)), free_port(sim.ip(hosts::SIDECAR)));
            let runs_foo = t.foo_in.get(i).copied().unwrap_or(false);
            standalone = traffic_standalone_file(*sim, &ids[i], &peers, t.mode, mesh_port, inbound_port, runs_foo);
            let (gc, gk) = ids[i].workload_cert(GATEWAY_SERVICE_ACCOUNT.0, GATEWAY_SERVICE_ACCOUNT.1);
            std::fs::write(dir.path().join("gateway.crt"), gc).expect("write gateway cert");
            std::fs::write(dir.path().join("gateway.key"), gk).expect("write gateway key");
            extra_args.extend([
                "--mesh-listen".to_string(),
                format!("{}:{mesh_port}", sim.ip(hosts::GATEWAY)),
                "--sameness".into(),
                match t.sameness {
                    Sameness::Balanced => "balanced".into(),
                    Sameness::LocalFirst => "local-first".into(),
                },
                "--gateway-cert".into(),
                "{dir}/gateway.crt".into(),
                "--gateway-key".into(),
                "{dir}/gateway.key".into(),
            ]);
            traffic_ports = Some((t.mode, mesh_port, inbound_port, runs_foo, t.local_route, t.one_request_per_connection));
        }
        let agent = Agent::start(
            dir,
            AgentOptions {
                cluster: *sim,
                standalone,
                ecds_file: ecds.clone(),
                refresh_seconds: 1,
                backoff_base_ms: 200,
                backoff_cap_ms: 1000,
                workload_cert: Some(ids[i].workload_cert("abc", "foo")),
                api_proxy_credential: credential.clone(),
                extra_args,
                kubernetes: None,
            },
        );
        wait_until(&format!("{} to write the edge configuration", agent.name), Duration::from_secs(30), || {
            agent.get("/readyz").and_then(|r| if r.status == 200 { Ok(()) } else { Err(r.text()) })
        });
        let upstream = RecordingUpstream::start(sim.ip(hosts::UPSTREAM), true);
        let (cert_pem, key_pem) = cas[i].server_cert(sim.ip(hosts::GATEWAY));
        let apiserver = opts.api.map(|_| RecordedApiServer::start(sim.ip(hosts::APISERVER)));
        let api = apiserver.as_ref().map(|a| ApiRoute {
            host: api_host(*sim),
            apiserver: a.addr(),
            tls: Some(cas[i].server_cert_dns(&api_host(*sim))),
            upstream_ca: None,
        });
        specs.push(Gateway::spec_with(GatewayOptions {
            cluster: *sim,
            upstream: upstream.addr(),
            source: match opts.ads {
                Some(delta) => EdgeSource::Ads { xds: XdsClient::gateway(&ids[i], agent.xds_addr()), delta },
                None => EdgeSource::Agent(ecds),
            },
            tls: Some(ServerTls { cert_pem, key_pem, port: ports[i] }),
            api,
        }));
        if let Some((mode, mesh_port, inbound_port, runs_foo, local_route, one_request_per_connection)) = traffic_ports {
            let echo = RecordingUpstream::start_echo(sim.ip(hosts::APP), &Cluster::object_name(*sim));
            sidecar_specs.push(
                TrafficSidecar {
                    cluster: *sim,
                    xds: XdsClient::workload(&ids[i], agent.xds_addr(), "abc", "foo"),
                    inbound_port,
                    app: echo.addr(),
                    services: vec![FOO.into(), SECRET.into()],
                    local_route: local_route.then(|| {
                        let (cert_pem, key_pem) = ids[i].workload_cert("abc", "foo");
                        LocalRouteTls { cert_pem, key_pem, root_pem: ids[i].root_pem() }
                    }),
                    one_request_per_connection,
                }
                .spec(),
            );
            traffic_parts.push(Some((echo, inbound_port, mesh_port, mode, runs_foo)));
        } else {
            traffic_parts.push(None);
        }
        apis.push((apiserver, credential));
        agents.push(agent);
        upstreams.push(upstream);
        all_peers.push(peers);
    }
    let n_gateways = specs.len();
    specs.extend(sidecar_specs);
    let mut gateways = Envoy::start_all(specs);
    let mut sidecars = gateways.split_off(n_gateways).into_iter();
    let traffic: Vec<Option<ClusterTraffic>> = traffic_parts
        .into_iter()
        .map(|p| {
            p.map(|(echo, inbound_port, mesh_port, mode, runs_foo)| ClusterTraffic {
                sidecar: sidecars.next().expect("one sidecar per traffic cluster"),
                echo,
                inbound_port,
                mesh_port,
                mode,
                runs_foo,
            })
        })
        .collect();
    ids.into_iter()
        .zip(cas)
        .zip(ports)
        .zip(upstreams)
        .zip(agents)
        .zip(gateways)
        .zip(sims)
        .zip(all_peers)
        .zip(apis)
        .zip(traffic)
        .map(|(((((((((id, edge_ca), tls_port), upstream), agent), gateway), sim), peers), (apiserver, api_credential)), traffic)| {
            Cluster {
                sim: *sim,
                id,
                edge_ca,
                tls_port,
                upstream,
                agent,
                gateway,
                peers,
                services: default_services(),
                apiserver,
                api_credential,
                traffic,
            }
        })
        .collect()
}
