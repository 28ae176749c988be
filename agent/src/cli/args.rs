//! The command line (clap): every subcommand and flag, names and defaults.
//! `run`'s flags become one validated [`crate::config::Config`].

use super::report::Output;
use super::status::DEFAULT_AGENT;
use crate::host_port::HostPort;
use crate::kube::KubeOptions;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use multicloud_core::metadata::IngressGateway;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "multicloud-agent", version, about = "Istio Multicloud node-local agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Create the federation Ed25519 keypair at PATH (if absent) and print its public key (PEM).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the IstioMulticloud CRD (YAML), as deploy/ carries it.
    Crd,
    /// Print the objects to install (deploy/'s kustomize base, plus components the flags ask
    /// for) as multi-document YAML with these values in place; pipe it to `kubectl apply -f -`.
    Install(super::install::InstallArgs),
    /// One step of a federation key rotation with no failed fetch (docs/operator-guide.md,
    /// "Rotate keys"): `stage` publishes a next key beside the signing key; `promote` signs
    /// with it and keeps the old one published; `finish` stops publishing the old one. Each
    /// step refuses until the one before has been in force for --min-wait-seconds.
    RotateKey {
        #[arg(value_enum)]
        step: crate::keys::RotationStep,
        /// Standalone: the agent's --key file (the ring is PATH, PATH.next, PATH.previous).
        #[arg(long, env = "MULTICLOUD_KEY", required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
        key: Option<PathBuf>,
        /// The Secret istio-multicloud-federation-key in --namespace (in-cluster config or
        /// KUBECONFIG; needs get and update on it: an operator's credentials, not the agent's).
        #[arg(long)]
        kubernetes: bool,
        /// Kubernetes mode: the agent's namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
        namespace: String,
        /// The least time the previous step must have been in force. Default: 90 s before
        /// `promote` (three of the peers' 30 s public refreshes); before `finish`, 660 s (past the
        /// 60 s metadata tokens, and time for istiod to load the remote secrets re-issued at
        /// `promote`).
        #[arg(long)]
        min_wait_seconds: Option<u64>,
    },
    /// Mint a federation token signed with the key at PATH.
    Token {
        #[arg(long)]
        key: PathBuf,
        /// This cluster's UUID (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// The remote cluster's UUID (the token's `aud`).
        #[arg(long)]
        aud: String,
        /// `private-multicluster` or `api`.
        #[arg(long, default_value = "private-multicluster")]
        scope: String,
        /// Lifetime in seconds (at most 60 for metadata tokens).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// One row per peer from a running agent's HTTP port: conditions, last fetch, the peer's root
    /// fingerprint, endpoints pushed, xDS ACK state.
    /// Exit code: 0 every peer Ready, 1 some peer not Ready, 2 the agent cannot be reached.
    Status {
        /// The agent's HTTP port (its --http).
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: String,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Probe one peer end to end: the object, public metadata, private metadata (a fresh token),
    /// the API proxy, the gateways' mesh port. Each step prints PASS/FAIL/SKIP with what to do.
    /// Exit code: 0 when no step fails, 1 otherwise.
    Check {
        /// The IstioMulticloud object naming the peer.
        peer: String,
        /// The agent's HTTP port (used when no --standalone file is given).
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: String,
        /// The standalone file the agent runs with (objects and this cluster's UUID).
        #[arg(long, env = "MULTICLOUD_STANDALONE", conflicts_with = "kubernetes")]
        standalone: Option<PathBuf>,
        /// Standalone: this cluster's federation key (the agent's --key).
        #[arg(long, env = "MULTICLOUD_KEY", required_unless_present = "kubernetes")]
        key: Option<PathBuf>,
        /// Read the object, this cluster's facts and the key from the API server, as the agent
        /// in Kubernetes mode does (in-cluster config or KUBECONFIG; the Kubernetes flags below
        /// must match the agent's).
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        kube: KubeArgs,
        /// HOST=IP:PORT: reach the API proxy HOST at IP:PORT (like curl --resolve).
        #[arg(long)]
        api_host_override: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["standalone", "kubernetes"])))]
