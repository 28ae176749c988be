//! The API proxy guard: which requests a peer may send through this
//! cluster's gateway to the local Kubernetes API server.
//!
//! A request passes only if it carries a federation token with
//! `scope: api` from a federated peer (see [`crate::token`]), is a read
//! (`GET`: get, list, watch), carries no impersonation header, and names an
//! allow-listed resource: discovery (`/version`, `/api`, `/apis`), core
//! `services`, `endpoints`, `pods`, `namespaces`, `nodes`, the configmap
//! `istio-ca-root-cert`, the remote mesh ConfigMaps (`istio`,
//! `istio-<revision>` in istio-system, by name or by a `metadata.name` field
//! selector), secrets only by allow-listed name, `discovery.k8s.io`
//! `endpointslices`, `apiextensions.k8s.io` `customresourcedefinitions`, and
//! everything in the Istio `networking.istio.io` and `security.istio.io`
//! groups. Subresources (`exec`, `attach`, `portforward`, `proxy`, `log`,
//! `status`, ...) never pass. Refusals are Kubernetes `Status` objects so
//! `kubectl` and `kube` clients show them.
//!
//! Secret lists and watches are not refused but emptied: istiod's remote
//! credentials controller lists and watches every Secret of a remote cluster
//! (on by default in every Istio release; only 1.31 can switch it off), and a
//! refusal keeps that informer failing and the remote cluster unsynced. The
//! guard sends such a request to [`ApiSettings::empty_namespace`] instead: a
//! namespace that holds no Secret (deploy/ creates it with an admission
//! policy that refuses every Secret in it, and grants the API proxy's
//! identity Secret reads there only). The API server then answers with a
//! real, empty list and a real watch that never yields a Secret.

use serde::{Deserialize, Serialize};

use crate::reply::{GuardRefusal, Reply};
use crate::token::TokenError;

/// The API guard's settings (`api` in the edge configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiSettings {
    /// Secret names a peer may get (none by default).
    pub allowed_secrets: Vec<String>,
    /// Request header bytes accepted (Envoy's own limit is higher).
    pub max_header_bytes: usize,
    /// Sustained requests per second per peer (per Envoy worker), and burst.
    pub requests_per_second: u32,
    pub burst: u32,
    /// Concurrent watches per peer (per Envoy worker).
    pub max_watches: u32,
    /// The longest `exp - nbf` accepted for `api` tokens (a peer's own
    /// limit, [`crate::edge::PeerKey::max_api_token_lifetime_seconds`], wins).
    pub max_token_lifetime_seconds: i64,
    /// The mesh ConfigMaps a peer's istiod may read, as `namespace/name`
    /// (`istio-system/istio`, and `istio-system/istio-<revision>` for a
    /// revisioned control plane): by name, or listed and watched with a
    /// `metadata.name=<name>` field selector.
    pub mesh_config_maps: Vec<String>,
    /// Where Secret lists and watches are sent: a namespace that holds no
    /// Secret (see the module docs).
    pub empty_namespace: String,
}

/// The mesh ConfigMap istiod reads from each remote cluster (Istio 1.29+).
pub const DEFAULT_MESH_CONFIG_MAP: &str = "istio-system/istio";
/// The namespace deploy/ creates empty for Secret lists and watches.
pub const DEFAULT_EMPTY_NAMESPACE: &str = "istio-multicloud-empty";

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            allowed_secrets: Vec::new(),
            max_header_bytes: 16 * 1024,
            requests_per_second: 50,
            burst: 100,
            max_watches: 64,
            max_token_lifetime_seconds: 25 * 3600,
            mesh_config_maps: vec![DEFAULT_MESH_CONFIG_MAP.to_string()],
            empty_namespace: DEFAULT_EMPTY_NAMESPACE.to_string(),
        }
    }
}

/// What a refused API request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRefusal {
    /// Token problems (401), or a token of another scope (403).
    Token(TokenError),
    /// Not a GET.
    VerbNotAllowed,
    /// An `Impersonate-*` header.
    Impersonation,
    /// A path that is not an allow-listed read.
    ResourceNotAllowed,
    /// A subresource (exec, attach, portforward, proxy, log, ...).
    SubresourceNotAllowed,
    /// Request headers larger than the limit.
    HeadersTooLarge,
    /// The peer's request rate is above its limit.
    RateLimited,
    /// The peer holds as many watches as it may.
    TooManyWatches,
}

