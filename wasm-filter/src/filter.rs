//! The filter's decisions on the host's calls, for its three roles: each
//! role is one [`Handler`] of the same shape (the configuration, the host,
//! the request headers, the request's own state in, an [`Action`] out), and
//! asks `multicloud_core` what to do. Host failures fail closed (a 503),
//! never a panic and never a pass-through.

use crate::host::Host;
use multicloud_core::apiguard::{ApiRead, ApiRefusal, PeerLimiter};
use multicloud_core::edge::{ApiOutcome, ApiRequest, Edge, Event, Outcome, Request, TokenCache};
use multicloud_core::meshguard::{MeshOutcome, MeshRequest};
use multicloud_core::reply::{GuardRefusal as _, Reply};
use proxy_wasm::types::{Action, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// The root id of the API guard role; anything else serves metadata.
pub const API_ROOT_ID: &str = "multicloud-api";
/// The root id of the mesh port guard role.
pub const MESH_ROOT_ID: &str = "multicloud-mesh";

/// Sent when a request arrives and the filter cannot answer it (no
/// configuration, or the host failed): fail closed.
pub const UNAVAILABLE: &[u8] =
    br#"{"error":"the federation edge has no valid configuration yet; check the agent and the gateway logs","reason":"EdgeUnavailable"}"#;

/// Which job this filter configuration does, by the plugin's root id.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Role {
    /// `multicloud-edge`: serves the metadata documents (local replies only).
    #[default]
    Metadata,
    /// `multicloud-api`: guards the API proxy route.
    Api,
    /// `multicloud-mesh`: guards the identity-enforcing mesh port.
    Mesh,
}

/// One role's request handling: [`metadata`], [`api`] and [`mesh`] all have
/// this shape.
pub type Handler<H> = fn(&Shared, &H, &[(String, String)], &mut RequestState) -> Action;

impl Role {
    /// The role of this plugin, by its root id; known before any configuration.
    pub fn of<H: Host>(host: &H) -> Role {
        match host.property(&["plugin_root_id"]).as_deref() {
            Some(id) if id == API_ROOT_ID.as_bytes() => Role::Api,
            Some(id) if id == MESH_ROOT_ID.as_bytes() => Role::Mesh,
            _ => Role::Metadata,
        }
    }

    fn counter_names(self, edge: &Edge) -> Vec<String> {
        match self {
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
                .map(|(_, name)| name.to_string())
                .chain(ApiRefusal::every().map(|r| format!("multicloud_api.refused.{}", r.stat_suffix())))
                .collect(),
        }
    }

    fn title(self) -> &'static str {
        match self {
            Role::Api => "API guard",
            Role::Mesh => "mesh guard",
            Role::Metadata => "edge",
        }
    }
}

/// What every request of one filter configuration shares (its role is the
/// root's: [`Role::of`]).
pub struct Shared {
    edge: Edge,
    /// Counter ids, indexed by [`Event::index`] (metadata role), by
    /// [`api_counter`] (API role) or by `MeshOutcome::counter` (mesh role).
    counters: Vec<u32>,
    cache: RefCell<TokenCache>,
    /// The API role's per-peer budgets: [`LIMITER`], kept across configurations.
    limiter: Rc<RefCell<PeerLimiter>>,
}

thread_local! {
    /// The per-peer budgets of this VM (Envoy runs one per worker), shared by
    /// every configuration it is given. Each push of the agent's (a peer's
    /// document changed, a peer was added) is a new configuration; a budget
    /// made anew with each would hand a flooding peer a fresh burst per push.
    /// A watch admitted under an older configuration gives its slot back here.
    static LIMITER: Rc<RefCell<PeerLimiter>> = Rc::default();
}

/// What one request holds until it ends.
#[derive(Default)]
pub struct RequestState {
    /// The peer holding a watch slot through this request, released at the end.
    watch_of: Option<Rc<str>>,
}

/// The allowed reads and their counters, in counter order.
const API_READS: [(ApiRead, &str); 4] = [
    (ApiRead::Discovery, "multicloud_api.allowed.discovery"),
    (ApiRead::Get, "multicloud_api.allowed.get"),
    (ApiRead::List, "multicloud_api.allowed.list"),
    (ApiRead::Watch, "multicloud_api.allowed.watch"),
];

/// Counter index in the API role: allowed reads first, then refusals.
fn api_counter(allowed: Option<ApiRead>, refused: Option<ApiRefusal>) -> usize {
    match (allowed, refused) {
        (Some(r), _) => API_READS.iter().position(|(x, _)| *x == r).unwrap_or(0),
        (None, Some(r)) => API_READS.len() + r.index(),
        (None, None) => 0,
    }
}