pub struct RunArgs {
    /// Standalone mode: read local facts and IstioMulticloud objects from this YAML/JSON file (re-read on change).
    #[arg(long, env = "MULTICLOUD_STANDALONE")]
    pub standalone: Option<PathBuf>,
    /// Kubernetes mode: watch IstioMulticloud objects and local facts through the API server.
    #[arg(long)]
    pub kubernetes: bool,
    /// Standalone mode: the federation key file (PKCS#8 PEM, mode 0600), generated on first start.
    /// Kubernetes mode keeps it in the Secret istio-multicloud-federation-key.
    #[arg(long, env = "MULTICLOUD_KEY", required_if_eq("kubernetes", "false"))]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Address of the agent's HTTP port (/healthz, /readyz, /metrics, /status).
    #[arg(long, default_value = "127.0.0.1:15090")]
    pub http: std::net::SocketAddr,
    /// Write the bound HTTP address here (useful with port 0).
    #[arg(long)]
    pub http_address_file: Option<PathBuf>,
    /// Also write the gateway filter's ECDS resource (binary DiscoveryResponse) here, for a
    /// gateway that reads it from a file instead of ADS.
    #[arg(long)]
    pub edge_ecds_file: Option<PathBuf>,
    /// Serve xDS (ADS, state of the world and delta) on this node-local TCP address, over
    /// mutual TLS: clients present a certificate chained to this cluster's Istio root.
    #[arg(long)]
    pub xds: Option<std::net::SocketAddr>,
    /// SPIFFE ID that may receive the gateway's resources (the edge filter's configuration,
    /// the API proxy credential, the mesh listener and gateway certificate). Repeatable.
    #[arg(long = "xds-gateway-identity", default_value = DEFAULT_GATEWAY_IDENTITY, value_parser = parse_spiffe_id)]
    pub xds_gateway_identity: Vec<String>,
    /// The xDS port's serving certificate chain (PEM); without it a self-signed one is generated at start.
    #[arg(long, requires = "xds_key")]
    pub xds_cert: Option<PathBuf>,
    #[arg(long, requires = "xds_cert")]
    pub xds_key: Option<PathBuf>,
    /// Get the xDS port's serving certificate from istiod's CA at this address (host:port,
    /// Istio's 15012) for the agent's own identity, renewed at half its lifetime, so that the
    /// gateway can verify the agent (deploy/ does this). Until it arrives, a self-signed one serves.
    #[arg(long, conflicts_with = "xds_cert")]
    pub istio_ca_address: Option<String>,
    /// This cluster's Istio root (PEM), to verify istiod's CA.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub istio_ca_root: PathBuf,
    /// A token of the agent's ServiceAccount with audience `istio-ca` (deploy/ projects one).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    pub istio_ca_token: PathBuf,
    /// The cluster ID istiod knows this cluster by (istiod's --clusterID; Istio's default).
    #[arg(long, default_value = "Kubernetes")]
    pub istio_cluster_id: String,
    /// Write the bound xDS TCP address here (useful with port 0).
    #[arg(long)]
    pub xds_address_file: Option<PathBuf>,
    /// SDS name of the workload certificate sidecars present to peers (Istio: "default").
    #[arg(long, default_value = "default")]
    pub workload_cert_secret: String,
    /// Cluster that serves the workload certificate over SDS (Istio: "sds-grpc"; "ads" = the agent).
    #[arg(long, default_value = "sds-grpc")]
    pub workload_cert_sds_cluster: String,
    /// Standalone mode without istio-agent: serve this workload certificate chain (PEM) to
    /// sidecars as SDS secret --workload-cert-secret over ADS (use with --workload-cert-sds-cluster ads).
    #[arg(long, requires = "workload_key")]
    pub workload_cert: Option<PathBuf>,
    #[arg(long, requires = "workload_cert")]
    pub workload_key: Option<PathBuf>,
    /// Standalone mode without istio-agent: the gateway's own workload certificate chain (PEM),
    /// served to the gateway as SDS secret --workload-cert-secret (identity-enforcing mesh port).
    #[arg(long, requires = "gateway_key")]
    pub gateway_cert: Option<PathBuf>,
    #[arg(long, requires = "gateway_cert")]
    pub gateway_key: Option<PathBuf>,
    /// How sidecars share a service between its local endpoints and peers' copies:
    /// balanced (one pool, weighted by ready endpoints) or local-first (peers only when
    /// local endpoints are missing or unhealthy). See docs/traffic.md.
    #[arg(long, default_value = "balanced", value_parser = parse_sameness)]
    pub sameness: multicloud_proto::traffic::Sameness,
    /// Also serve one cluster per peer and service port (outbound|<port>||<host>|multicloud-<peer>)
    /// besides the merged one (outbound|<port>||<host>|multicloud) that holds every copy.
    #[arg(long)]
    pub per_peer_clusters: bool,
    /// Serve the gateway's mesh-port listener (LDS, name multicloud-mesh) bound here; the
    /// mode comes from the local facts' meshMode. Leave unset where istiod programs the port.
    #[arg(long)]
    pub mesh_listen: Option<std::net::SocketAddr>,
    /// The filter module (.wasm) on the agent's filesystem: the agent sends it
    /// inside the filter's ECDS resource, so the gateway needs no file of its
    /// own (deploy/ uses this; the agent image ships the module).
    #[arg(long, conflicts_with = "filter_wasm", required_unless_present = "filter_wasm")]
    pub filter_module: Option<PathBuf>,
    /// Instead: the path of the filter module on the gateway's filesystem
    /// (the gateway must have the file there).
    #[arg(long)]
    pub filter_wasm: Option<String>,
    /// Also write every object's status to this JSON file.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// No longer used: the Lease holder watches the local facts (nothing is re-read on a
    /// timer). Accepted, with a warning, so that older manifests still start.
    #[arg(long, hide = true)]
    pub facts_seconds: Option<u64>,
    /// Steady refresh of healthy peers, seconds.
    #[arg(long, default_value_t = 30)]
    pub refresh_seconds: u64,
    /// First retry delay after a failure, milliseconds (doubles up to --backoff-cap-ms, with jitter).
    #[arg(long, default_value_t = 1000)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    pub backoff_cap_ms: u64,
    /// Retry delay while a remote refuses this cluster's token (HTTP 401 on the private
    /// document: it has not linked this cluster yet, or has not fetched its key), milliseconds.
    /// Short, so that the remote's own link completes the join in seconds; never backed off.
    #[arg(long, default_value_t = 2000)]
    pub join_retry_ms: u64,
    /// Connect and total timeouts of a metadata fetch, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub fetch_timeout_ms: u64,
    /// The API proxy's own credential (standalone: a file holding the ServiceAccount token with
    /// read-only RBAC, see deploy/); re-read when it changes. Served to the gateway as SDS
    /// generic secret `multicloud-api-proxy-credential`, which the gateway's credential
    /// injector attaches to requests the API guard let through.
    #[arg(long)]
    pub api_proxy_credential: Option<PathBuf>,
    /// Write each peer's Istio remote secret (a kubeconfig to the peer's API proxy) as
    /// DIR/<object>.kubeconfig (mode 0600).
    #[arg(long)]
    pub remote_secrets_dir: Option<PathBuf>,
    /// Lifetime of the `scope: api` token in remote secrets; re-issued with a third left.
    #[arg(long, default_value_t = 24 * 3600)]
    pub api_token_ttl_seconds: i64,
    /// TEST BED ONLY: HOST=ADDR connects the remote secret of a peer whose apiHost is HOST[:port]
    /// to ADDR instead (the kubeconfig keeps HOST as `tls-server-name`), like curl --resolve.
    #[arg(long)]
    pub api_host_override: Vec<String>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

#[derive(clap::Args)]
pub struct KubeArgs {
    /// Kubernetes mode: the agent's namespace (Lease, key Secret, gateway Service, root CA ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Kubernetes mode: this replica's name in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "multicloud-agent")]
    pub pod_name: String,
    /// Kubernetes mode: label selector of the ingress gateway Service (k=v,...).
    #[arg(long, default_value = "istio=ingressgateway")]
    pub gateway_selector: String,
    /// Kubernetes mode: Services labelled <export-label>=true are exported to peers.
    #[arg(long, default_value = "istio-multicloud.dev/export")]
    pub export_label: String,
    /// Kubernetes mode: this cluster's Istio network name. Default: the
    /// `topology.istio.io/network` label of --namespace, else `network-<cluster UUID>`.
    #[arg(long, default_value = "")]
    pub network_name: String,
    /// Kubernetes mode: the API proxy's host[:port] as peers reach it.
    #[arg(long, default_value = "")]
    pub api_host: String,
    /// Kubernetes mode: gateway addresses to advertise instead of the Service's (host:port, repeatable).
    #[arg(long)]
    pub advertise: Vec<String>,
    /// Kubernetes mode: the ConfigMap (in --namespace) istiod merges as SHARED_MESH_CONFIG, into
    /// which the lease holder writes the peers' roots (caCertificates) and networks
    /// (meshNetworks); deploy/ creates it. Empty: write nothing into Istio's configuration.
    #[arg(long, default_value = crate::sinks::mesh_config::DEFAULT_NAME)]
    pub istio_mesh_config: String,
    /// The revision of this cluster's istiod, if it has one: peers' istiods may then also read
    /// the mesh ConfigMap `istio-<revision>` in --namespace through the API proxy (`istio` always).
    #[arg(long, default_value = "")]
    pub istio_revision: String,
    /// Kubernetes mode: the filter is attached by this Istio WasmPlugin (in --namespace) instead of
    /// the EnvoyFilter; the lease holder writes the edge configuration into its spec.pluginConfig.
    #[arg(long)]
    pub wasmplugin: Option<String>,
}

impl KubeArgs {
    /// The Kubernetes flags (`run --kubernetes` and `check --kubernetes`) as
    /// the agent uses them; errors name the flag.
    pub fn options(&self) -> anyhow::Result<KubeOptions> {
        let k = self;
        let mut gateway_selector = BTreeMap::new();
        for kv in k.gateway_selector.split(',').filter(|s| !s.is_empty()) {
            let (key, v) = kv.split_once('=').with_context(|| format!("--gateway-selector {kv:?}: want key=value"))?;
            gateway_selector.insert(key.to_string(), v.to_string());
        }
        let mut advertise = Vec::new();
        for a in &k.advertise {
            let hp = HostPort::parse(a).map_err(|e| anyhow::anyhow!("--advertise {a:?}: {e}"))?;
            let port = hp.port.with_context(|| format!("--advertise {a:?}: want host:port"))?;
            advertise.push(IngressGateway { address: hp.host, port });
        }
        Ok(KubeOptions {
            namespace: k.namespace.clone(),
            lease_name: "istio-multicloud-agent".into(),
            holder_identity: k.pod_name.clone(),
            gateway_selector,
            export_label: k.export_label.clone(),
            network_name: k.network_name.clone(),
            api_host: k.api_host.clone(),
            advertise,
        })
    }
}

/// The identity of Istio's default ingress gateway (Helm chart `gateway`, service account
/// `istio-ingressgateway-service-account` in `istio-system`).
pub const DEFAULT_GATEWAY_IDENTITY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

fn parse_spiffe_id(s: &str) -> Result<String, String> {
    match s.strip_prefix("spiffe://") {
        Some(rest) if rest.contains('/') && !rest.starts_with('/') => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a SPIFFE ID: want spiffe://<trust domain>/<path>, e.g. {DEFAULT_GATEWAY_IDENTITY}")),
    }
}

fn parse_sameness(s: &str) -> Result<multicloud_proto::traffic::Sameness, String> {
    s.parse()
}
