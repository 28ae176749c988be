//! The edge: what the gateway filter answers under `/metadata/`.
//!
//! [`EdgeConfig`] is the filter's configuration (the agent renders it; it is
//! JSON inside the Wasm plugin configuration). [`Edge::compile`] validates it
//! and precomputes every reply (bodies, ETags, headers, refusal bodies) and
//! the peer key table, so that [`Edge::decide`] does no serialization: per
//! request it matches the path, checks the method and, for the private
//! document, verifies the bearer token (or finds it in a bounded cache of
//! tokens whose signature already verified).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};
use std::collections::HashMap;

use crate::apiguard::{check_request, ApiRead, ApiRefusal, PeerLimiter};
use crate::meshguard::{MeshGuard, MeshSettings};
use crate::metadata::{PrivateMetadata, PublicMetadata};
use crate::reply::{json_headers, json_refusal, GuardRefusal, RefusalReplies};
use crate::spiffe;
use crate::token::{self, Scope, TokenError, MAX_CLOCK_SKEW_SECS};

/// The API guard's settings: the `api` field of [`EdgeConfig`].
pub use crate::apiguard::ApiSettings;
pub use crate::reply::{ConfigError, Reply};

pub const PUBLIC_JSON_PATH: &str = "/metadata/public/public.json";
pub const SPIFFE_BUNDLE_PATH: &str = "/metadata/public/spiffe-bundle-endpoint";
pub const PRIVATE_MULTICLUSTER_PATH: &str = "/metadata/private/multicluster.json";
pub const METADATA_PREFIX: &str = "/metadata/";

/// The filter's configuration, as the agent renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeConfig {
    /// This cluster's public document, served as is.
    pub public: PublicMetadata,
    /// This cluster's private document, served to peers with a valid token.
    pub private: PrivateMetadata,
    /// The clusters this one federates with: who may hold a token.
    #[serde(default)]
    pub peers: Vec<PeerKey>,
    #[serde(default)]
    pub spiffe: SpiffeSettings,
    /// The longest `exp - nbf` accepted for `private-multicluster` tokens.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_seconds: i64,
    /// `Cache-Control: max-age` of the public documents.
    #[serde(default = "default_public_max_age")]
    pub public_max_age_seconds: u32,
    /// The API proxy guard (the filter instance with root id `multicloud-api`).
    #[serde(default)]
    pub api: ApiSettings,
    /// The mesh port's guard (the filter instance with root id `multicloud-mesh`).
    #[serde(default, skip_serializing_if = "MeshSettings::is_empty")]
    pub mesh: MeshSettings,
}

fn default_max_token_lifetime() -> i64 {
    600
}
fn default_public_max_age() -> u32 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKey {
    #[serde(rename = "clusterUUID")]
    pub cluster_uuid: String,
    #[serde(rename = "authnKeyPub")]
    pub authn_key_pub: String,
    /// This peer's own limit on `exp - nbf` of its `api` tokens, where an
    /// operator allowed more than [`ApiSettings::max_token_lifetime_seconds`]
    /// (a Deckhouse cluster mints one 366-day token and keeps it).
    #[serde(rename = "maxApiTokenLifetimeSeconds", default, skip_serializing_if = "Option::is_none")]
    pub max_api_token_lifetime_seconds: Option<i64>,
    /// The peer's `additionalAuthnKeysPub`: during its key rotation, tokens
    /// signed with these verify too.
    #[serde(rename = "additionalAuthnKeysPub", default, skip_serializing_if = "Vec::is_empty")]
    pub additional_authn_keys_pub: Vec<String>,
}

/// The longest `api` token lifetime a peer may be allowed: 367 days (a
/// Deckhouse token lives 366 days; a day more for its clock).
pub const MAX_PEER_API_TOKEN_LIFETIME_SECONDS: i64 = 367 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeSettings {
    pub sequence: u64,
    pub refresh_hint_seconds: u64,
}

impl Default for SpiffeSettings {
    fn default() -> Self {
        SpiffeSettings { sequence: 1, refresh_hint_seconds: 300 }
    }
}

/// The documents the edge serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    Public,
    SpiffeBundle,
    PrivateMulticluster,
}

impl Doc {
    pub const ALL: [Doc; 3] = [Doc::Public, Doc::SpiffeBundle, Doc::PrivateMulticluster];

    fn index(self) -> usize {
        self as usize
    }