impl ApiRefusal {
    pub const ALL: [ApiRefusal; 7] = [
        ApiRefusal::VerbNotAllowed,
        ApiRefusal::Impersonation,
        ApiRefusal::ResourceNotAllowed,
        ApiRefusal::SubresourceNotAllowed,
        ApiRefusal::HeadersTooLarge,
        ApiRefusal::RateLimited,
        ApiRefusal::TooManyWatches,
    ];

    /// The `Status` body.
    pub fn status_json(self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Meta {}
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Status<'a> {
            kind: &'a str,
            api_version: &'a str,
            metadata: Meta,
            status: &'a str,
            message: String,
            reason: &'a str,
            code: u32,
        }
        let detail = match self {
            ApiRefusal::Token(t) => t.reason(),
            other => other.stat_suffix(),
        };
        serde_json::to_vec(&Status {
            kind: "Status",
            api_version: "v1",
            metadata: Meta {},
            status: "Failure",
            message: format!("{} ({detail})", self.message()),
            reason: self.reason(),
            code: self.status(),
        })
        .unwrap_or_default()
    }
}

impl GuardRefusal for ApiRefusal {
    const COUNT: usize = TokenError::ALL.len() + ApiRefusal::ALL.len();

    fn status(self) -> u32 {
        match self {
            ApiRefusal::Token(t) => t.status(),
            ApiRefusal::VerbNotAllowed => 405,
            ApiRefusal::Impersonation | ApiRefusal::ResourceNotAllowed | ApiRefusal::SubresourceNotAllowed => 403,
            ApiRefusal::HeadersTooLarge => 431,
            ApiRefusal::RateLimited | ApiRefusal::TooManyWatches => 429,
        }
    }

    /// The Kubernetes `Status.reason`.
    fn reason(self) -> &'static str {
        match self.status() {
            401 => "Unauthorized",
            403 => "Forbidden",
            405 => "MethodNotAllowed",
            429 => "TooManyRequests",
            _ => "BadRequest",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ApiRefusal::Token(t) => t.message(),
            ApiRefusal::VerbNotAllowed => "the multicloud API proxy is read-only: only GET (get, list, watch) passes",
            ApiRefusal::Impersonation => "impersonation headers are not allowed through the multicloud API proxy",
            ApiRefusal::ResourceNotAllowed => "this resource is not on the multicloud API proxy's allow-list (services, endpoints, endpointslices, pods, namespaces, nodes, CRDs, Istio networking/security kinds, configmap istio-ca-root-cert, the mesh configmap by name)",
            ApiRefusal::SubresourceNotAllowed => "subresources (exec, attach, portforward, proxy, log, status, ...) are not allowed through the multicloud API proxy",
            ApiRefusal::HeadersTooLarge => "the request headers are larger than the multicloud API proxy accepts",
            ApiRefusal::RateLimited => "this peer's request rate is above the multicloud API proxy's limit; retry later",
            ApiRefusal::TooManyWatches => "this peer already holds as many watches as the multicloud API proxy allows",
        }
    }

    /// The suffix of the refusal counter (`multicloud_api.refused.<suffix>`).
    fn stat_suffix(self) -> &'static str {
        match self {
            ApiRefusal::Token(t) => t.stat_suffix(),
            ApiRefusal::VerbNotAllowed => "verb_not_allowed",
            ApiRefusal::Impersonation => "impersonation",
            ApiRefusal::ResourceNotAllowed => "resource_not_allowed",
            ApiRefusal::SubresourceNotAllowed => "subresource_not_allowed",
            ApiRefusal::HeadersTooLarge => "headers_too_large",
            ApiRefusal::RateLimited => "rate_limited",
            ApiRefusal::TooManyWatches => "too_many_watches",
        }
    }

    fn index(self) -> usize {
        match self {
            ApiRefusal::Token(t) => t as usize,
            other => TokenError::ALL.len() + ApiRefusal::ALL.iter().position(|r| *r == other).unwrap_or(0),
        }
    }

    /// Token refusals first, then [`ApiRefusal::ALL`].
    fn every() -> impl Iterator<Item = ApiRefusal> {
        TokenError::ALL.into_iter().map(ApiRefusal::Token).chain(ApiRefusal::ALL)
    }

    /// A Kubernetes `Status` ([`ApiRefusal::status_json`]), so `kubectl`
    /// and `kube` clients show it; not cached.
    fn reply(self) -> Reply {
        let mut headers =
            vec![("content-type".to_string(), "application/json".to_string()), ("cache-control".to_string(), "no-store".to_string())];
        if self.status() == 401 {
            headers.push(("www-authenticate".into(), "Bearer realm=\"istio-multicloud\"".into()));
        }
        Reply { status: self.status(), headers, body: self.status_json() }
    }
}

