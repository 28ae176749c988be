//! Operator commands of the agent binary: `status` (one row per peer, from
//! the agent's HTTP port) and `check` (an end-to-end probe of one peer).
//! `main.rs` only wires clap to [`status`] and [`check`]; both return the
//! process exit code.

use super::check_kube::{CheckInputError, CheckInputs};
use crate::crd::{condition, IstioMulticloudSpec, IstioMulticloudStatus};
use crate::exchange::{FetchError, FetchPolicy, Remote, Trust};
use crate::facts::LocalFacts;
use multicloud_core::token::Scope;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_NOT_READY: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 2;

pub const DEFAULT_AGENT: &str = "http://127.0.0.1:15090";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `GET <agent><path>` over plain HTTP/1.1; the body on 200.
pub fn agent_get(agent: &str, path: &str) -> Result<String, String> {
    let u = url::Url::parse(agent).map_err(|e| format!("--agent {agent:?} is not a URL: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!("--agent {agent:?}: the agent's HTTP port speaks http://"));
    }
    let host = u.host_str().unwrap_or("127.0.0.1").to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let prefix = u.path().trim_end_matches('/');
    write!(conn, "GET {prefix}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    conn.take(16 * 1024 * 1024).read_to_end(&mut buf).map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("the agent's answer has no HTTP head")?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("{path} answered HTTP {code}"));
    }
    Ok(body.to_string())
}

#[derive(serde::Deserialize)]
struct StatusDoc {
    #[serde(default)]
    objects: BTreeMap<String, IstioMulticloudStatus>,
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub name: String,
    #[serde(rename = "remoteClusterUUID")]
    pub remote_uuid: String,
    pub public: String,
    pub private: String,
    pub ready: String,
    pub reason: String,
    pub message: String,
    pub last_fetch: String,
    pub root_fingerprint: String,
    pub endpoints: Option<u64>,
    pub ack: String,
}

/// `AA:BB:...`: the first 8 bytes of the SHA-256 of the first certificate.
pub fn root_fingerprint(pem: &str) -> Option<String> {
    let b = multicloud_core::pem::CertBundle::from_pem(pem).ok()?;
    let der = b.certs_der.first()?;
    let d = Sha256::digest(der);
    Some(d.iter().take(8).map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

/// The ACK state of every connected proxy, from `/xds`.
pub fn ack_state(xds: &serde_json::Value) -> String {
    let proxies = xds["proxies"].as_array().cloned().unwrap_or_default();
    if proxies.is_empty() {
        return "no proxies".into();
    }
    let mut pending = false;
    for p in &proxies {
        for t in p["types"].as_object().map(|m| m.values().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if t.get("acked_version") != t.get("sent_version") {
                if let Some(m) = t.pointer("/last_nack/message").and_then(|m| m.as_str()) {
                    return format!("NACK: {m}");
                }
                pending = true;
            }
        }
    }
    if pending {
        "pending".into()
    } else {
        "all ACKed".into()
    }
}

pub fn rows(status: &BTreeMap<String, IstioMulticloudStatus>, ack: &str) -> Vec<PeerRow> {
    status
        .iter()
        .map(|(name, s)| {
            let cond = |t: &str| s.condition(t).map_or("Unknown".to_string(), |c| c.status.clone());
            let ready = s.condition(condition::READY);
            let cache = s.metadata_cache.clone().unwrap_or_default();
            let last_fetch = cache
                .private
                .as_ref()
                .map(|p| p.fetched_at.clone())
                .or_else(|| cache.public.as_ref().map(|p| p.fetched_at.clone()))
                .unwrap_or_default();
            let ready_true = ready.is_some_and(|c| c.status == "True");
            PeerRow {
                name: name.clone(),
                remote_uuid: s.remote_cluster_uuid.clone().unwrap_or_default(),
                public: cond(condition::PUBLIC),
                private: cond(condition::PRIVATE),
                ready: cond(condition::READY),
                reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
                message: ready.map(|c| c.message.clone()).unwrap_or_default(),
                last_fetch,
                root_fingerprint: cache.public.as_ref().and_then(|p| root_fingerprint(&p.document.root_ca)).unwrap_or_default(),
                endpoints: match (&cache.private, ready_true) {
                    (Some(p), true) => Some(p.document.services.iter().map(|s| s.ports.len() as u64).sum()),
                    _ => None,
                },
                ack: ack.to_string(),
            }
        })
        .collect()
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            match w.get_mut(i) {
                Some(w) => *w = (*w).max(c.chars().count()),
                None => w.push(c.chars().count()),
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0))).collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// `multicloud-agent status`: prints the rows; the exit code.
pub fn status(agent: &str, output: Output) -> i32 {
    let fetched = agent_get(agent, "/status").and_then(|s| {
        let doc: StatusDoc = serde_json::from_str(&s).map_err(|e| format!("/status is not the agent's status document: {e}"))?;
        let xds: serde_json::Value = agent_get(agent, "/xds").ok().and_then(|x| serde_json::from_str(&x).ok()).unwrap_or_default();
        Ok((doc, xds))
    });
    let (doc, xds) = match fetched {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "error: cannot read the agent's status at {agent}: {e}\n\
                 Is the agent running, and is --agent its HTTP port (multicloud-agent run --http)? \
                 In Kubernetes: kubectl -n istio-system port-forward ds/multicloud-agent 15090, then retry."
            );
            return EXIT_UNREACHABLE;
        }
    };
    let rows = rows(&doc.objects, &ack_state(&xds));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
        Output::Table => {
            if rows.is_empty() {
                println!("no IstioMulticloud objects");
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.remote_uuid.clone(),
                            r.public.clone(),
                            r.private.clone(),
                            r.ready.clone(),
                            r.reason.clone(),
                            r.last_fetch.clone(),
                            r.root_fingerprint.clone(),
                            r.endpoints.map_or("-".into(), |n| n.to_string()),
                            r.ack.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["NAME", "REMOTE UUID", "PUBLIC", "PRIVATE", "READY", "REASON", "LAST FETCH", "ROOT", "ENDPOINTS", "XDS"],
                        &cells
                    )
                );
            }
        }
    }
    if rows.iter().all(|r| r.ready == "True") {
        EXIT_OK
    } else {
        EXIT_NOT_READY
    }
}