    pub fn stat_suffix(self) -> &'static str {
        match self {
            Doc::Public => "public_json",
            Doc::SpiffeBundle => "spiffe_bundle",
            Doc::PrivateMulticluster => "private_multicluster_json",
        }
    }
}

/// Why a request under `/metadata/` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    MethodNotAllowed,
    Token(TokenError),
}

impl GuardRefusal for Refusal {
    const COUNT: usize = 2 + TokenError::ALL.len();

    fn status(self) -> u32 {
        match self {
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::Token(t) => t.status(),
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::NotFound => "MetadataNotFound",
            Refusal::MethodNotAllowed => "MethodNotAllowed",
            Refusal::Token(t) => t.reason(),
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::NotFound => "no such metadata document; the documents are /metadata/public/public.json, /metadata/public/spiffe-bundle-endpoint and /metadata/private/multicluster.json",
            Refusal::MethodNotAllowed => "metadata documents are read-only: use GET or HEAD",
            Refusal::Token(t) => t.message(),
        }
    }

    fn stat_suffix(self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Token(t) => t.stat_suffix(),
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::NotFound => 0,
            Refusal::MethodNotAllowed => 1,
            Refusal::Token(t) => 2 + t as usize,
        }
    }

    fn every() -> impl Iterator<Item = Refusal> {
        [Refusal::NotFound, Refusal::MethodNotAllowed].into_iter().chain(TokenError::ALL.into_iter().map(Refusal::Token))
    }

    /// A JSON refusal; a token refusal says so in `WWW-Authenticate`, a
    /// wrong method names the allowed ones.
    fn reply(self) -> Reply {
        let Reply { status, mut headers, body } = json_refusal(self.status(), self.message(), self.reason());
        match status {
            401 => headers.push(("www-authenticate".into(), "Bearer realm=\"istio-multicloud\", error=\"invalid_token\"".into())),
            403 => headers.push(("www-authenticate".into(), "Bearer realm=\"istio-multicloud\", error=\"insufficient_scope\"".into())),
            405 => headers.push(("allow".into(), "GET, HEAD".into())),
            _ => {}
        }
        Reply { status, headers, body }
    }
}

/// What happened to a request, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Served(Doc),
    NotModified(Doc),
    Refused(Refusal),
}

impl Event {
    /// Number of distinct events; [`Event::index`] is below it.
    pub const COUNT: usize = 3 + 3 + Refusal::COUNT;

    pub fn index(self) -> usize {
        match self {
            Event::Served(d) => d.index(),
            Event::NotModified(d) => 3 + d.index(),
            Event::Refused(r) => 6 + r.index(),
        }
    }

    /// The counter's name in Envoy's stats (after Envoy's `wasmcustom.` prefix).
    pub fn stat_name(self) -> String {
        match self {
            Event::Served(d) => format!("multicloud_edge.served.{}", d.stat_suffix()),
            Event::NotModified(d) => format!("multicloud_edge.not_modified.{}", d.stat_suffix()),
            Event::Refused(r) => format!("multicloud_edge.refused.{}", r.stat_suffix()),
        }
    }

    pub fn all() -> impl Iterator<Item = Event> {
        Doc::ALL
            .into_iter()
            .map(Event::Served)
            .chain(Doc::ALL.into_iter().map(Event::NotModified))
            .chain(Refusal::every().map(Event::Refused))
    }
}

/// The request facts the edge needs. Header values as the host gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

/// The edge's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Not a metadata request: let it through untouched.
    Continue,
    Reply(&'a Reply, Event),
}

struct CompiledDoc {
    etag: String,
    /// GET and HEAD alike: Envoy answers a HEAD local reply with the body's
    /// Content-Length and no body.
    ok: Reply,
    not_modified: Reply,
}

struct Peer {
    /// `authnKeyPub` first, then the additional keys of a rotation.
    keys: Vec<ed25519_dalek::VerifyingKey>,
    /// [`PeerKey::max_api_token_lifetime_seconds`].
    max_api_lifetime: Option<i64>,
}

/// The API guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiOutcome<'a> {
    /// Pass to the API server (after stripping the peer's token).
    Allow {
        peer: std::rc::Rc<str>,
        read: ApiRead,
        /// The path to send instead of the request's (a Secret list or
        /// watch, sent to the empty namespace: [`crate::apiguard::Classified`]).
        rewrite: Option<String>,
    },
    Refuse(&'a Reply, ApiRefusal),
}