/// Per-peer request rate (token bucket) and concurrent watches. One per
/// filter configuration per Envoy worker: limits apply per worker.
///
/// A list, not a map: only authenticated peers get an entry, so it holds at
/// most the configured peers (tens), and each hash map type costs the
/// size-bound Wasm module kilobytes of code.
#[derive(Default)]
pub struct PeerLimiter {
    peers: Vec<(std::rc::Rc<str>, PeerLimits)>,
}

struct PeerLimits {
    tokens: f64,
    last_ms: u64,
    watches: u32,
}

impl PeerLimiter {
    fn get(&self, peer: &str) -> Option<&PeerLimits> {
        self.peers.iter().find(|(p, _)| **p == *peer).map(|(_, l)| l)
    }

    /// Admits one request of `peer` at `now_ms`; a watch also takes a slot
    /// until [`PeerLimiter::watch_ended`].
    pub fn admit(&mut self, peer: &std::rc::Rc<str>, now_ms: u64, watch: bool, s: &ApiSettings) -> Result<(), ApiRefusal> {
        let burst = f64::from(s.burst.max(1));
        let i = match self.peers.iter().position(|(p, _)| p == peer) {
            Some(i) => i,
            None => {
                self.peers.push((peer.clone(), PeerLimits { tokens: burst, last_ms: now_ms, watches: 0 }));
                self.peers.len() - 1
            }
        };
        let Some((_, l)) = self.peers.get_mut(i) else {
            return Err(ApiRefusal::RateLimited); // unreachable: i is an index of peers
        };
        let elapsed = now_ms.saturating_sub(l.last_ms) as f64 / 1000.0;
        l.tokens = (l.tokens + elapsed * f64::from(s.requests_per_second)).min(burst);
        l.last_ms = now_ms;
        if l.tokens < 1.0 {
            return Err(ApiRefusal::RateLimited);
        }
        if watch {
            if l.watches >= s.max_watches {
                return Err(ApiRefusal::TooManyWatches);
            }
            l.watches += 1;
        }
        l.tokens -= 1.0;
        Ok(())
    }

    pub fn watch_ended(&mut self, peer: &str) {
        if let Some((_, l)) = self.peers.iter_mut().find(|(p, _)| **p == *peer) {
            l.watches = l.watches.saturating_sub(1);
        }
    }

    pub fn watches(&self, peer: &str) -> u32 {
        self.get(peer).map_or(0, |l| l.watches)
    }
}

/// What an allowed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRead {
    Discovery,
    Get,
    List,
    Watch,
}

/// An allowed request and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub read: ApiRead,
    /// A Secret list or watch: it goes to [`ApiSettings::empty_namespace`]
    /// ([`empty_secrets_path`]), never where it asked.
    pub to_empty_namespace: bool,
}

impl Classified {
    fn pass(read: ApiRead) -> Classified {
        Classified { read, to_empty_namespace: false }
    }
}

fn query_flag(query: &str, key: &str) -> bool {
    query.split('&').any(|kv| match kv.split_once('=') {
        Some((k, v)) => k == key && (v == "true" || v == "1"),
        None => kv == key,
    })
}

/// The one `fieldSelector` of `query`, percent-decoded; `Err` if it is
/// given more than once or does not decode (an API server reads the first
/// of several, a proxy must not guess).
fn field_selector(query: &str) -> Result<Option<String>, ApiRefusal> {
    let mut found = None;
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if percent_decode(k).as_deref() != Some("fieldSelector") {
            continue;
        }
        if found.is_some() {
            return Err(ApiRefusal::ResourceNotAllowed);
        }
        found = Some(percent_decode(v).ok_or(ApiRefusal::ResourceNotAllowed)?);
    }
    Ok(found)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), as Go's