/// The result of one `check` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub result: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Step {
    fn pass(step: &str, detail: String) -> Step {
        Step { step: step.into(), result: Outcome::Pass, detail, reason: None, hint: None }
    }
    fn skip(step: &str, detail: String) -> Step {
        Step { step: step.into(), result: Outcome::Skip, detail, reason: None, hint: None }
    }
    fn fail(step: &str, reason: &str, detail: String, hint: String) -> Step {
        Step { step: step.into(), result: Outcome::Fail, detail, reason: Some(reason.into()), hint: Some(hint) }
    }
}

/// Where `check` gets the peer's spec, this cluster's facts and its key.
#[allow(clippy::large_enum_variant)] // one value per process
pub enum CheckSource<'a> {
    /// The standalone file and key file the agent runs with (without a file:
    /// a clear failure naming what the agent at `agent` knows).
    Standalone { file: Option<&'a Path>, key: &'a Path },
    /// Read from the API server by the caller (`check_kube::check_inputs`),
    /// or why it could not be.
    Kubernetes(Result<CheckInputs, CheckInputError>),
}

pub struct CheckArgs<'a> {
    pub peer: &'a str,
    pub agent: &'a str,
    pub source: CheckSource<'a>,
    /// HOST=ADDR: connect to ADDR for the API proxy HOST (like curl --resolve).
    pub api_host_override: &'a [String],
}

fn fetch_hint(e: &FetchError) -> String {
    match e {
        FetchError::ConnectFailed { .. } => "the peer's gateway does not accept connections: is its ingress gateway running, and does spec.metadataEndpoint point at it (address, port, firewall)?".into(),
        FetchError::Timeout { .. } => "the peer's gateway did not answer in time: check the network path and the gateway's health".into(),
        FetchError::TlsVerificationFailed { .. } => "the gateway's certificate is not signed by spec.metadata.ca: put the peer's edge CA there".into(),
        FetchError::TlsHandshakeFailed { .. } => "TLS failed: does the endpoint serve TLS on that port?".into(),
        FetchError::HttpStatus { .. } => "the path is wrong or the filter is not attached: spec.metadataEndpoint must end in /metadata, and the peer's gateway must run the multicloud filter".into(),
        FetchError::Unauthorized { remote_reason, .. } => match remote_reason.as_deref() {
            Some("TokenUnknownPeer") => "the peer has no IstioMulticloud object for this cluster: create one there pointing at this cluster".into(),
            Some("TokenBadSignature") => "the peer knows this cluster under another federation key: --key must be this cluster's key, and the peer must have fetched this cluster's current public.json".into(),
            Some("TokenExpired") | Some("TokenNotYetValid") => "the clocks of the two clusters disagree: check NTP on both".into(),
            _ => "the peer refused the token: see the reason above and the peer agent's status for this cluster".into(),
        },
        _ => "see the message; the agent's `status` shows the same reason".into(),
    }
}

