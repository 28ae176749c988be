//! `multicloud-agent check PEER`: an end-to-end probe of one peer, step by
//! step as this cluster's agent would go (the object and key, the public and
//! private documents, the API proxy, each gateway's mesh port;
//! `super::probes` runs the last two). Its inputs come from the standalone
//! file or, with `--kubernetes`, from the API server (`super::check_kube`).
//! Each [`Step`] passes, fails with a reason and what to do, or is skipped;
//! the exit code is [`EXIT_NOT_READY`] when one failed.

use super::check_kube::{CheckInputError, CheckInputs};
use super::probes::{api_step, mesh_step};
use super::report::{Outcome, Output, Step, EXIT_NOT_READY, EXIT_OK};
use super::status::{agent_get, StatusDoc};
use crate::crd::IstioMulticloudSpec;
use crate::exchange::{FetchError, FetchPolicy, Remote, Trust};
use crate::facts::LocalFacts;
use multicloud_core::token::Scope;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

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
