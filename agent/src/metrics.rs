//! The agent's Prometheus metrics on `/metrics`, encoded by
//! `prometheus-client` (OpenMetrics text) from label sets whose values are
//! the agent's own enums ([`Document`], [`FetchResult`], [`RefusalReason`]).
//! [`METRICS`] names every series; the table in docs/agent.md lists exactly
//! these, and its example scrape is what [`Metrics::render_at`] prints for
//! the same state, line by line (a test keeps the two in step).
//!
//! Counters are families in OpenMetrics terms: `# HELP`/`# TYPE` name the
//! family (`multicloud_agent_fetch`), the samples carry `_total`
//! (`multicloud_agent_fetch_total`), as in [`METRICS`].

use crate::reasons::{Document, FetchResult, RefusalCount, RefusalReason};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every metric the agent exports: sample name, type, help.
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
    (
        "multicloud_agent_state_writes_total",
        "counter",
        "Kubernetes mode: data plane states this replica published for the others (ConfigMap istio-multicloud-state) while it held the Lease.",
    ),
];

impl EncodeLabelValue for Document {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for FetchResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FetchLabels {
    peer: String,
    document: Document,
    result: FetchResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DocumentLabels {
    peer: String,
    document: Document,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ObjectLabels {
    object: String,
}

/// What the agent counted, as of one scrape.
#[derive(Debug, Clone, Default)]
struct State {
    fetch: BTreeMap<(String, Document, FetchResult), u64>,
    /// Unix seconds, by (peer, document).
    last_success: BTreeMap<(String, Document), f64>,
    ready: BTreeMap<String, bool>,
    render_errors: u64,
    xds_build_errors: BTreeMap<String, u64>,
    remote_secret_expiry: BTreeMap<String, i64>,
    status_writes: u64,
    state_writes: u64,
}

type Source<T> = Mutex<Option<Box<dyn Fn() -> T + Send + Sync>>>;

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
    /// Read at scrape time (the xDS server's NACK count).
    nacks: Source<u64>,
    /// Read at scrape time (whether this replica holds the Lease); unset in standalone mode.
    leader: Source<bool>,
    /// Read at scrape time (the xDS server's refusals by reason).
    xds_refusals: Source<Vec<RefusalCount>>,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Metrics {
    pub fn fetch(&self, peer: &str, doc: Document, result: FetchResult) {
        *self.state.lock().fetch.entry((peer.into(), doc, result)).or_default() += 1;
    }

    pub fn success(&self, peer: &str, doc: Document, at: SystemTime) {
        self.state.lock().last_success.insert((peer.into(), doc), unix_secs(at));
    }

    pub fn ready(&self, peer: &str, ready: bool) {
        self.state.lock().ready.insert(peer.into(), ready);
    }

    pub fn xds_build_error(&self, peer: &str) {
        *self.state.lock().xds_build_errors.entry(peer.into()).or_default() += 1;
    }

    /// The remote secret of `object` now holds a token expiring at `exp` (Unix seconds).
    pub fn remote_secret_token(&self, object: &str, exp: i64) {
        self.state.lock().remote_secret_expiry.insert(object.into(), exp);
    }

    /// The remote secret of `object` was removed.
    pub fn remote_secret_removed(&self, object: &str) {
        self.state.lock().remote_secret_expiry.remove(object);
    }

    pub fn set_nack_source(&self, f: Box<dyn Fn() -> u64 + Send + Sync>) {
        *self.nacks.lock() = Some(f);
    }

    pub fn set_leader_source(&self, f: Box<dyn Fn() -> bool + Send + Sync>) {
        *self.leader.lock() = Some(f);
    }

    pub fn status_write(&self) {
        self.state.lock().status_writes += 1;
    }

    pub fn state_published(&self) {
        self.state.lock().state_writes += 1;
    }

    pub fn set_xds_refusal_source(&self, f: Box<dyn Fn() -> Vec<RefusalCount> + Send + Sync>) {
        *self.xds_refusals.lock() = Some(f);
    }

    pub fn edge_render_error(&self) {
        self.state.lock().render_errors += 1;
    }

    /// Drops every series of a removed peer.
    pub fn forget(&self, peer: &str) {
        let mut s = self.state.lock();
        s.fetch.retain(|k, _| k.0 != peer);
        s.last_success.retain(|k, _| k.0 != peer);
        s.ready.remove(peer);
        s.xds_build_errors.remove(peer);
        s.remote_secret_expiry.remove(peer);
    }

    /// The `/metrics` body now.
    pub fn render(&self) -> String {
        self.render_at(SystemTime::now())
    }

    /// The `/metrics` body with document ages as of `now`.
    pub fn render_at(&self, now: SystemTime) -> String {
        let scrape = Scrape {
            state: self.state.lock().clone(),
            now: unix_secs(now),
            nacks: self.nacks.lock().as_ref().map_or(0, |f| f()),
            leader: self.leader.lock().as_ref().map(|f| f()),
            refusals: self.xds_refusals.lock().as_ref().map_or_else(Vec::new, |f| f()),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            // Writing to a String fails only if an encoder refuses a value.
            let _ = writeln!(out, "# the metrics could not be encoded: {e}");
        }
        out
    }
}

/// One scrape's values, encoded in [`METRICS`] order.
#[derive(Debug)]
struct Scrape {
    state: State,
    now: f64,
    nacks: u64,
    leader: Option<bool>,
    refusals: Vec<RefusalCount>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.state;
        for (name, kind, help) in METRICS {
            let (family, metric_type) = match *kind {
                "counter" => (name.strip_suffix("_total").unwrap_or(name), MetricType::Counter),
                _ => (*name, MetricType::Gauge),
            };
            let mut m = encoder.encode_descriptor(family, help, None, metric_type)?;
            match *name {
                "multicloud_agent_fetch_total" => {
                    for ((peer, document, result), v) in &s.fetch {
                        let labels = FetchLabels { peer: peer.clone(), document: *document, result: *result };
                        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
                    }
                }
                "multicloud_agent_last_success_timestamp_seconds" => {
                    for ((peer, document), v) in &s.last_success {
                        ConstGauge::new(*v).encode(m.encode_family(&DocumentLabels { peer: peer.clone(), document: *document })?)?;
                    }
                }
                "multicloud_agent_document_age_seconds" => {
                    for ((peer, document), v) in &s.last_success {
                        let age = (self.now - v).max(0.0);
                        ConstGauge::new(age).encode(m.encode_family(&DocumentLabels { peer: peer.clone(), document: *document })?)?;
                    }
                }
                "multicloud_agent_peer_ready" => {
                    for (peer, v) in &s.ready {
                        ConstGauge::new(i64::from(*v)).encode(m.encode_family(&PeerLabels { peer: peer.clone() })?)?;
                    }
                }
                "multicloud_agent_edge_render_errors_total" => ConstCounter::new(s.render_errors).encode(m)?,
                "multicloud_agent_xds_build_errors_total" => {
                    for (peer, v) in &s.xds_build_errors {
                        ConstCounter::new(*v).encode(m.encode_family(&PeerLabels { peer: peer.clone() })?)?;
                    }
                }
                "multicloud_agent_xds_nacks_total" => ConstCounter::new(self.nacks).encode(m)?,
                "multicloud_agent_xds_refusals_total" => {
                    for RefusalCount { reason, count } in &self.refusals {
                        ConstCounter::new(*count).encode(m.encode_family(&ReasonLabels { reason: *reason })?)?;
                    }
                }
                "multicloud_agent_remote_secret_token_expiry_timestamp_seconds" => {
                    for (object, v) in &s.remote_secret_expiry {
                        ConstGauge::new(*v).encode(m.encode_family(&ObjectLabels { object: object.clone() })?)?;
                    }
                }
                "multicloud_agent_leader" => {
                    if let Some(l) = self.leader {
                        ConstGauge::new(i64::from(l)).encode(m)?;
                    }
                }
                "multicloud_agent_status_writes_total" => ConstCounter::new(s.status_writes).encode(m)?,
                "multicloud_agent_state_writes_total" => ConstCounter::new(s.state_writes).encode(m)?,
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasons::Reason;
    use std::time::Duration;

    /// The state behind docs/agent.md's example scrape.
    fn example() -> (Metrics, SystemTime) {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = Metrics::default();
        m.fetch("b", Document::Public, FetchResult::Ok);
        m.fetch("b", Document::Public, FetchResult::Ok);
        m.fetch("b", Document::Private, FetchResult::Failed(Reason::Unauthorized));
        m.success("b", Document::Public, at);
        m.ready("b", false);
        m.xds_build_error("b");
        m.remote_secret_token("b", 1_700_003_600);
        m.status_write();
        m.set_nack_source(Box::new(|| 3));
        m.set_leader_source(Box::new(|| true));
        m.set_xds_refusal_source(Box::new(|| {
            RefusalReason::ALL.iter().map(|r| RefusalCount { reason: *r, count: u64::from(*r == RefusalReason::GroupNotAllowed) }).collect()
        }));
        (m, at + Duration::from_secs(30))
    }

    fn agent_md() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md")).unwrap()
    }

    /// docs/agent.md's metrics table lists exactly what the agent exports,
    /// and its example scrape is, line by line and value by value, what the
    /// agent prints for the state it describes.
    #[test]
    fn the_documented_metrics_are_the_exported_ones_value_for_value() {
        let doc = agent_md();
        let section = doc.split("## Metrics").nth(1).unwrap().split("\n## ").next().unwrap();
        let documented: Vec<(String, String, Vec<String>)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let labels = cells.get(3)?.split(',').map(|c| c.trim().trim_matches('`').to_string()).filter(|c| !c.is_empty()).collect();
                Some((name.to_string(), cells.get(2)?.to_string(), labels))
            })
            .collect();
        let exported: Vec<(String, String)> = METRICS.iter().map(|(n, t, _)| (n.to_string(), t.to_string())).collect();
        assert_eq!(documented.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect::<Vec<_>>(), exported);

        let block = section.split("```text\n").nth(1).and_then(|b| b.split("```").next()).expect("an example scrape in docs/agent.md");
        let (m, now) = example();
        let text = m.render_at(now);
        let (want, got): (Vec<&str>, Vec<&str>) = (block.lines().collect(), text.lines().collect());
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w, g, "docs/agent.md's example scrape, line {}", i + 1);
        }
        assert_eq!(want.len(), got.len(), "docs/agent.md's example scrape has {} lines, the agent prints:\n{text}", want.len());

        // Every documented series appears in the example with the documented labels.
        for (name, _, labels) in &documented {
            let samples: Vec<&str> =
                got.iter().copied().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))).collect();
            assert!(!samples.is_empty(), "{name} has no sample in the example");
            for s in samples {
                let names: Vec<&str> = s
                    .split_once('{')
                    .map(|(_, rest)| rest.split('}').next().unwrap_or("").split(',').filter_map(|kv| kv.split('=').next()).collect())
                    .unwrap_or_default();
                assert_eq!(names, *labels, "{s}");
            }
        }
    }

    #[test]
    fn a_removed_peer_leaves_no_series_behind() {
        let (m, now) = example();
        m.forget("b");
        let text = m.render_at(now);
        assert!(!text.contains("peer=\"b\"") && !text.contains("object=\"b\""), "{text}");
        assert!(text.contains("# TYPE multicloud_agent_fetch counter"), "families stay described: {text}");
    }
}
