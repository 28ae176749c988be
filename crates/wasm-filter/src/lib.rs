//! The gateway filter: a thin proxy-wasm adapter around
//! [`multicloud_core::edge::Edge`].
//!
//! - The root context reads the plugin configuration, compiles it (all
//!   replies precomputed) and defines the counters. A configuration that does
//!   not compile is refused with one error log line; `on_configure` returns
//!   false so Envoy rejects it and the filter configuration in force keeps
//!   serving.
//! - Each HTTP context reads four request headers, asks the edge, and either
//!   sends the precomputed local reply or lets the request continue. Only
//!   `proxy_wasm::hostcalls` (which return `Result`) are used: a host error
//!   turns into a refusal, never a panic and never a pass-through of a
//!   request under `/metadata/`.

use multicloud_core::edge::{Edge, Event, Outcome, Request, TokenCache};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// What every request of one filter configuration shares.
struct Shared {
    edge: Edge,
    /// Counter ids, indexed by [`Event::index`].
    counters: Vec<u32>,
    cache: RefCell<TokenCache>,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => {
                log(LogLevel::Error, "invalid multicloud edge configuration: the plugin configuration is empty");
                return false;
            }
            Err(status) => {
                log(LogLevel::Error, &format!("cannot read the plugin configuration: host status {status:?}"));
                return false;
            }
        };
        let edge = match Edge::from_json(&bytes) {
            Ok(edge) => edge,
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                return false;
            }
        };
        let mut counters = vec![0; Event::COUNT];
        for event in Event::all() {
            match hostcalls::define_metric(MetricType::Counter, &event.stat_name()) {
                Ok(id) => {
                    if let Some(slot) = counters.get_mut(event.index()) {
                        *slot = id;
                    }
                }
                Err(status) => {
                    log(LogLevel::Error, &format!("cannot define counter {}: host status {status:?}", event.stat_name()));
                    return false;
                }
            }
        }
        log(
            LogLevel::Info,
            &format!(
                "multicloud edge configured: cluster {} with {} peer(s), public.json etag {}",
                edge.config().public.cluster_uuid,
                edge.config().peers.len(),
                edge.etag(multicloud_core::edge::Doc::Public)
            ),
        );
        self.shared = Some(Rc::new(Shared { edge, counters, cache: RefCell::new(TokenCache::default()) }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeRequest { shared: self.shared.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EdgeRequest {
    shared: Option<Rc<Shared>>,
}

impl Context for EdgeRequest {}

fn unix_now() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sent when a request under `/metadata/` arrives and the filter cannot
/// answer it (no configuration, or the host failed): fail closed.
const UNAVAILABLE: &[u8] =
    br#"{"error":"the federation edge has no valid configuration yet; check the agent and the gateway logs","reason":"EdgeUnavailable"}"#;

impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One host call for all headers: each crossing between Envoy and the
        // VM costs far more than scanning a handful of headers here.
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let path = find(":path").unwrap_or_default();
        let Some(shared) = self.shared.as_deref() else {
            if path.starts_with(multicloud_core::edge::METADATA_PREFIX) {
                let _ = hostcalls::send_http_response(503, vec![("content-type", "application/json")], Some(UNAVAILABLE));
                return Action::Pause;
            }
            return Action::Continue;
        };
        let req = Request {
            method: find(":method").unwrap_or_default(),
            path,
            authorization: find("authorization"),
            if_none_match: find("if-none-match"),
        };
        let outcome = match shared.cache.try_borrow_mut() {
            Ok(mut cache) => shared.edge.decide(&req, unix_now, &mut cache),
            Err(_) => shared.edge.decide(&req, unix_now, &mut TokenCache::default()),
        };
        match outcome {
            Outcome::Continue => Action::Continue,
            Outcome::Reply(reply, event) => {
                if let Some(id) = shared.counters.get(event.index()) {
                    let _ = hostcalls::increment_metric(*id, 1);
                }
                let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
                if hostcalls::send_http_response(reply.status, headers, body).is_err() {
                    let _ = hostcalls::send_http_response(503, vec![("content-type", "application/json")], Some(UNAVAILABLE));
                }
                Action::Pause
            }
        }
    }
}