/// What a plugin configuration came to.
pub enum Configured {
    /// Compiled, every reply precomputed, the role's counters defined.
    Ready(Rc<Shared>),
    /// Nothing yet (empty, or `{}`: a WasmPlugin installed before the agent
    /// wrote its pluginConfig): accepted, so the gateway does not refuse the
    /// update; this filter's documents and routes answer 503 until the
    /// agent's configuration arrives.
    NotYet,
    /// Refused, with one error log line, so Envoy keeps the configuration in force.
    Refused,
}

/// Reads and compiles the plugin configuration for `role`.
pub fn configure<H: Host>(host: &H, role: Role) -> Configured {
    let bytes = match host.plugin_configuration() {
        Ok(b) => b.unwrap_or_default(),
        Err(status) => {
            host.log(LogLevel::Error, &format!("cannot read the plugin configuration: host status {status:?}"));
            return Configured::Refused;
        }
    };
    if multicloud_core::edge::is_unconfigured(&bytes) {
        host.log(LogLevel::Info, "multicloud filter: no configuration yet (empty); its routes answer 503 until the agent writes one");
        return Configured::NotYet;
    }
    let edge = match Edge::from_json(&bytes) {
        Ok(edge) => edge,
        Err(e) => {
            host.log(LogLevel::Error, &e.to_string());
            return Configured::Refused;
        }
    };
    let mut counters = Vec::new();
    for name in role.counter_names(&edge) {
        match host.define_counter(&name) {
            Ok(id) => counters.push(id),
            Err(status) => {
                host.log(LogLevel::Error, &format!("cannot define counter {name}: host status {status:?}"));
                return Configured::Refused;
            }
        }
    }
    host.log(
        LogLevel::Info,
        &format!(
            "multicloud {} configured: cluster {} with {} peer(s), {} mesh peer(s), public.json etag {}",
            role.title(),
            edge.config().public.cluster_uuid,
            edge.config().peers.len(),
            edge.mesh().peers().len(),
            edge.etag(multicloud_core::edge::Doc::Public)
        ),
    );
    Configured::Ready(Rc::new(Shared { edge, counters, cache: RefCell::new(TokenCache::default()), limiter: LIMITER.with(Rc::clone) }))
}

/// A request's headers: reads them in one host call (each crossing between
/// Envoy and the VM costs far more than scanning a handful of headers), and
/// hands them to the role's handler. No configuration: fail closed on what
/// this filter answers; the metadata role lets other paths through
/// (attached by WasmPlugin, it sits on every route of the gateway), the API
/// and mesh roles have no other paths.
pub fn on_request_headers<H: Host>(shared: Option<&Shared>, role: Role, host: &H, state: &mut RequestState) -> Action {
    let headers = host.request_headers();
    match (shared, role) {
        // A direct call per role: a few bytes smaller in the module than a
        // call through a `Handler` pointer.
        (Some(shared), Role::Metadata) => metadata(shared, host, &headers, state),
        (Some(shared), Role::Api) => api(shared, host, &headers, state),
        (Some(shared), Role::Mesh) => mesh(shared, host, &headers, state),
        (None, Role::Metadata) if !find(&headers, ":path").unwrap_or_default().starts_with(multicloud_core::edge::METADATA_PREFIX) => {
            Action::Continue
        }
        (None, _) => unavailable(host),
    }
}

/// The request ended: gives back what it held.
pub fn on_request_end(shared: Option<&Shared>, state: &mut RequestState) {
    if let (Some(peer), Some(shared)) = (state.watch_of.take(), shared) {
        if let Ok(mut l) = shared.limiter.try_borrow_mut() {
            l.watch_ended(&peer);
        }
    }
}

fn find<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn count<H: Host>(shared: &Shared, host: &H, index: usize) {
    if let Some(id) = shared.counters.get(index) {
        host.increment(*id);
    }
}