/// The request facts the API guard needs.
pub struct ApiRequest<'a, H: Iterator<Item = (&'a str, &'a str)>> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    /// Every request header (for size and impersonation checks).
    pub headers: H,
}

/// A validated configuration with every reply precomputed.
pub struct Edge {
    api_refusals: RefusalReplies<ApiRefusal>,
    mesh: MeshGuard,
    local_uuid: String,
    docs: [CompiledDoc; 3],
    refusals: RefusalReplies<Refusal>,
    /// By lower-case UUID. A list, not a map: peers are tens, and each
    /// hash map type costs the size-bound Wasm module kilobytes of code.
    peers: Vec<(String, Peer)>,
    max_token_lifetime: i64,
    config: EdgeConfig,
}

/// Entries kept in [`TokenCache`] at most; past it, expired entries are
/// dropped and, if still full, the cache starts over.
pub const TOKEN_CACHE_CAPACITY: usize = 512;

/// Tokens whose signature, audience and issuer already verified against the
/// [`Edge`] this cache belongs to. Keyed by the whole token, so a hit is the
/// very same bytes. Times and scope are re-checked on every hit.
#[derive(Default)]
pub struct TokenCache {
    map: HashMap<Box<str>, CachedToken>,
}

#[derive(Clone)]
struct CachedToken {
    peer: std::rc::Rc<str>,
    scope: Option<Scope>,
    nbf: i64,
    exp: i64,
}

impl TokenCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, token: &str, entry: CachedToken, now: i64) {
        if self.map.len() >= TOKEN_CACHE_CAPACITY {
            self.map.retain(|_, t| now <= t.exp.saturating_add(MAX_CLOCK_SKEW_SECS));
            if self.map.len() >= TOKEN_CACHE_CAPACITY {
                self.map.clear();
            }
        }
        self.map.insert(token.into(), entry);
    }
}

