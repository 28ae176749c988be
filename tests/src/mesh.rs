//! Simulated clusters joined by the real agent: per cluster, an agent in
//! standalone mode and a gateway Envoy whose filter the agent configures,
//! with the metadata endpoint on TLS (a per-cluster edge CA, pinned by the
//! peers in `spec.metadata.ca`).

use crate::agent::{Agent, AgentOptions};
use crate::envoy::{Envoy, EnvoySpec};
use crate::fixtures::{free_port, ClusterIdentity, EdgeCa};
use crate::gateway::{EdgeSource, Gateway, GatewayOptions, ServerTls};
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
}

/// What a cluster is told about its peers.
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
}

/// The standalone file for `sim` knowing `peers`.
pub fn standalone_file(sim: SimCluster, id: &ClusterIdentity, peers: &[PeerRef]) -> String {
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
            "services": [ExportedService {
                hostname: "foo.abc.svc.cluster.local".into(),
                ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) }],
                ready_endpoints: 1,
            }],
        },
        "objects": objects,
    })
    .to_string()
}

/// Starts clusters that all federate with each other: agents first (they
/// write the filter's configuration), then the gateways, in parallel.
pub fn start_full_mesh(sims: &[SimCluster]) -> Vec<Cluster> {
    let ids: Vec<ClusterIdentity> = sims.iter().map(|s| ClusterIdentity::generate(&Cluster::object_name(*s))).collect();
    let cas: Vec<EdgeCa> = sims.iter().map(|s| EdgeCa::generate(&Cluster::object_name(*s))).collect();
    let ports: Vec<u16> = sims.iter().map(|s| free_port(s.ip(hosts::GATEWAY))).collect();
    let mut agents = Vec::new();
    let mut specs: Vec<EnvoySpec> = Vec::new();
    let mut upstreams = Vec::new();
    for (i, sim) in sims.iter().enumerate() {
        let peers: Vec<PeerRef> = sims
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, s)| PeerRef { object_name: Cluster::object_name(*s), endpoint: Cluster::metadata_endpoint(*s, ports[j]), ca_pem: cas[j].pem() })
            .collect();
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
            },
        );
        wait_until(&format!("{} to write the edge configuration", agent.name), Duration::from_secs(30), || {
            agent.get("/readyz").and_then(|r| if r.status == 200 { Ok(()) } else { Err(r.text()) })
        });
        let upstream = RecordingUpstream::start(sim.ip(hosts::UPSTREAM), true);
        let (cert_pem, key_pem) = cas[i].server_cert(sim.ip(hosts::GATEWAY));
        specs.push(Gateway::spec_with(GatewayOptions {
            cluster: *sim,
            upstream: upstream.addr(),
            source: EdgeSource::Agent(ecds),
            tls: Some(ServerTls { cert_pem, key_pem, port: ports[i] }),
        }));
        agents.push(agent);
        upstreams.push(upstream);
    }
    let gateways = Envoy::start_all(specs);
    ids.into_iter()
        .zip(cas)
        .zip(ports)
        .zip(upstreams)
        .zip(agents)
        .zip(gateways)
        .zip(sims)
        .map(|((((((id, edge_ca), tls_port), upstream), agent), gateway), sim)| Cluster { sim: *sim, id, edge_ca, tls_port, upstream, agent, gateway })
        .collect()
}