fn load_local(standalone: &Path) -> Result<(LocalFacts, BTreeMap<String, IstioMulticloudSpec>), String> {
    let text = std::fs::read_to_string(standalone).map_err(|e| format!("cannot read {}: {e}", standalone.display()))?;
    let d = crate::sources::standalone::parse(&text).map_err(|e| format!("{}: {e:#}", standalone.display()))?;
    Ok((d.facts, d.peers.into_iter().map(|(k, v)| (k, v.spec)).collect()))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `multicloud-agent check`: runs the steps, prints them; the exit code.
pub fn check(a: &CheckArgs<'_>, output: Output) -> i32 {
    let steps = run_check(a);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&steps).unwrap_or_default()),
        Output::Table => {
            for s in &steps {
                let tag = match s.result {
                    Outcome::Pass => "PASS",
                    Outcome::Fail => "FAIL",
                    Outcome::Skip => "SKIP",
                };
                match &s.reason {
                    Some(r) => println!("{tag}  {:<9} {r}: {}", s.step, s.detail),
                    None => println!("{tag}  {:<9} {}", s.step, s.detail),
                }
                if let Some(h) = &s.hint {
                    println!("      {:<9} what to do: {h}", "");
                }
            }
        }
    }
    if steps.iter().any(|s| s.result == Outcome::Fail) {
        EXIT_NOT_READY
    } else {
        EXIT_OK
    }
}

/// The standalone inputs, each failure pushed as a step.
fn standalone_inputs(a: &CheckArgs<'_>, file: Option<&Path>, key_path: &Path, steps: &mut Vec<Step>) -> Option<CheckInputs> {
    let Some(file) = file else {
        let known = agent_get(a.agent, "/status")
            .ok()
            .and_then(|s| serde_json::from_str::<StatusDoc>(&s).ok())
            .map(|d| d.objects.contains_key(a.peer));
        let detail = match known {
            Some(true) => format!("the agent at {} knows {:?}, but its /status carries no spec", a.agent, a.peer),
            Some(false) => format!("the agent at {} has no object {:?}", a.agent, a.peer),
            None => format!("the agent at {} cannot be reached", a.agent),
        };
        steps.push(Step::fail("object", "SpecUnavailable", detail, "pass --standalone FILE, or --kubernetes".into()));
        return None;
    };
    let (facts, specs) = match load_local(file) {
        Ok(v) => v,
        Err(e) => {
            steps.push(Step::fail("object", "FileInvalid", e, "pass the standalone file the agent runs with (--standalone)".into()));
            return None;
        }
    };
    let Some(spec) = specs.get(a.peer).cloned() else {
        let names: Vec<&String> = specs.keys().collect();
        steps.push(Step::fail(
            "object",
            "NotFound",
            format!("no IstioMulticloud {:?} in {} (objects: {names:?})", a.peer, file.display()),
            "check the name (multicloud-agent status lists them)".into(),
        ));
        return None;
    };
    steps.push(Step::pass("object", format!("{} → {}", a.peer, spec.metadata_endpoint)));
    match crate::keys::load_existing(key_path) {
        Ok(key) => Some(CheckInputs { facts, spec, key }),
        Err(e) => {
            steps.push(Step::fail(
                "key",
                "KeyInvalid",
                format!("{e:#}"),
                "--key must be this cluster's federation key file (the agent's --key)".into(),
            ));
            None
        }
    }
}

