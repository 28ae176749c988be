//! The gateway filter: a thin proxy-wasm adapter around
//! [`multicloud_core::edge::Edge`].
//!
//! - The root context reads the plugin configuration, compiles it (all
//!   replies precomputed) and defines the counters. A configuration that does
//!   not compile is refused with one error log line; `on_configure` returns
//!   false so Envoy rejects it and the filter configuration in force keeps
//!   serving.
//! - The same module runs in three roles, chosen by the plugin's root id:
//!   `multicloud-edge` serves the metadata documents (local replies only);
//!   `multicloud-api` guards the API proxy route (token with `scope: api`,
//!   read-only allow-list, per-peer rate and watch limits), strips the
//!   peer's token and lets allowed requests continue to the API server
//!   (Secret lists and watches rewritten into the empty namespace); a
//!   later filter injects the proxy's own credential from SDS;
//!   `multicloud-mesh` guards the identity-enforcing mesh port (peer by
//!   SNI, caller by the client certificate's SPIFFE ID, host by the peer's
//!   exported services) and sets the `x-multicloud-caller-*` headers.
//! - Each HTTP context reads the request headers in one host call, asks the
//!   edge, and either sends a precomputed local reply or continues. Only
//!   `proxy_wasm::hostcalls` (which return `Result`) are used: a host error
//!   turns into a refusal, never a panic and never a pass-through of a
//!   request under `/metadata/`.

use multicloud_core::apiguard::{ApiRead, ApiRefusal, PeerLimiter};
use multicloud_core::edge::{ApiOutcome, ApiRequest, Edge, Event, Outcome, Request, TokenCache};
use multicloud_core::meshguard::{MeshOutcome, MeshRequest};
use multicloud_core::reply::{GuardRefusal as _, Reply};
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

/// The root id of the API guard role; anything else serves metadata.
pub const API_ROOT_ID: &str = "multicloud-api";
/// The root id of the mesh port guard role.
pub const MESH_ROOT_ID: &str = "multicloud-mesh";

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Role {
    #[default]
    Metadata,
    Api,
    Mesh,
}

/// What every request of one filter configuration shares.
struct Shared {
    role: Role,
    edge: Edge,
    /// Counter ids, indexed by [`Event::index`] (metadata role), by
    /// [`api_counter`] (API role) or by `MeshOutcome::counter` (mesh role).
    counters: Vec<u32>,
    cache: RefCell<TokenCache>,
    limiter: RefCell<PeerLimiter>,
}

const API_READS: [ApiRead; 4] = [ApiRead::Discovery, ApiRead::Get, ApiRead::List, ApiRead::Watch];

fn api_read_name(r: ApiRead) -> &'static str {
    match r {
        ApiRead::Discovery => "discovery",
        ApiRead::Get => "get",
        ApiRead::List => "list",
        ApiRead::Watch => "watch",
    }
}

/// Counter index in the API role: allowed reads first, then refusals.
fn api_counter(allowed: Option<ApiRead>, refused: Option<ApiRefusal>) -> usize {
    match (allowed, refused) {
        (Some(r), _) => API_READS.iter().position(|x| *x == r).unwrap_or(0),
        (None, Some(r)) => API_READS.len() + r.index(),
        (None, None) => 0,
    }
}

