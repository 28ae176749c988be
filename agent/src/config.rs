//! The agent's configuration for `run`: every flag checked in one place
//! ([`Config::from_args`]), errors naming the flag. The result is logged
//! once at start and shown on `/status` (`config`): it holds paths and
//! settings only, never the contents of a key, token or certificate file.

use crate::cli::args::{KubeArgs, RunArgs};
use crate::kube::KubeOptions;
use anyhow::{bail, Context as _, Result};
use multicloud_proto::traffic::Sameness;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `run` needs, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub mode: Mode,
    /// The HTTP port (`/healthz`, `/readyz`, `/metrics`, `/status`, `/xds`).
    pub http: SocketAddr,
    pub http_address_file: Option<PathBuf>,
    /// Also write the gateway filter's ECDS resource here.
    pub edge_ecds_file: Option<PathBuf>,
    pub xds: XdsConfig,
    pub data_plane: DataPlaneConfig,
    /// Where the gateway gets the filter module.
    pub filter: FilterSource,
    pub status_file: Option<PathBuf>,
    pub timing: TimingConfig,
    /// The API proxy's own credential file (its content is never logged).
    pub api_proxy_credential: Option<PathBuf>,
    /// Standalone mode: write peers' remote secrets here (Kubernetes mode
    /// always writes them as Secrets).
    pub remote_secrets_dir: Option<PathBuf>,
    pub api_token_ttl_seconds: i64,
    /// The mesh ConfigMaps peers' istiods may read through the API proxy
    /// (`namespace/name`: `istio`, and `istio-<revision>` with `--istio-revision`).
    pub mesh_config_maps: Vec<String>,
    /// TEST BED ONLY: API host → address the remote secret connects to.
    pub api_host_overrides: BTreeMap<String, String>,
    pub log_format: LogFormat,
    /// Flags given that no longer do anything (logged as warnings at start).
    #[serde(skip)]
    pub ignored_flags: Vec<String>,
}

/// Where desired state comes from, and where the federation key lives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Mode {
    /// `--standalone FILE`: facts and objects from the file, the key in `--key`.
    Standalone { file: PathBuf, key: PathBuf },
    /// `--kubernetes`: the API server; the key in a Secret.
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        options: KubeOptions,
        /// `--wasmplugin`: the WasmPlugin that gets the edge configuration.
        wasmplugin: Option<String>,
        /// `--istio-mesh-config`: the ConfigMap that gets the peers' roots
        /// and networks; none: nothing is written into Istio's configuration.
        istio_mesh_config: Option<String>,
    },
}

/// The xDS port.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsConfig {
    /// `--xds`: serve ADS here (mutual TLS); none: no xDS port.
    pub listen: Option<SocketAddr>,
    pub address_file: Option<PathBuf>,
    /// SPIFFE IDs that may receive the gateway's resources.
    pub gateway_identities: Vec<String>,
    /// `--xds-cert/--xds-key`; none: a self-signed certificate made at start.
    pub serving_cert: Option<CertKeyFiles>,
    /// `--istio-ca-address`: the serving certificate from istiod's CA instead.
    pub istio_ca: Option<crate::istio_ca::IstioCaConfig>,
}

/// What the xDS sink serves besides the peers' resources.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneConfig {
    pub workload_cert_secret: String,
    pub workload_cert_sds_cluster: String,
    /// `--workload-cert/--workload-key`: served to sidecars over ADS.
    pub workload_cert: Option<CertKeyFiles>,
    /// `--gateway-cert/--gateway-key`: served to the gateway over ADS.
    pub gateway_cert: Option<CertKeyFiles>,
    #[serde(serialize_with = "sameness")]
    pub sameness: Sameness,
    pub per_peer_clusters: bool,
    pub mesh_listen: Option<SocketAddr>,
}

/// A certificate chain file and its key file (paths only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertKeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertKeyFiles {
    fn pair(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Option<CertKeyFiles> {
        match (cert, key) {
            (Some(cert), Some(key)) => Some(CertKeyFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        }
    }
}

/// `--filter-module FILE` (sent to the gateway inside its ECDS resource) or
/// `--filter-wasm PATH` (a file on the gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FilterSource {
    Module(PathBuf),
    GatewayPath(String),
}