pub fn run_check(a: &CheckArgs<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    // (a) The object, this cluster's facts and its key.
    let CheckInputs { facts, spec, key } = match &a.source {
        CheckSource::Kubernetes(Ok(inputs)) => {
            steps.push(Step::pass("object", format!("{} → {} (from the API server)", a.peer, inputs.spec.metadata_endpoint)));
            inputs.clone()
        }
        CheckSource::Kubernetes(Err(CheckInputError { reason, detail, hint })) => {
            steps.push(Step::fail("object", reason, detail.clone(), hint.clone()));
            return steps;
        }
        CheckSource::Standalone { file, key } => match standalone_inputs(a, *file, key, &mut steps) {
            Some(v) => v,
            None => return steps,
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            steps.push(Step::fail("runtime", "Internal", e.to_string(), "retry".into()));
            return steps;
        }
    };
    let policy = FetchPolicy { connect_timeout: Duration::from_secs(3), total_timeout: Duration::from_secs(8), ..FetchPolicy::default() };
    let remote = match Remote::new(&spec.metadata_endpoint, Trust::from_spec(spec.metadata.as_ref()), policy) {
        Ok(r) => r,
        Err(e) => {
            let hint = "fix spec.metadataEndpoint / spec.metadata.ca".to_string();
            steps.push(Step::fail("public", e.reason().as_str(), e.to_string(), hint));
            return steps;
        }
    };
    // (b) Public metadata.
    let public = match rt.block_on(remote.fetch_public()) {
        Ok(p) => p,
        Err(e) => {
            steps.push(Step::fail("public", e.reason().as_str(), e.to_string(), fetch_hint(&e)));
            return steps;
        }
    };
    let fp = public
        .root
        .certs_der
        .first()
        .map(|d| Sha256::digest(d).iter().take(8).map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
        .unwrap_or_default();
    steps.push(Step::pass("public", format!("cluster {} (root {fp})", public.doc.cluster_uuid)));
    let remote_uuid = crate::cluster_uuid::ClusterUuid::of(&public);
    // (c) Private metadata with a 60 s token.
    let token = crate::keys::mint(
        &key,
        &facts.cluster_uuid,
        remote_uuid.as_str(),
        Scope::PrivateMulticluster,
        now_secs(),
        crate::keys::MAX_METADATA_TOKEN_TTL_SECS,
    );
    let private = match rt.block_on(remote.fetch_private(&token)) {
        Ok(p) => p,
        Err(e) => {
            steps.push(Step::fail("private", e.reason().as_str(), e.to_string(), fetch_hint(&e)));
            return steps;
        }
    };
    steps.push(Step::pass(
        "private",
        format!("{} gateway(s), {} service(s), network {:?}", private.ingress_gateways.len(), private.services.len(), private.network_name),
    ));
    // (d) The API proxy.
    if private.api_host.is_empty() {
        steps.push(Step::skip("api", "the peer offers no API host".into()));
    } else {
        let token = crate::keys::mint(&key, &facts.cluster_uuid, remote_uuid.as_str(), Scope::Api, now_secs(), 60);
        steps.push(rt.block_on(api_step(&private.api_host, &spec, &token, a.api_host_override)));
    }
    // (e) The mesh port of each ingress gateway.
    // What a caller sends that gateway: Istio's SNI for one exported service
    // port (passthrough), or this cluster's peer SNI (identity-enforcing).
    let sni = match private.mesh_mode() {
        Ok(multicloud_core::metadata::MeshMode::IdentityEnforcing) => Some(multicloud_proto::traffic::peer_sni(&facts.cluster_uuid)),
        _ => private.services.iter().find_map(|s| s.ports.first().map(|p| multicloud_proto::mesh::sni(&s.hostname, p.port))),
    };
    for g in &private.ingress_gateways {
        steps.push(mesh_step(&g.address, g.port, &public.root.certs_der, sni.as_deref()));
    }
    steps
}

async fn api_step(api_host: &str, spec: &IstioMulticloudSpec, token: &str, overrides: &[String]) -> Step {
    let name = "api";
    let url = format!("https://{api_host}/version");
    let trust = Trust::from_spec(spec.metadata.as_ref());
    let tls = match crate::exchange::client_config(&trust, api_host) {
        Ok(c) => c,
        Err(e) => return Step::fail(name, e.reason().as_str(), e.to_string(), "fix spec.metadata.ca".into()),
    };
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(8))
        .redirect(reqwest::redirect::Policy::none());
    let host_only = api_host.rsplit_once(':').map_or(api_host, |(h, _)| h);
    for o in overrides {
        if let Some((h, addr)) = o.split_once('=') {
            if h == api_host || h == host_only {
                match addr.parse::<std::net::SocketAddr>() {
                    Ok(sa) => b = b.resolve(host_only, sa),
                    Err(e) => {
                        return Step::fail(name, "OverrideInvalid", format!("--api-host-override {o:?}: {e}"), "want HOST=IP:PORT".into())
                    }
                }
            }
        }
    }
    let client = match b.build() {
        Ok(c) => c,
        Err(e) => return Step::fail(name, "ClientBuildFailed", e.to_string(), "report a bug".into()),
    };
    match client.get(&url).bearer_auth(token).send().await {
        Ok(r) if r.status().is_success() => Step::pass(name, format!("{url} answered {}", r.status().as_u16())),
        Ok(r) => {
            let code = r.status().as_u16();
            let body: String = r.text().await.unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect();
            Step::fail(
                name,
                "HttpStatus",
                format!("{url} answered HTTP {code}: {body}"),
                "the peer's API proxy refused: check its credential and RBAC (deploy/), and that the peer federates with this cluster"
                    .into(),
            )
        }
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why.push_str(": ");
                why.push_str(&s.to_string());
                src = s.source();
            }
            Step::fail(name, if e.is_connect() { "ConnectFailed" } else { "RequestFailed" }, format!("{url}: {why}"), "is the peer's apiHost reachable from here (DNS, firewall), and is it served by the peer's gateway with a certificate from spec.metadata.ca?".into())
        }
    }
}