fn counter_names(role: Role, edge: &Edge) -> Vec<String> {
    match role {
        Role::Mesh => edge.mesh().counter_names().to_vec(),
        Role::Metadata => {
            let mut v = vec![String::new(); Event::COUNT];
            for e in Event::all() {
                if let Some(slot) = v.get_mut(e.index()) {
                    *slot = e.stat_name();
                }
            }
            v
        }
        Role::Api => API_READS
            .iter()
            .map(|r| format!("multicloud_api.allowed.{}", api_read_name(*r)))
            .chain(ApiRefusal::every().map(|r| format!("multicloud_api.refused.{}", r.stat_suffix())))
            .collect(),
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    /// Known even before a configuration arrives (it is the root id).
    role: Role,
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let role = match hostcalls::get_property(vec!["plugin_root_id"]) {
            Ok(Some(id)) if id == API_ROOT_ID.as_bytes() => Role::Api,
            Ok(Some(id)) if id == MESH_ROOT_ID.as_bytes() => Role::Mesh,
            _ => Role::Metadata,
        };
        self.role = role;
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => Vec::new(),
            Err(status) => {
                log(LogLevel::Error, &format!("cannot read the plugin configuration: host status {status:?}"));
                return false;
            }
        };
        // Nothing yet (a WasmPlugin installed before the agent wrote its
        // pluginConfig): accepted, so the gateway does not refuse the update;
        // this filter's documents and routes answer 503 until the agent's
        // configuration arrives, and a gateway's other routes are untouched.
        if multicloud_core::edge::is_unconfigured(&bytes) {
            log(
                LogLevel::Info,
                "multicloud filter: no configuration yet (empty plugin configuration); its routes answer 503 until the agent writes one",
            );
            self.shared = None;
            return true;
        }
        let edge = match Edge::from_json(&bytes) {
            Ok(edge) => edge,
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                return false;
            }
        };
        let mut counters = Vec::new();
        for name in counter_names(role, &edge) {
            match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => counters.push(id),
                Err(status) => {
                    log(LogLevel::Error, &format!("cannot define counter {name}: host status {status:?}"));
                    return false;
                }
            }
        }
        log(
            LogLevel::Info,
            &format!(
                "multicloud {} configured: cluster {} with {} peer(s), {} mesh peer(s), public.json etag {}",
                match role {
                    Role::Api => "API guard",
                    Role::Mesh => "mesh guard",
                    Role::Metadata => "edge",
                },
                edge.config().public.cluster_uuid,
                edge.config().peers.len(),
                edge.mesh().peers().len(),
                edge.etag(multicloud_core::edge::Doc::Public)
            ),
        );
        self.shared = Some(Rc::new(Shared {
            role,
            edge,
            counters,
            cache: RefCell::new(TokenCache::default()),
            limiter: RefCell::new(PeerLimiter::default()),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeRequest { shared: self.shared.clone(), role: self.role, watch_of: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EdgeRequest {
    shared: Option<Rc<Shared>>,
    role: Role,
    /// The peer holding a watch slot through this request, released at the end.
    watch_of: Option<Rc<str>>,
}

impl Context for EdgeRequest {}

fn unix_now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn count(shared: &Shared, index: usize) {
    if let Some(id) = shared.counters.get(index) {
        let _ = hostcalls::increment_metric(*id, 1);
    }
}

impl EdgeRequest {
    fn api(&mut self, shared: &Shared, headers: &[(String, String)]) -> Action {
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let req = ApiRequest {
            method: find(":method").unwrap_or_default(),
            path: find(":path").unwrap_or_default(),
            authorization: find("authorization"),
            headers: headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        };
        let (Ok(mut cache), Ok(mut limiter)) = (shared.cache.try_borrow_mut(), shared.limiter.try_borrow_mut()) else {
            return unavailable();
        };
        match shared.edge.decide_api(req, unix_now_ms(), &mut cache, &mut limiter) {
            ApiOutcome::Allow { peer, read, rewrite } => {
                count(shared, api_counter(Some(read), None));
                // The peer's token never reaches the API server; the proxy's
                // own credential is added by the next filter.
                if hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None).is_err()
                    || hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-multicloud-peer", Some(&peer)).is_err()
                {
                    return unavailable();
                }
                // A Secret list or watch goes to the empty namespace; if the
                // path cannot be replaced, the request must not pass.
                if let Some(path) = rewrite {
                    if hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(&path)).is_err() {
                        return unavailable();
                    }
                }
                if read == ApiRead::Watch {
                    self.watch_of = Some(peer);
                }
                Action::Continue
            }
            ApiOutcome::Refuse(reply, refusal) => {
                count(shared, api_counter(None, Some(refusal)));
                send(reply)
            }
        }
    }
}

/// Sends `reply` (or, if the host refuses it, the fail-closed 503).
fn send(reply: &Reply) -> Action {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
    if hostcalls::send_http_response(reply.status, headers, body).is_err() {
        return unavailable();
    }
    Action::Pause
}

/// Fails closed: 503 [`UNAVAILABLE`].
fn unavailable() -> Action {
    let _ = hostcalls::send_http_response(503, vec![("content-type", "application/json")], Some(UNAVAILABLE));
    Action::Pause
}

/// A connection property as text (`None` if absent, empty or not UTF-8).
fn property(path: [&str; 2]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// The mesh role: the peer is the SNI's filter chain, the caller the
/// client certificate's URI SAN, the host `:authority`.
fn mesh(shared: &Shared, headers: &[(String, String)]) -> Action {
    let sni = property(["connection", "requested_server_name"]);
    let san = property(["connection", "uri_san_peer_certificate"]);
    let authority = headers.iter().find(|(k, _)| k == ":authority").map_or("", |(_, v)| v.as_str());
    let req = MeshRequest { sni: sni.as_deref(), peer_uri_san: san.as_deref(), authority };
    let outcome = shared.edge.mesh().decide(req, headers.iter().map(|(k, _)| k.as_str()));
    match &outcome {
        MeshOutcome::Allow { strip, .. } => {
            // Remove every copy first (remove drops all values of a name),
            // then set ours: nothing from outside survives under these names.
            let removed = strip.iter().all(|name| hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_ok());
            let set = outcome
                .caller_headers()
                .is_some_and(|hs| hs.iter().all(|(k, v)| hostcalls::set_map_value(MapType::HttpRequestHeaders, k, Some(v)).is_ok()));
            if removed && set {
                count(shared, outcome.counter());
                Action::Continue
            } else {
                unavailable()
            }
        }
        MeshOutcome::Refuse { reply, refusal, .. } => {
            count(shared, outcome.counter());
            log(
                LogLevel::Info,
                &format!("multicloud mesh refused {}: sni {}, authority {}", refusal.reason(), sni.as_deref().unwrap_or("-"), authority),
            );
            send(reply)
        }
    }
}

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
        let Some(shared_rc) = self.shared.clone() else {
            // No valid configuration: fail closed on what this filter
            // answers. The metadata role lets other paths through (attached
            // by WasmPlugin, it sits on every route of the gateway); the API
            // and mesh roles have no other paths.
            if self.role == Role::Metadata && !path.starts_with(multicloud_core::edge::METADATA_PREFIX) {
                return Action::Continue;
            }
            return unavailable();
        };
        let shared = &*shared_rc;
        match shared.role {
            Role::Api => return self.api(shared, &headers),
            Role::Mesh => return mesh(shared, &headers),
            Role::Metadata => {}
        }
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
                count(shared, event.index());
                send(reply)
            }
        }
    }
}

impl Drop for EdgeRequest {
    fn drop(&mut self) {
        if let (Some(peer), Some(shared)) = (self.watch_of.take(), self.shared.as_deref()) {
            if let Ok(mut l) = shared.limiter.try_borrow_mut() {
                l.watch_ended(&peer);
            }
        }
    }
}