/// Timing knobs, with the floors the agent has always applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimingConfig {
    /// Steady refresh of healthy peers (at least 1 s).
    #[serde(serialize_with = "duration")]
    pub refresh: Duration,
    /// First retry delay (at least 10 ms).
    #[serde(serialize_with = "duration")]
    pub backoff_base: Duration,
    /// Longest retry delay (at least the base as given).
    #[serde(serialize_with = "duration")]
    pub backoff_cap: Duration,
    /// Retry delay while a remote answers 401 to the private document (at least 100 ms).
    #[serde(serialize_with = "duration")]
    pub join_retry: Duration,
    #[serde(serialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "duration")]
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Installs the process's log subscriber (stderr, `RUST_LOG` or `info`).
    pub fn init(self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        match self {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
    }
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn sameness<S: Serializer>(v: &Sameness, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        Sameness::Balanced => "balanced",
        Sameness::LocalFirst => "local-first",
    })
}

impl Config {
    /// Checks `run`'s flags beyond what clap checks; errors name the flag.
    pub fn from_args(args: RunArgs) -> Result<Config> {
        let log_format = match args.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("--log-format {other:?}: use text or json"),
        };
        let mode = if args.kubernetes {
            Mode::Kubernetes {
                options: args.kube.options()?,
                wasmplugin: args.kube.wasmplugin.clone(),
                istio_mesh_config: Some(args.kube.istio_mesh_config.clone()).filter(|n| !n.is_empty()),
            }
        } else {
            let file = args.standalone.clone().context("--standalone FILE is required without --kubernetes")?;
            let key = args.key.clone().context("--key FILE is required in standalone mode")?;
            Mode::Standalone { file, key }
        };
        let filter = match (&args.filter_module, &args.filter_wasm) {
            (Some(file), _) => FilterSource::Module(file.clone()),
            (None, Some(path)) => FilterSource::GatewayPath(path.clone()),
            (None, None) => bail!("give --filter-module FILE (sent to the gateway) or --filter-wasm PATH (on the gateway)"),
        };
        let mut api_host_overrides = BTreeMap::new();
        for o in &args.api_host_override {
            let (h, a) = o.split_once('=').with_context(|| format!("--api-host-override {o:?}: want HOST=ADDR"))?;
            api_host_overrides.insert(h.to_string(), a.to_string());
        }
        Ok(Config {
            mode,
            http: args.http,
            http_address_file: args.http_address_file.clone(),
            edge_ecds_file: args.edge_ecds_file.clone(),
            xds: XdsConfig {
                listen: args.xds,
                address_file: args.xds_address_file.clone(),
                gateway_identities: args.xds_gateway_identity.clone(),
                serving_cert: CertKeyFiles::pair(&args.xds_cert, &args.xds_key),
                istio_ca: args.istio_ca_address.as_ref().map(|address| crate::istio_ca::IstioCaConfig {
                    address: address.clone(),
                    root_file: args.istio_ca_root.clone(),
                    token_file: args.istio_ca_token.clone(),
                    cluster_id: args.istio_cluster_id.clone(),
                    lifetime: Duration::from_secs(24 * 3600),
                }),
            },
            data_plane: DataPlaneConfig {
                workload_cert_secret: args.workload_cert_secret.clone(),
                workload_cert_sds_cluster: args.workload_cert_sds_cluster.clone(),
                workload_cert: CertKeyFiles::pair(&args.workload_cert, &args.workload_key),
                gateway_cert: CertKeyFiles::pair(&args.gateway_cert, &args.gateway_key),
                sameness: args.sameness,
                per_peer_clusters: args.per_peer_clusters,
                mesh_listen: args.mesh_listen,
            },
            filter,
            status_file: args.status_file.clone(),
            timing: TimingConfig {
                refresh: Duration::from_secs(args.refresh_seconds.max(1)),
                backoff_base: Duration::from_millis(args.backoff_base_ms.max(10)),
                backoff_cap: Duration::from_millis(args.backoff_cap_ms.max(args.backoff_base_ms)),
                join_retry: Duration::from_millis(args.join_retry_ms.max(100)),
                connect_timeout: Duration::from_millis(args.connect_timeout_ms),
                fetch_timeout: Duration::from_millis(args.fetch_timeout_ms),
            },
            api_proxy_credential: args.api_proxy_credential.clone(),
            remote_secrets_dir: args.remote_secrets_dir.clone(),
            api_token_ttl_seconds: args.api_token_ttl_seconds,
            mesh_config_maps: mesh_config_maps(&args.kube)?,
            api_host_overrides,
            log_format,
            ignored_flags: args
                .facts_seconds
                .map(|_| "--facts-seconds is ignored: the Lease holder watches the local facts instead of re-reading them".to_string())
                .into_iter()
                .collect(),
        })
    }

    /// The configuration as `/status` shows it and the start log prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `--istio-revision`: the mesh ConfigMaps a peer's istiod reads from this