fn mesh_step(address: &str, port: u16, roots_der: &[Vec<u8>], sni: Option<&str>) -> Step {
    let name = "mesh";
    let target = format!("{address}:{port}");
    let Some(sni) = sni else {
        return Step::skip(name, format!("{target}: the peer exports no service to name in the SNI"));
    };
    let addr = match (address, port).to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            return Step::fail(
                name,
                "ResolveFailed",
                format!("cannot resolve {address}"),
                "the peer advertises a gateway address this cluster cannot resolve".into(),
            )
        }
    };
    let mut tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Step::fail(
                name,
                "MeshPortClosed",
                format!("{target}: nothing listens there ({e})"),
                "the peer's gateway does not serve its mesh port: is the gateway up, and does the peer advertise the right ingressGateways port?"
                    .into(),
            );
        }
        Err(e) => {
            return Step::fail(
                name,
                "ConnectFailed",
                format!("{target}: {e}"),
                "open the path to the peer's ingress gateway mesh port (firewall, load balancer)".into(),
            )
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let mut roots = rustls::RootCertStore::empty();
    for d in roots_der {
        let _ = roots.add(rustls::pki_types::CertificateDer::from(d.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build() {
        Ok(v) => v,
        Err(e) => {
            return Step::fail(
                name,
                "TrustInvalid",
                format!("the peer's rootCA: {e}"),
                "the peer publishes a root this cluster cannot use".into(),
            )
        }
    };
    let cfg = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(verifier))).with_no_client_auth(),
        Err(e) => return Step::fail(name, "Internal", e.to_string(), "report a bug".into()),
    };
    let server_name = match rustls::pki_types::ServerName::try_from(sni.to_string()) {
        Ok(s) => s,
        Err(e) => return Step::fail(name, "SniInvalid", format!("{sni}: {e}"), "the peer's service hostname is not a DNS name".into()),
    };
    let mut conn = match rustls::ClientConnection::new(Arc::new(cfg), server_name) {
        Ok(c) => c,
        Err(e) => return Step::fail(name, "Internal", e.to_string(), "report a bug".into()),
    };
    let mut result = Ok(());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => Step::pass(name, format!("{target}: TLS handshake with SNI {sni} completed (peer root trusted)")),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("CertificateRequired") || msg.contains("certificate required") {
                Step::pass(name, format!("{target}: server certificate verified; the gateway wants a client certificate ({msg})"))
            } else {
                Step::fail(
                    name,
                    "TlsHandshakeFailed",
                    format!("{target} (SNI {sni}): {msg}"),
                    "the gateway's mesh port must present a certificate from the peer's Istio root (rootCA in public.json)".into(),
                )
            }
        }
    }
}

