//! The agent's Prometheus metrics, rendered in the text exposition format on
//! `/metrics`. The table in docs/agent.md lists exactly these; a test keeps
//! the two in step.

use crate::reasons::{Document, FetchResult, RefusalCount};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every metric the agent exports: name, type, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "multicloud_agent_fetch_total",
        "counter",
        "Metadata fetches by peer, document (public, private) and result (ok or a failure reason).",
    ),
    ("multicloud_agent_last_success_timestamp_seconds", "gauge", "Unix time of the last successful fetch, by peer and document."),
    ("multicloud_agent_document_age_seconds", "gauge", "Age of the last good document held, by peer and document."),
    ("multicloud_agent_peer_ready", "gauge", "1 when the peer's last exchange succeeded (Ready=True), else 0."),
    ("multicloud_agent_edge_render_errors_total", "counter", "Edge configurations not handed to the filter because they did not validate."),
    (
        "multicloud_agent_xds_build_errors_total",
        "counter",
        "Peers whose data plane resources did not validate and were not pushed, by peer.",
    ),
    ("multicloud_agent_xds_nacks_total", "counter", "Configurations the local proxies rejected (NACKs)."),
    (
        "multicloud_agent_xds_refusals_total",
        "counter",
        "xDS clients turned away, by reason: at the TLS handshake (no_client_certificate, untrusted_certificate, handshake_failed, handshake_timeout, no_local_root) or for the group their node claims (no_spiffe_id, group_not_allowed).",
    ),
    (
        "multicloud_agent_remote_secret_token_expiry_timestamp_seconds",
        "gauge",
        "Unix time at which the scope: api token in a peer's Istio remote secret expires, by object.",
    ),
    ("multicloud_agent_leader", "gauge", "Kubernetes mode: 1 while this replica holds the Lease (it alone writes shared state), else 0."),
    (
        "multicloud_agent_status_writes_total",
        "counter",
        "Kubernetes mode: IstioMulticloud status writes this replica made to the API server.",
    ),
];

#[derive(Default)]
struct State {
    /// By (peer, document, result) labels.
    fetch: BTreeMap<(String, &'static str, &'static str), u64>,
    /// By (peer, document) labels.
    last_success: BTreeMap<(String, &'static str), f64>,
    ready: BTreeMap<String, bool>,
    render_errors: u64,
    xds_build_errors: BTreeMap<String, u64>,
    remote_secret_expiry: BTreeMap<String, i64>,
    status_writes: u64,
}

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
    /// Read at scrape time (the xDS server's NACK count).
    nacks: Mutex<Option<Box<dyn Fn() -> u64 + Send + Sync>>>,
    /// Read at scrape time (whether this replica holds the Lease); unset in standalone mode.
    leader: Mutex<Option<Box<dyn Fn() -> bool + Send + Sync>>>,
    /// Read at scrape time (the xDS server's refusals by reason).
    xds_refusals: Mutex<Option<RefusalSource>>,
}