/// cluster (istio/istio#58455: `istio`, or `istio-<revision>`).
fn mesh_config_maps(k: &KubeArgs) -> Result<Vec<String>> {
    let ns = &k.namespace;
    let mut out = vec![format!("{ns}/istio")];
    let rev = k.istio_revision.as_str();
    if !rev.is_empty() {
        let ok = rev.len() <= 57
            && rev.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !rev.starts_with('-')
            && !rev.ends_with('-');
        if !ok {
            bail!("--istio-revision {rev:?} is not a revision name (lower case letters, digits and '-')");
        }
        out.push(format!("{ns}/istio-{rev}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser as _;
    use multicloud_core::metadata::IngressGateway;

    fn config(flags: &[&str]) -> Result<Config> {
        let cli = Cli::try_parse_from(["multicloud-agent", "run"].iter().chain(flags)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Run(args) = cli.command else { unreachable!() };
        Config::from_args(*args)
    }

    #[test]
    fn defaults_floors_and_paths() {
        let c = config(&["--standalone", "s.yaml", "--key", "k.pem", "--filter-wasm", "/f.wasm", "--backoff-base-ms", "1"]).unwrap();
        assert_eq!(c.mode, Mode::Standalone { file: "s.yaml".into(), key: "k.pem".into() });
        assert_eq!(c.http, "127.0.0.1:15090".parse().unwrap());
        assert_eq!(c.filter, FilterSource::GatewayPath("/f.wasm".into()));
        assert_eq!(c.timing.refresh, Duration::from_secs(30));
        assert_eq!(c.timing.backoff_base, Duration::from_millis(10), "the 10 ms floor");
        assert_eq!(c.timing.backoff_cap, Duration::from_secs(60));
        assert_eq!(c.timing.join_retry, Duration::from_secs(2));
        assert_eq!(c.mesh_config_maps, ["istio-system/istio"]);
        assert_eq!(c.xds.gateway_identities, [crate::cli::args::DEFAULT_GATEWAY_IDENTITY]);
        assert_eq!(c.data_plane.workload_cert_sds_cluster, "sds-grpc");
        let json = c.to_json();
        assert_eq!(json["mode"]["kind"], "standalone");
        assert_eq!(json["mode"]["key"], "k.pem");
        assert_eq!(json["timing"]["refresh"], "30s");
        assert_eq!(json["dataPlane"]["sameness"], "balanced");
    }

    #[test]
    fn bad_flags_are_named() {
        let base = ["--standalone", "s.yaml", "--key", "k.pem", "--filter-wasm", "/f.wasm"];
        let with = |extra: &[&str]| config(&[&base[..], extra].concat()).unwrap_err().to_string();
        assert!(with(&["--log-format", "xml"]).contains("--log-format"));
        assert!(with(&["--api-host-override", "nohost"]).contains("--api-host-override"));
        let e = config(&["--kubernetes", "--filter-wasm", "/f", "--advertise", "nohostport"]).unwrap_err().to_string();
        assert!(e.contains("--advertise"), "{e}");
        let e = config(&["--kubernetes", "--filter-wasm", "/f", "--gateway-selector", "a"]).unwrap_err().to_string();
        assert!(e.contains("--gateway-selector"), "{e}");
        assert!(with(&["--istio-revision", "Canary"]).contains("--istio-revision"));
        let c = config(&[&base[..], &["--istio-revision", "1-30-3"]].concat()).unwrap();
        assert_eq!(c.mesh_config_maps, ["istio-system/istio", "istio-system/istio-1-30-3"]);
    }

    #[test]
    fn kubernetes_mode_carries_its_options() {
        let c = config(&["--kubernetes", "--filter-module", "m.wasm", "--advertise", "gw.example:15443", "--wasmplugin", "edge"]).unwrap();
        let Mode::Kubernetes { options, wasmplugin, istio_mesh_config } = &c.mode else { panic!("{c:?}") };
        assert_eq!(istio_mesh_config.as_deref(), Some("istio-multicloud-mesh"), "on by default");
        assert_eq!(options.advertise, [IngressGateway { address: "gw.example".into(), port: 15443 }]);
        assert_eq!(wasmplugin.as_deref(), Some("edge"));
        assert_eq!(c.filter, FilterSource::Module("m.wasm".into()));
    }
}