/// Verifies the chain to the peer's Istio root but not the name: Istio's
/// gateways present workload certificates (SPIFFE URI SANs), which never
/// carry the `outbound_...` SNI as a DNS name.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(e)) if format!("{e:?}").contains("NotValidForName") => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CachedPrivate, MetadataCache};
    use crate::reasons::Reason;
    use multicloud_core::metadata::{ExportedService, PrivateMetadata, ServicePort};

    #[test]
    fn ack_state_reads_the_xds_view() {
        assert_eq!(ack_state(&serde_json::json!({"proxies": [], "nacks": 0})), "no proxies");
        let ok = serde_json::json!({"proxies": [{"types": {"t": {"acked_version": "1", "sent_version": "1"}}}]});
        assert_eq!(ack_state(&ok), "all ACKed");
        let nack = serde_json::json!({"proxies": [{"types": {"t": {"acked_version": "1", "sent_version": "2", "last_nack": {"message": "bad"}}}}]});
        assert_eq!(ack_state(&nack), "NACK: bad");
    }

    #[test]
    fn a_row_counts_ports_only_when_ready() {
        let mut s = IstioMulticloudStatus::default();
        s.set_condition(condition::READY, Some(true), Reason::Federated, "ok".into(), "t", None);
        s.metadata_cache = Some(MetadataCache {
            public: None,
            private: Some(CachedPrivate {
                document: PrivateMetadata {
                    ingress_gateways: vec![],
                    api_host: String::new(),
                    network_name: "n".into(),
                    services: vec![ExportedService {
                        hostname: "a.b.svc.cluster.local".into(),
                        ports: vec![
                            ServicePort { name: "http".into(), port: 80, protocol: None },
                            ServicePort { name: "g".into(), port: 81, protocol: None },
                        ],
                        ready_endpoints: 1,
                    }],
                    mesh_mode: None,
                },
                fetched_at: "2026-01-01T00:00:00Z".into(),
            }),
        });
        let objects = BTreeMap::from([("peer".to_string(), s.clone())]);
        let r = &rows(&objects, "all ACKed")[0];
        assert_eq!((r.endpoints, r.last_fetch.as_str(), r.public.as_str()), (Some(2), "2026-01-01T00:00:00Z", "Unknown"));
        s.set_condition(condition::READY, Some(false), Reason::ConnectFailed, "down".into(), "t2", None);
        let objects = BTreeMap::from([("peer".to_string(), s)]);
        let r = &rows(&objects, "no proxies")[0];
        assert_eq!((r.endpoints, r.reason.as_str()), (None, "ConnectFailed"));
    }

    #[test]
    fn an_unreachable_agent_exits_2() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert_eq!(status(&format!("http://{addr}"), Output::Json), EXIT_UNREACHABLE);
    }

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap(), key)
    }

    /// A TLS server on 127.0.0.1 that requires a client certificate, with a
    /// leaf (named `spiffe`-style, not after the SNI) from `ca`; one connection.
    fn mtls_server(ca: &(rcgen::Certificate, rcgen::KeyPair)) -> u16 {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["istio-ingressgateway.istio-system.svc".to_string()])
            .unwrap()
            .signed_by(&key, &ca.0, &ca.1)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.0.der().clone()).unwrap();
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut tcp, _)) = l.accept() {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        break;
                    }
                }
                let _ = conn.complete_io(&mut tcp);
            }
        });
        port
    }

    #[test]
    fn the_mesh_step_trusts_the_peer_root_and_tolerates_a_missing_client_certificate() {
        let peer_ca = ca();
        let port = mtls_server(&peer_ca);
        let s = mesh_step("127.0.0.1", port, &[peer_ca.0.der().to_vec()], Some("outbound_.80_._.foo.abc.svc.cluster.local"));
        assert_eq!(s.result, Outcome::Pass, "{s:?}");
        let other = ca();
        let port = mtls_server(&peer_ca);
        let s = mesh_step("127.0.0.1", port, &[other.0.der().to_vec()], Some("outbound_.80_._.foo.abc.svc.cluster.local"));
        assert_eq!(s.result, Outcome::Fail, "{s:?}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let closed = mesh_step("127.0.0.1", port, &[], Some("outbound_.80_._.x"));
        assert_eq!((closed.result, closed.reason.as_deref()), (Outcome::Fail, Some("MeshPortClosed")), "{closed:?}");
    }
}