/// `url.ParseQuery` does it; `None` for a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
                let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `ns/name` is one of the mesh ConfigMaps a peer may read.
fn is_mesh_config_map(ns: &str, name: &str, s: &ApiSettings) -> bool {
    s.mesh_config_maps.iter().any(|m| m.split_once('/') == Some((ns, name)))
}

/// Classifies a request path (with query) against the allow-list of `s`.
pub fn classify(path_and_query: &str, s: &ApiSettings) -> Result<Classified, ApiRefusal> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    if path.contains("/../") || path.ends_with("/..") || path.contains("/./") || path.contains("//") || path.contains('%') {
        return Err(ApiRefusal::ResourceNotAllowed);
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let watch_q = query_flag(query, "watch");
    // Discovery documents.
    match segs.as_slice() {
        ["version"] | ["api"] | ["apis"] | ["api", "v1"] => return Ok(Classified::pass(ApiRead::Discovery)),
        ["apis", g] | ["apis", g, _] if group_allowed(g) => return Ok(Classified::pass(ApiRead::Discovery)),
        _ => {}
    }
    // /api/v1/... or /apis/<g>/<v>/...
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (g, rest),
        _ => return Err(ApiRefusal::ResourceNotAllowed),
    };
    // Legacy watch paths: /api/v1/watch/...
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    // namespaces/<ns>/<resource>... or <resource>...
    let (namespace, resource, name, sub): (Option<&str>, &str, Option<&str>, Option<&str>) = match rest {
        ["namespaces"] => (None, "namespaces", None, None),
        ["namespaces", ns] => (None, "namespaces", Some(*ns), None),
        ["namespaces", ns, res] => (Some(*ns), res, None, None),
        ["namespaces", ns, res, name] => (Some(*ns), res, Some(*name), None),
        ["namespaces", ns, res, name, sub, ..] => (Some(*ns), res, Some(*name), Some(*sub)),
        [res] => (None, res, None, None),
        [res, name] => (None, res, Some(*name), None),
        [res, name, sub, ..] => (None, res, Some(*name), Some(*sub)),
        _ => return Err(ApiRefusal::ResourceNotAllowed),
    };
    if sub.is_some() || resource.contains(':') || name.is_some_and(|n| n.contains(':')) {
        return Err(ApiRefusal::SubresourceNotAllowed);
    }
    let read = match (name, legacy_watch || watch_q) {
        (_, true) => ApiRead::Watch,
        (Some(_), false) => ApiRead::Get,
        (None, false) => ApiRead::List,
    };
    let allowed = match group {
        "" => match resource {
            "services" | "endpoints" | "pods" | "namespaces" | "nodes" => true,
            "configmaps" => match (namespace, name) {
                (_, Some("istio-ca-root-cert")) => true,
                (Some(ns), Some(n)) => is_mesh_config_map(ns, n, s),
                // A list or watch of one mesh ConfigMap, by its name.
                (Some(ns), None) => field_selector(query)?
                    .and_then(|f| f.strip_prefix("metadata.name=").map(|n| is_mesh_config_map(ns, n.strip_prefix('=').unwrap_or(n), s)))
                    .unwrap_or(false),
                (None, _) => false,
            },
            "secrets" => match name {
                Some(n) => s.allowed_secrets.iter().any(|a| a == n),
                None => return Ok(Classified { read, to_empty_namespace: true }),
            },
            _ => false,
        },
        "discovery.k8s.io" => resource == "endpointslices",
        // istiod's remote controller lists and watches CRDs to learn which
        // Istio kinds the peer serves (schemas only, nothing secret).
        "apiextensions.k8s.io" => resource == "customresourcedefinitions",
        g => group_allowed(g),
    };
    if !allowed {
        return Err(ApiRefusal::ResourceNotAllowed);
    }
    Ok(Classified::pass(read))
}