/// A strong ETag: 128 bits of the body's SHA-512 (Ed25519 already links
/// SHA-512 into the filter; SHA-256 would cost it 5 KB more).
fn etag_of(body: &[u8]) -> String {
    let digest = Sha512::digest(body);
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in digest.iter().take(16) {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

fn compile_doc(body: Vec<u8>, cache_control: &str) -> CompiledDoc {
    let etag = etag_of(&body);
    let mut headers = json_headers(cache_control);
    headers.push(("etag".into(), etag.clone()));
    let not_modified_headers = vec![("etag".into(), etag.clone()), ("cache-control".into(), cache_control.into())];
    CompiledDoc {
        etag,
        ok: Reply { status: 200, headers, body },
        not_modified: Reply { status: 304, headers: not_modified_headers, body: Vec::new() },
    }
}

/// `If-None-Match` holds `etag` (or `*`), per RFC 9110 weak comparison.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Whether a plugin configuration says "nothing yet": empty, blank, or an
/// empty JSON object (a WasmPlugin's `pluginConfig: {}` before the agent
/// writes it). The filter accepts it and serves nothing.
pub fn is_unconfigured(bytes: &[u8]) -> bool {
    let t = bytes.trim_ascii();
    if t.is_empty() {
        return true;
    }
    // `{}` with any whitespace inside, without a JSON parser's code.
    t.first() == Some(&b'{') && t.last() == Some(&b'}') && t.get(1..t.len() - 1).is_some_and(|inner| inner.trim_ascii().is_empty())
}

impl Edge {
    /// Parses and validates a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Edge, ConfigError> {
        let config: EdgeConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError(format!("not valid JSON for the edge configuration: {e}")))?;
        Edge::compile(config)
    }

    pub fn compile(config: EdgeConfig) -> Result<Edge, ConfigError> {
        let public = config.public.validate().map_err(|e| ConfigError(format!("public.{e}")))?;
        config.private.validate().map_err(|e| ConfigError(format!("private.{e}")))?;
        let local_uuid = config.public.cluster_uuid.to_ascii_lowercase();
        let mut peers: Vec<(String, Peer)> = Vec::with_capacity(config.peers.len());
        for (i, p) in config.peers.iter().enumerate() {
            if !crate::metadata::is_uuid(&p.cluster_uuid) {
                return Err(ConfigError(format!("peers[{i}].clusterUUID: is not a UUID")));
            }
            let uuid = p.cluster_uuid.to_ascii_lowercase();
            if uuid == local_uuid {
                return Err(ConfigError(format!("peers[{i}].clusterUUID: is this cluster's own UUID")));
            }
            let key = crate::pem::ed25519_public_key_from_pem(&p.authn_key_pub)
                .map_err(|e| ConfigError(format!("peers[{i}].authnKeyPub: {e}")))?;
            let mut keys = vec![key];
            keys.extend(
                crate::metadata::additional_keys(&p.authn_key_pub, &p.additional_authn_keys_pub)
                    .map_err(|e| ConfigError(format!("peers[{i}].additionalAuthnKeysPub: {e}")))?,
            );
            if peers.iter().any(|(u, _)| *u == uuid) {
                return Err(ConfigError(format!("peers[{i}].clusterUUID: listed twice")));
            }
            if let Some(l) = p.max_api_token_lifetime_seconds {
                if !(1..=MAX_PEER_API_TOKEN_LIFETIME_SECONDS).contains(&l) {
                    return Err(ConfigError(format!(
                        "peers[{i}].maxApiTokenLifetimeSeconds: must be between 1 and {MAX_PEER_API_TOKEN_LIFETIME_SECONDS}"
                    )));
                }
            }
            peers.push((uuid, Peer { keys, max_api_lifetime: p.max_api_token_lifetime_seconds }));
        }
        if !(1..=366 * 86_400).contains(&config.max_token_lifetime_seconds) {
            return Err(ConfigError("maxTokenLifetimeSeconds: must be between 1 and 31622400".into()));
        }
        if config.spiffe.refresh_hint_seconds == 0 {
            return Err(ConfigError("spiffe.refreshHintSeconds: must be positive".into()));
        }
        let bundle = spiffe::bundle(&public.root, config.spiffe.sequence, config.spiffe.refresh_hint_seconds)
            .map_err(|e| ConfigError(format!("public.rootCA: {e}")))?;
        let ser = |v: &dyn erased::Ser| v.to_json().map_err(|e| ConfigError(format!("cannot serialize a document: {e}")));
        let public_cc = format!("public, max-age={}", config.public_max_age_seconds);
        let docs = [
            compile_doc(ser(&config.public)?, &public_cc),
            compile_doc(ser(&bundle)?, &public_cc),
            compile_doc(ser(&config.private)?, "private, no-store"),
        ];
        let mesh = MeshGuard::compile(&config.mesh, &local_uuid)?;
        Ok(Edge {
            api_refusals: RefusalReplies::compile(),
            mesh,
            local_uuid,
            docs,
            refusals: RefusalReplies::compile(),
            peers,
            max_token_lifetime: config.max_token_lifetime_seconds,
            config,
        })
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// The mesh port's guard (root id `multicloud-mesh`).
    pub fn mesh(&self) -> &MeshGuard {
        &self.mesh
    }

    pub fn etag(&self, doc: Doc) -> &str {
        self.docs.get(doc.index()).map(|d| d.etag.as_str()).unwrap_or_default()
    }

    fn refuse(&self, r: Refusal) -> Outcome<'_> {
        Outcome::Reply(self.refusals.get(r), Event::Refused(r))
    }

    /// Decides a request. `now` gives Unix seconds; it is only called when a
    /// token must be checked, so public documents cost no clock read.
    pub fn decide<'a>(&'a self, req: &Request<'_>, now: impl FnOnce() -> i64, cache: &mut TokenCache) -> Outcome<'a> {
        let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
        if !path.starts_with(METADATA_PREFIX) {
            return Outcome::Continue;
        }
        let doc = match path {
            PUBLIC_JSON_PATH => Doc::Public,
            SPIFFE_BUNDLE_PATH => Doc::SpiffeBundle,
            PRIVATE_MULTICLUSTER_PATH => Doc::PrivateMulticluster,
            _ => return self.refuse(Refusal::NotFound),
        };
        if req.method != "GET" && req.method != "HEAD" {
            return self.refuse(Refusal::MethodNotAllowed);
        }
        if doc == Doc::PrivateMulticluster {
            if let Err(e) = self.authorize(req.authorization, Scope::PrivateMulticluster, now(), cache) {
                return self.refuse(Refusal::Token(e));
            }
        }
        let Some(compiled) = self.docs.get(doc.index()) else {
            return Outcome::Continue; // unreachable: one entry per Doc
        };
        if req.if_none_match.is_some_and(|inm| etag_matches(inm, &compiled.etag)) {
            return Outcome::Reply(&compiled.not_modified, Event::NotModified(doc));
        }
        Outcome::Reply(&compiled.ok, Event::Served(doc))
    }

    /// Decides a request on the API proxy route. `now_ms` is Unix milliseconds.
    pub fn decide_api<'a, 'h, H: Iterator<Item = (&'h str, &'h str)>>(
        &'a self,
        req: ApiRequest<'h, H>,
        now_ms: u64,
        cache: &mut TokenCache,
        limiter: &mut PeerLimiter,
    ) -> ApiOutcome<'a> {
        let refuse = |r: ApiRefusal| ApiOutcome::Refuse(self.api_refusals.get(r), r);
        let headers: Vec<(&str, &str)> = req.headers.collect();
        let size: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        if size > self.config.api.max_header_bytes {
            return refuse(ApiRefusal::HeadersTooLarge);
        }
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let peer = match self.authenticate(req.authorization, Scope::Api, now, cache) {
            Ok(p) => p,
            Err(e) => return refuse(ApiRefusal::Token(e)),
        };
        let classified = match check_request(req.method, req.path, headers.into_iter(), usize::MAX, &self.config.api) {
            Ok(c) => c,
            Err(r) => return refuse(r),
        };
        let read = classified.read;
        if let Err(r) = limiter.admit(&peer, now_ms, read == ApiRead::Watch, &self.config.api) {
            return refuse(r);
        }
        let rewrite =
            classified.to_empty_namespace.then(|| crate::apiguard::empty_secrets_path(req.path, &self.config.api.empty_namespace));
        ApiOutcome::Allow { peer, read, rewrite }
    }

    /// Checks an `Authorization` header for a token of `need` scope.
    pub fn authorize(&self, authorization: Option<&str>, need: Scope, now: i64, cache: &mut TokenCache) -> Result<(), TokenError> {
        self.authenticate(authorization, need, now, cache).map(|_| ())
    }

    /// Like [`Edge::authorize`], returning the peer's cluster UUID (lower case).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        need: Scope,
        now: i64,
        cache: &mut TokenCache,
    ) -> Result<std::rc::Rc<str>, TokenError> {
        let header = authorization.ok_or(TokenError::Missing)?;
        if header.len() > token::MAX_TOKEN_BYTES + 16 {
            return Err(TokenError::TooLarge);
        }
        let header = header.trim();
        let (scheme, token) = header.split_once(' ').ok_or(if header.eq_ignore_ascii_case("bearer") {
            TokenError::Malformed
        } else {
            TokenError::WrongScheme
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::WrongScheme);
        }
        let token = token.trim();
        let max_lifetime = match need {
            Scope::Api => self.config.api.max_token_lifetime_seconds,
            Scope::PrivateMulticluster => self.max_token_lifetime,
        };
        let entry = match cache.map.get(token) {
            Some(hit) => hit.clone(),
            None => {
                let v = token::verify(token, &self.local_uuid, now, i64::MAX, |sub| {
                    let sub = sub.to_ascii_lowercase();
                    self.peers.iter().find(|(u, _)| *u == sub).map(|(_, p)| (sub, p.keys.as_slice()))
                })?;
                let entry = CachedToken { peer: v.peer.into(), scope: v.scope, nbf: v.nbf, exp: v.exp };
                cache.insert(token, entry.clone(), now);
                entry
            }
        };
        if now > entry.exp.saturating_add(MAX_CLOCK_SKEW_SECS) {
            cache.map.remove(token);
            return Err(TokenError::Expired);
        }
        if now.saturating_add(MAX_CLOCK_SKEW_SECS) < entry.nbf {
            return Err(TokenError::NotYetValid);
        }
        if entry.scope != Some(need) {
            return Err(TokenError::WrongScope);
        }
        let max_lifetime = match need {
            // The peer's own limit, where an operator set one.
            Scope::Api => self.peers.iter().find(|(u, _)| **u == *entry.peer).and_then(|(_, p)| p.max_api_lifetime).unwrap_or(max_lifetime),
            Scope::PrivateMulticluster => max_lifetime,
        };
        if entry.exp.saturating_sub(entry.nbf) > max_lifetime {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok(entry.peer)
    }
}

/// Object-safe JSON serialization for the three document types.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
        }
    }
}

#[cfg(test)]
mod tests;
