//! `multicloud-agent status`: one row per peer ([`PeerRow`]), read from the
//! agent's HTTP port (`/status` and `/xds`, [`agent_get`]); exits
//! [`EXIT_OK`] when every peer is ready.

use super::report::{error_chain, Output, EXIT_NOT_READY, EXIT_OK, EXIT_UNREACHABLE};
use crate::crd::{condition, IstioMulticloudStatus};
use crate::xds::server::XdsView;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Where `status` and `check` find the agent by default (`run --http`).
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:15090";

/// `GET <agent><path>` on the agent's HTTP port; the body on 200. Errors
/// say which of URL, connection or answer failed.
pub fn agent_get(agent: &str, path: &str) -> Result<String, String> {
    let u = url::Url::parse(agent).map_err(|e| format!("--agent {agent:?} is not a URL: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!("--agent {agent:?}: the agent's HTTP port speaks http://"));
    }
    let url = format!("{}{path}", agent.trim_end_matches('/'));
    // http:// only; reqwest still wants a TLS backend, so it gets one that trusts nothing.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let r = client.get(&url).send().await.map_err(|e| {
            if e.is_connect() {
                format!("cannot connect to {url}: {}", error_chain(&e))
            } else {
                format!("{url}: {}", error_chain(&e))
            }
        })?;
        if !r.status().is_success() {
            return Err(format!("{path} answered HTTP {}", r.status().as_u16()));
        }
        r.text().await.map_err(|e| format!("reading the answer from {url}: {e}"))
    })
}

#[derive(serde::Deserialize)]
pub(super) struct StatusDoc {
    #[serde(default)]
    pub(super) objects: BTreeMap<String, IstioMulticloudStatus>,
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
pub fn ack_state(xds: &XdsView) -> String {
    if xds.proxies.is_empty() {
        return "no proxies".into();
    }
    let mut pending = false;
    for t in xds.proxies.iter().flat_map(|p| p.types.values()) {
        if t.acked_version != t.sent_version {
            if let Some(n) = &t.last_nack {
                return format!("NACK: {}", n.message);
            }
            pending = true;
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
        let xds: XdsView = agent_get(agent, "/xds").ok().and_then(|x| serde_json::from_str(&x).ok()).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CachedPrivate, MetadataCache};
    use crate::reasons::Reason;
    use multicloud_core::metadata::{ExportedService, PrivateMetadata, ServicePort};

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
}