/// Where a Secret list or watch ([`Classified::to_empty_namespace`]) goes:
/// the same request in `empty_namespace`, with its query kept (field and
/// label selectors, `watch`, `resourceVersion`, ...).
pub fn empty_secrets_path(path_and_query: &str, empty_namespace: &str) -> String {
    let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let watch = if path.starts_with("/api/v1/watch/") { "watch/" } else { "" };
    let mut out = format!("/api/v1/{watch}namespaces/{empty_namespace}/secrets");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn group_allowed(g: &str) -> bool {
    matches!(g, "networking.istio.io" | "security.istio.io" | "discovery.k8s.io" | "apiextensions.k8s.io")
}

/// The whole request check, except rate and watch limits (which need
/// state): verb, impersonation, header size and the path.
pub fn check_request<'a>(
    method: &str,
    path_and_query: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    max_header_bytes: usize,
    settings: &ApiSettings,
) -> Result<Classified, ApiRefusal> {
    let mut size = 0usize;
    for (k, v) in headers {
        size += k.len() + v.len() + 4;
        if k.as_bytes().get(..11).is_some_and(|p| p.eq_ignore_ascii_case(b"impersonate")) {
            return Err(ApiRefusal::Impersonation);
        }
    }
    if size > max_header_bytes {
        return Err(ApiRefusal::HeadersTooLarge);
    }
    if method != "GET" {
        return Err(ApiRefusal::VerbNotAllowed);
    }
    classify(path_and_query, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ApiSettings {
        ApiSettings { allowed_secrets: vec!["cacerts".to_string()], ..Default::default() }
    }

    fn c(p: &str) -> Result<ApiRead, ApiRefusal> {
        classify(p, &settings()).map(|c| {
            assert!(!c.to_empty_namespace, "{p} is not a Secret list");
            c.read
        })
    }

    /// Where a request goes: `Ok(None)` as it asked, `Ok(Some(path))` rewritten.
    fn target(p: &str) -> Result<Option<String>, ApiRefusal> {
        let s = settings();
        classify(p, &s).map(|c| c.to_empty_namespace.then(|| empty_secrets_path(p, &s.empty_namespace)))
    }

    #[test]
    fn reads_of_mesh_resources_pass() {
        assert_eq!(c("/version"), Ok(ApiRead::Discovery));
        assert_eq!(c("/apis"), Ok(ApiRead::Discovery));
        assert_eq!(c("/apis/networking.istio.io/v1"), Ok(ApiRead::Discovery));
        assert_eq!(c("/api/v1/services"), Ok(ApiRead::List));
        assert_eq!(c("/api/v1/services?watch=true&resourceVersion=1"), Ok(ApiRead::Watch));
        assert_eq!(c("/api/v1/watch/services"), Ok(ApiRead::Watch));
        assert_eq!(c("/api/v1/namespaces/abc/pods/foo"), Ok(ApiRead::Get));
        assert_eq!(c("/api/v1/namespaces"), Ok(ApiRead::List));
        assert_eq!(c("/api/v1/namespaces/abc"), Ok(ApiRead::Get));
        assert_eq!(c("/api/v1/nodes/n1"), Ok(ApiRead::Get));
        assert_eq!(c("/apis/discovery.k8s.io/v1/endpointslices?watch=1"), Ok(ApiRead::Watch));
        assert_eq!(c("/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=1"), Ok(ApiRead::Watch));
        assert_eq!(c("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"), Ok(ApiRead::List));
        assert_eq!(c("/apis/networking.istio.io/v1/namespaces/abc/virtualservices"), Ok(ApiRead::List));
        assert_eq!(c("/apis/security.istio.io/v1/peerauthentications"), Ok(ApiRead::List));
        assert_eq!(c("/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert"), Ok(ApiRead::Get));
        assert_eq!(c("/api/v1/namespaces/istio-system/secrets/cacerts"), Ok(ApiRead::Get));
    }

    #[test]
    fn the_mesh_config_map_passes_by_name_and_by_its_field_selector_only() {
        use ApiRefusal::*;
        // How istiod (1.29+) reads a remote cluster's mesh ConfigMap: a
        // namespaced informer on one name.
        assert_eq!(c("/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio&limit=500"), Ok(ApiRead::List));
        assert_eq!(
            c("/api/v1/namespaces/istio-system/configmaps?allowWatchBookmarks=true&fieldSelector=metadata.name%3Distio&resourceVersion=5&watch=true"),
            Ok(ApiRead::Watch)
        );
        assert_eq!(c("/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name==istio"), Ok(ApiRead::List));
        assert_eq!(c("/api/v1/namespaces/istio-system/configmaps/istio"), Ok(ApiRead::Get));
        assert_eq!(c("/api/v1/watch/namespaces/istio-system/configmaps/istio"), Ok(ApiRead::Watch));
        for p in [
            // Another ConfigMap, by name or by selector.
            "/api/v1/namespaces/istio-system/configmaps/istio-sidecar-injector",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio-sidecar-injector",
            // The right name in another namespace.
            "/api/v1/namespaces/abc/configmaps/istio",
            "/api/v1/namespaces/abc/configmaps?fieldSelector=metadata.name%3Distio",
            // No selector, a wider one, a negated one, or two of them.
            "/api/v1/namespaces/istio-system/configmaps",
            "/api/v1/namespaces/istio-system/configmaps?watch=true",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio%2Cmetadata.namespace%3Dx",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%21%3Distio",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio&fieldSelector=metadata.name%3Dother",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Dother&fieldSelector=metadata.name%3Distio",
            "/api/v1/namespaces/istio-system/configmaps?field%53elector=x&fieldSelector=metadata.name%3Distio",
            "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio%ZZ",
            // Cluster-wide.
            "/api/v1/configmaps?fieldSelector=metadata.name%3Distio",
        ] {
            assert_eq!(c(p), Err(ResourceNotAllowed), "{p}");
        }
        // A revisioned control plane's ConfigMap, once configured.
        let s =
            ApiSettings { mesh_config_maps: vec!["istio-system/istio".into(), "istio-system/istio-canary".into()], ..Default::default() };
        assert!(classify("/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio-canary", &s).is_ok());
        assert!(classify("/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio-canary", &ApiSettings::default())
            .is_err());
    }

    #[test]
    fn secret_lists_and_watches_go_to_the_empty_namespace_with_their_query() {
        assert_eq!(
            target("/api/v1/secrets?fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&limit=500"),
            Ok(Some("/api/v1/namespaces/istio-multicloud-empty/secrets?fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&limit=500".into()))
        );
        assert_eq!(
            target("/api/v1/secrets?allowWatchBookmarks=true&resourceVersion=7&watch=true"),
            Ok(Some("/api/v1/namespaces/istio-multicloud-empty/secrets?allowWatchBookmarks=true&resourceVersion=7&watch=true".into()))
        );
        assert_eq!(target("/api/v1/namespaces/abc/secrets"), Ok(Some("/api/v1/namespaces/istio-multicloud-empty/secrets".into())));
        assert_eq!(target("/api/v1/watch/secrets"), Ok(Some("/api/v1/watch/namespaces/istio-multicloud-empty/secrets".into())));
        assert_eq!(
            target("/api/v1/watch/namespaces/istio-system/secrets?x=1"),
            Ok(Some("/api/v1/watch/namespaces/istio-multicloud-empty/secrets?x=1".into()))
        );
        let s = settings();
        assert_eq!(classify("/api/v1/secrets?watch=1", &s).map(|c| c.read), Ok(ApiRead::Watch));
        assert_eq!(classify("/api/v1/secrets", &s).map(|c| c.read), Ok(ApiRead::List));
        // By name: only allow-listed names, and where they are.
        assert_eq!(target("/api/v1/namespaces/istio-system/secrets/cacerts"), Ok(None));
        assert_eq!(target("/api/v1/namespaces/abc/secrets/db-password"), Err(ApiRefusal::ResourceNotAllowed));
        // Tricks still fail before any rewrite.
        assert_eq!(target("/api/v1/namespaces/abc/%73ecrets"), Err(ApiRefusal::ResourceNotAllowed));
        assert_eq!(target("/api/v1/namespaces/abc/secrets/x/proxy"), Err(ApiRefusal::SubresourceNotAllowed));
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        use ApiRefusal::*;
        for (p, want) in [
            ("/api/v1/namespaces/abc/secrets/db-password", ResourceNotAllowed),
            ("/api/v1/namespaces/abc/configmaps", ResourceNotAllowed),
            ("/api/v1/namespaces/abc/pods/foo/exec", SubresourceNotAllowed),
            ("/api/v1/namespaces/abc/pods/foo/attach", SubresourceNotAllowed),
            ("/api/v1/namespaces/abc/pods/foo/portforward", SubresourceNotAllowed),
            ("/api/v1/namespaces/abc/pods/foo/log", SubresourceNotAllowed),
            ("/api/v1/namespaces/abc/services/foo:80/proxy", SubresourceNotAllowed),
            ("/api/v1/namespaces/abc/services/foo/proxy/x", SubresourceNotAllowed),
            ("/api/v1/nodes/n1/proxy", SubresourceNotAllowed),
            ("/apis/apps/v1/deployments", ResourceNotAllowed),
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", ResourceNotAllowed),
            ("/api/v1/namespaces/abc/../secrets", ResourceNotAllowed),
            ("/api/v1/namespaces/abc/%73ecrets", ResourceNotAllowed),
            ("/openapi/v2", ResourceNotAllowed),
            ("/", ResourceNotAllowed),
        ] {
            assert_eq!(c(p), Err(want), "{p}");
        }
    }

    #[test]
    fn verbs_impersonation_and_size() {
        let h = |v: &'static [(&'static str, &'static str)]| v.iter().copied();
        for m in ["POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            assert_eq!(check_request(m, "/api/v1/services", h(&[]), 1000, &ApiSettings::default()), Err(ApiRefusal::VerbNotAllowed));
        }
        assert_eq!(
            check_request("GET", "/api/v1/services", h(&[("impersonate-user", "admin")]), 1000, &ApiSettings::default()),
            Err(ApiRefusal::Impersonation)
        );
        assert_eq!(
            check_request("GET", "/api/v1/services", h(&[("Impersonate-Group", "system:masters")]), 1000, &ApiSettings::default()),
            Err(ApiRefusal::Impersonation)
        );
        let big = "x".repeat(2000);
        let hs = vec![("x-big", big.as_str())];
        assert_eq!(
            check_request("GET", "/api/v1/services", hs.into_iter(), 1000, &ApiSettings::default()),
            Err(ApiRefusal::HeadersTooLarge)
        );
        assert_eq!(
            check_request("GET", "/api/v1/services", h(&[("accept", "application/json")]), 1000, &ApiSettings::default()).map(|c| c.read),
            Ok(ApiRead::List)
        );
    }

    #[test]
    fn rate_and_watches_are_limited_per_peer() {
        let s = ApiSettings { requests_per_second: 10, burst: 2, max_watches: 1, ..Default::default() };
        let mut l = PeerLimiter::default();
        let (a, b): (std::rc::Rc<str>, std::rc::Rc<str>) = ("a".into(), "b".into());
        assert_eq!(l.admit(&a, 0, false, &s), Ok(()));
        assert_eq!(l.admit(&a, 0, false, &s), Ok(()));
        assert_eq!(l.admit(&a, 0, false, &s), Err(ApiRefusal::RateLimited));
        assert_eq!(l.admit(&b, 0, false, &s), Ok(()), "another peer has its own bucket");
        assert_eq!(l.admit(&a, 100, true, &s), Ok(()), "100 ms refill one token at 10/s");
        assert_eq!(l.admit(&a, 1000, true, &s), Err(ApiRefusal::TooManyWatches));
        l.watch_ended("a");
        assert_eq!(l.admit(&a, 2000, true, &s), Ok(()));
        let idx: std::collections::HashSet<usize> = ApiRefusal::every().map(ApiRefusal::index).collect();
        assert_eq!(idx.len(), ApiRefusal::COUNT);
        assert!(idx.iter().all(|i| *i < ApiRefusal::COUNT));
    }

    #[test]
    fn refusals_are_kubernetes_status_objects() {
        let v: serde_json::Value = serde_json::from_slice(&ApiRefusal::VerbNotAllowed.status_json()).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["code"], 405);
        assert_eq!(v["reason"], "MethodNotAllowed");
        let v: serde_json::Value = serde_json::from_slice(&ApiRefusal::Token(TokenError::Expired).status_json()).unwrap();
        assert_eq!((v["code"].as_u64(), v["reason"].as_str()), (Some(401), Some("Unauthorized")));
        assert!(v["message"].as_str().unwrap().contains("TokenExpired"));
    }
}
