//! Simulated clusters joined by the real agent: per cluster, an agent in
//! standalone mode and a gateway Envoy whose filter the agent configures,
//! with the metadata endpoint on TLS (a per-cluster edge CA, pinned by the
//! peers in `spec.metadata.ca`).

use crate::agent::{Agent, AgentOptions};
use crate::apiserver::RecordedApiServer;
use crate::envoy::{Envoy, EnvoySpec};
use crate::fixtures::{free_port, ClusterIdentity, EdgeCa};
use crate::gateway::{ApiRoute, EdgeSource, Gateway, GatewayOptions, ServerTls};
use crate::upstream::RecordingUpstream;
use crate::{hosts, wait_until, SimCluster};
use multicloud_core::metadata::{ExportedService, IngressGateway, ServicePort};
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
}

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

    /// Rewrites the agent's standalone file from `peers` and `services`.
    pub fn rewrite_standalone(&mut self) {
        let text = standalone_file_with(self.sim, &self.id, &self.peers, &self.services);
        self.agent.rewrite_standalone(&text);
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
        if let Some(api) = opts.api {
            extra_args.extend(["--remote-secrets-dir".to_string(), "{dir}/remote-secrets".into()]);
            extra_args.extend(["--api-token-ttl-seconds".to_string(), api.token_ttl_seconds.to_string()]);
            for (j, s) in sims.iter().enumerate().filter(|(j, _)| *j != i) {
                extra_args.extend(["--api-host-override".to_string(), format!("{}={}:{}", api_host(*s), s.ip(hosts::GATEWAY), ports[j])]);
            }
        }
        let dir = Agent::prepare(*sim);
        let ecds = dir.path().join("edge.pb");
        let agent = Agent::start(
            dir,
            AgentOptions {
                cluster: *sim,
                standalone: standalone_file(*sim, &ids[i], &peers),
                ecds_file: ecds.clone(),
                refresh_seconds: 1,
                backoff_base_ms: 200,
                backoff_cap_ms: 1000,
                workload_cert: Some(ids[i].workload_cert("abc", "foo")),
                api_proxy_credential: credential.clone(),
                extra_args,
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
        });
        specs.push(Gateway::spec_with(GatewayOptions {
            cluster: *sim,
            upstream: upstream.addr(),
            source: match opts.ads {
                Some(delta) => EdgeSource::Ads { xds: agent.xds_addr(), delta },
                None => EdgeSource::Agent(ecds),
            },
            tls: Some(ServerTls { cert_pem, key_pem, port: ports[i] }),
            api,
        }));
        apis.push((apiserver, credential));
        agents.push(agent);
        upstreams.push(upstream);
        all_peers.push(peers);
    }
    let gateways = Envoy::start_all(specs);
    ids.into_iter()
        .zip(cas)
        .zip(ports)
        .zip(upstreams)
        .zip(agents)
        .zip(gateways)
        .zip(sims)
        .zip(all_peers)
        .zip(apis)
        .map(|((((((((id, edge_ca), tls_port), upstream), agent), gateway), sim), peers), (apiserver, api_credential))| Cluster {
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
        })
        .collect()
}