fn unix_now_ms<H: Host>(host: &H) -> u64 {
    host.now().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sends `reply` (or, if the host refuses it, the fail-closed 503).
fn send<H: Host>(host: &H, reply: &Reply) -> Action {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
    if host.send_response(reply.status, headers, body).is_err() {
        return unavailable(host);
    }
    Action::Pause
}

/// Fails closed: 503 [`UNAVAILABLE`].
fn unavailable<H: Host>(host: &H) -> Action {
    let _ = host.send_response(503, vec![("content-type", "application/json")], Some(UNAVAILABLE));
    Action::Pause
}

/// The metadata role: a precomputed reply for `/metadata/...`, anything else continues.
fn metadata<H: Host>(shared: &Shared, host: &H, headers: &[(String, String)], _state: &mut RequestState) -> Action {
    let req = Request {
        method: find(headers, ":method").unwrap_or_default(),
        path: find(headers, ":path").unwrap_or_default(),
        authorization: find(headers, "authorization"),
        if_none_match: find(headers, "if-none-match"),
    };
    let now = || host.now().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let outcome = match shared.cache.try_borrow_mut() {
        Ok(mut cache) => shared.edge.decide(&req, now, &mut cache),
        Err(_) => shared.edge.decide(&req, now, &mut TokenCache::default()),
    };
    match outcome {
        Outcome::Continue => Action::Continue,
        Outcome::Reply(reply, event) => {
            count(shared, host, event.index());
            send(host, reply)
        }
    }
}

/// The API role: a token with `scope: api`, a read-only allow-list and
/// per-peer limits; an allowed request loses the peer's token (the next
/// filter adds the proxy's own credential), a Secret list or watch is
/// rewritten into the empty namespace, and it continues.
fn api<H: Host>(shared: &Shared, host: &H, headers: &[(String, String)], state: &mut RequestState) -> Action {
    let req = ApiRequest {
        method: find(headers, ":method").unwrap_or_default(),
        path: find(headers, ":path").unwrap_or_default(),
        authorization: find(headers, "authorization"),
        headers: headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    };
    let (Ok(mut cache), Ok(mut limiter)) = (shared.cache.try_borrow_mut(), shared.limiter.try_borrow_mut()) else {
        return unavailable(host);
    };
    match shared.edge.decide_api(req, unix_now_ms(host), &mut cache, &mut limiter) {
        ApiOutcome::Allow { peer, read, rewrite } => {
            count(shared, host, api_counter(Some(read), None));
            // The peer's token never reaches the API server; the proxy's
            // own credential is added by the next filter.
            if host.set_request_header("authorization", None).is_err() || host.set_request_header("x-multicloud-peer", Some(&peer)).is_err()
            {
                return unavailable(host);
            }
            // A Secret list or watch goes to the empty namespace; if the
            // path cannot be replaced, the request must not pass.
            if let Some(path) = rewrite {
                if host.set_request_header(":path", Some(&path)).is_err() {
                    return unavailable(host);
                }
            }
            if read == ApiRead::Watch {
                state.watch_of = Some(peer);
            }
            Action::Continue
        }
        ApiOutcome::Refuse(reply, refusal) => {
            count(shared, host, api_counter(None, Some(refusal)));
            send(host, reply)
        }
    }
}

/// A connection property as text (`None` if absent, empty or not UTF-8).
fn property<H: Host>(host: &H, path: [&str; 2]) -> Option<String> {
    String::from_utf8(host.property(&path)?).ok().filter(|s| !s.is_empty())
}

/// The mesh role: the peer is the SNI's filter chain, the caller the
/// client certificate's URI SAN, the host `:authority`; an allowed request
/// carries the `x-multicloud-caller-*` headers and nothing else under those names.
fn mesh<H: Host>(shared: &Shared, host: &H, headers: &[(String, String)], _state: &mut RequestState) -> Action {
    let sni = property(host, ["connection", "requested_server_name"]);
    let san = property(host, ["connection", "uri_san_peer_certificate"]);
    let authority = find(headers, ":authority").unwrap_or("");
    let req = MeshRequest { sni: sni.as_deref(), peer_uri_san: san.as_deref(), authority };
    let outcome = shared.edge.mesh().decide(req, headers.iter().map(|(k, _)| k.as_str()));
    match &outcome {
        MeshOutcome::Allow { strip, .. } => {
            // Remove every copy first (remove drops all values of a name),
            // then set ours: nothing from outside survives under these names.
            let removed = strip.iter().all(|name| host.set_request_header(name, None).is_ok());
            let set = outcome.caller_headers().is_some_and(|hs| hs.iter().all(|(k, v)| host.set_request_header(k, Some(v)).is_ok()));
            if removed && set {
                count(shared, host, outcome.counter());
                Action::Continue
            } else {
                unavailable(host)
            }
        }
        MeshOutcome::Refuse { reply, refusal, .. } => {
            count(shared, host, outcome.counter());
            host.log(
                LogLevel::Info,
                &format!("multicloud mesh refused {}: sni {}, authority {}", refusal.reason(), sni.as_deref().unwrap_or("-"), authority),
            );
            send(host, reply)
        }
    }
}

#[cfg(test)]
mod tests;