type RefusalSource = Box<dyn Fn() -> Vec<RefusalCount> + Send + Sync>;

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fetch(&self, peer: &str, doc: Document, result: FetchResult) {
        *self.lock().fetch.entry((peer.into(), doc.as_str(), result.as_str())).or_default() += 1;
    }

    pub fn success(&self, peer: &str, doc: Document, at: SystemTime) {
        let t = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.lock().last_success.insert((peer.into(), doc.as_str()), t);
    }

    pub fn ready(&self, peer: &str, ready: bool) {
        self.lock().ready.insert(peer.into(), ready);
    }

    pub fn xds_build_error(&self, peer: &str) {
        *self.lock().xds_build_errors.entry(peer.into()).or_default() += 1;
    }

    /// The remote secret of `object` now holds a token expiring at `exp` (Unix seconds).
    pub fn remote_secret_token(&self, object: &str, exp: i64) {
        self.lock().remote_secret_expiry.insert(object.into(), exp);
    }

    /// The remote secret of `object` was removed.
    pub fn remote_secret_removed(&self, object: &str) {
        self.lock().remote_secret_expiry.remove(object);
    }

    pub fn set_nack_source(&self, f: Box<dyn Fn() -> u64 + Send + Sync>) {
        *self.nacks.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn set_leader_source(&self, f: Box<dyn Fn() -> bool + Send + Sync>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn status_write(&self) {
        self.lock().status_writes += 1;
    }

    pub fn set_xds_refusal_source(&self, f: RefusalSource) {
        *self.xds_refusals.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn edge_render_error(&self) {
        self.lock().render_errors += 1;
    }

    /// Drops every series of a removed peer.
    pub fn forget(&self, peer: &str) {
        let mut s = self.lock();
        s.fetch.retain(|k, _| k.0 != peer);
        s.last_success.retain(|k, _| k.0 != peer);
        s.ready.remove(peer);
        s.xds_build_errors.remove(peer);
        s.remote_secret_expiry.remove(peer);
    }

    pub fn render(&self) -> String {
        let nacks = self.nacks.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |f| f());
        let leader = self.leader.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|f| f());
        let refusals = self.xds_refusals.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or_else(Vec::new, |f| f());
        let s = self.lock();
        let now = now_secs();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match *name {
                "multicloud_agent_fetch_total" => {
                    for ((p, d, r), v) in &s.fetch {
                        let _ = writeln!(out, "{name}{{peer=\"{}\",document=\"{}\",result=\"{}\"}} {v}", esc(p), esc(d), esc(r));
                    }
                }
                "multicloud_agent_last_success_timestamp_seconds" => {
                    for ((p, d), v) in &s.last_success {
                        let _ = writeln!(out, "{name}{{peer=\"{}\",document=\"{}\"}} {v:.3}", esc(p), esc(d));
                    }
                }
                "multicloud_agent_document_age_seconds" => {
                    for ((p, d), v) in &s.last_success {
                        let _ = writeln!(out, "{name}{{peer=\"{}\",document=\"{}\"}} {:.3}", esc(p), esc(d), (now - v).max(0.0));
                    }
                }
                "multicloud_agent_peer_ready" => {
                    for (p, v) in &s.ready {
                        let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", esc(p), u8::from(*v));
                    }
                }
                "multicloud_agent_edge_render_errors_total" => {
                    let _ = writeln!(out, "{name} {}", s.render_errors);
                }
                "multicloud_agent_xds_build_errors_total" => {
                    for (p, v) in &s.xds_build_errors {
                        let _ = writeln!(out, "{name}{{peer=\"{}\"}} {v}", esc(p));
                    }
                }
                "multicloud_agent_xds_nacks_total" => {
                    let _ = writeln!(out, "{name} {nacks}");
                }
                "multicloud_agent_leader" => {
                    if let Some(l) = leader {
                        let _ = writeln!(out, "{name} {}", u8::from(l));
                    }
                }
                "multicloud_agent_status_writes_total" => {
                    let _ = writeln!(out, "{name} {}", s.status_writes);
                }
                "multicloud_agent_xds_refusals_total" => {
                    for RefusalCount { reason, count } in &refusals {
                        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {count}", esc(reason.label()));
                    }
                }
                "multicloud_agent_remote_secret_token_expiry_timestamp_seconds" => {
                    for (o, v) in &s.remote_secret_expiry {
                        let _ = writeln!(out, "{name}{{object=\"{}\"}} {v}", esc(o));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/agent.md's metrics table lists exactly what the agent exports.
    #[test]
    fn the_documented_metrics_are_the_exported_ones() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md")).unwrap();
        let section = doc.split("## Metrics").nth(1).unwrap();
        let documented: Vec<(String, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((name.to_string(), cells.get(2)?.to_string()))
            })
            .collect();
        let exported: Vec<(String, String)> = METRICS.iter().map(|(n, t, _)| (n.to_string(), t.to_string())).collect();
        assert_eq!(documented, exported);
        let m = Metrics::default();
        m.fetch("b", Document::Public, FetchResult::Ok);
        let text = m.render();
        for (name, _) in &exported {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} not rendered");
        }
    }
}
