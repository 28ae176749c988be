//! The metadata exchange client (HTTPS with rustls): fetches a remote's
//! public and private documents with bounded time and size, and validates
//! every field before anyone relies on them.
//!
//! One [`Remote`] is built per `IstioMulticloud` spec (endpoint + trust) and
//! reused for every fetch; it owns a `reqwest` client over a rustls
//! `ClientConfig` built with the ring provider (no process-wide provider):
//! the trust choice and its configuration are [`trust`], the ways a fetch
//! fails [`error`], the reconciler's seam [`factory`].
//!
//! What a fetch guarantees:
//! - **HTTPS only.** The endpoint must be `https://`; the documents live at
//!   `<endpoint>/public/public.json` and `<endpoint>/private/multicluster.json`
//!   (the Deckhouse layout).
//! - **Trust** is exactly one of: the pinned CA bundle from `spec.metadata.ca`
//!   (and nothing else: no system roots mixed in), the system roots, or no
//!   verification of the certificate at all when the spec says
//!   `insecureSkipVerify` (handshake signatures are still checked, and every
//!   client build logs a warning naming the endpoint).
//! - **Bounded time**: a connect timeout and a total timeout that covers the
//!   body too, so a server that trickles bytes ends in [`FetchError::Timeout`].
//! - **Bounded size**: the body is read chunk by chunk and refused as soon as
//!   it passes `max_body_bytes` (or up front, when `Content-Length` says so);
//!   never more than the limit (plus one transport chunk) is held.
//! - **No redirects elsewhere**: a redirect to another scheme, host or port is
//!   refused; at most three same-host redirects are followed.
//! - **Validated documents**: every field passes `multicloud-core`'s
//!   `validate()`; errors name the field.
//! - Bearer tokens are marked sensitive and never logged.
//!
//! Failures carry a [`Reason`] ([`FetchError::reason`]) for `status.conditions`
//! and metrics (`Reason::as_str`, `Reason::metric_label`). The reconciler
//! paces retries and the steady refresh (`crate::reconcile::backoff`).

pub mod error;
pub mod factory;
pub mod trust;

pub use error::FetchError;
pub use trust::{client_config, Trust};

use multicloud_core::metadata::{InvalidField, PrivateMetadata, PublicMetadata, ValidPublic};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;
use url::Url;

/// Path of the public document under the metadata endpoint.
pub const PUBLIC_PATH: &str = "/public/public.json";
/// Path of the private document under the metadata endpoint.
pub const PRIVATE_PATH: &str = "/private/multicluster.json";
/// Same-host redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;
/// How much of an error body (401/403) is read to find the remote's reason.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Longest remote-provided text copied into an error message.
const REMOTE_TEXT_LIMIT: usize = 200;

/// Limits on one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPolicy {
    /// TCP connect (and TLS handshake start) deadline.
    pub connect_timeout: Duration,
    /// Deadline for the whole fetch: connect, request, headers and body.
    pub total_timeout: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy { connect_timeout: Duration::from_secs(5), total_timeout: Duration::from_secs(10), max_body_bytes: 1024 * 1024 }
    }
}

/// A remote cluster's metadata endpoint with its HTTPS client; built once per
/// spec change, cheap to share (`reqwest::Client` is reference counted).
#[derive(Clone)]
pub struct Remote {
    endpoint: String,
    public_url: Url,
    private_url: Url,
    client: reqwest::Client,
    policy: FetchPolicy,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("endpoint", &self.endpoint).field("policy", &self.policy).finish()
    }
}

/// Raised by the redirect policy; found again in the reqwest error's sources.
#[derive(Debug)]
enum RedirectVeto {
    OtherHost(String),
    TooMany,
}

impl fmt::Display for RedirectVeto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectVeto::OtherHost(t) => write!(f, "redirect to another host refused: {t}"),
            RedirectVeto::TooMany => write!(f, "more than {MAX_REDIRECTS} redirects"),
        }
    }
}

impl StdError for RedirectVeto {}

/// `scheme://host:port` of a URL, for messages.
fn origin(u: &Url) -> String {
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
}

impl Remote {
    /// Checks the endpoint and builds the HTTPS client for it.
    pub fn new(metadata_endpoint: &str, trust: Trust, policy: FetchPolicy) -> Result<Remote, FetchError> {
        let endpoint = metadata_endpoint.trim().trim_end_matches('/').to_string();
        let bad = |why: &str| FetchError::EndpointInvalid { endpoint: metadata_endpoint.to_string(), why: why.to_string() };
        let base = Url::parse(&endpoint).map_err(|e| bad(&e.to_string()))?;
        if base.scheme() != "https" {
            return Err(bad("must be an https:// URL"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        let join = |path: &str| Url::parse(&format!("{endpoint}{path}")).map_err(|e| bad(&e.to_string()));
        let public_url = join(PUBLIC_PATH)?;
        let private_url = join(PRIVATE_PATH)?;

        let tls = client_config(&trust, &endpoint)?;
        let (host, port) = (base.host_str().unwrap_or_default().to_string(), base.port_or_known_default());
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let next = attempt.url();
            if next.scheme() != "https" || next.host_str() != Some(host.as_str()) || next.port_or_known_default() != port {
                let target = origin(next);
                return attempt.error(RedirectVeto::OtherHost(target));
            }
            // `previous` holds every URL requested so far, the original first.
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(RedirectVeto::TooMany);
            }
            attempt.follow()
        });
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.total_timeout)
            .redirect(redirects)
            .user_agent(concat!("istio-multicloud-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::ClientBuild(chain(&e)))?;
        Ok(Remote { endpoint, public_url, private_url, client, policy })
    }

    /// The endpoint as used (trailing `/` trimmed).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET <endpoint>/public/public.json`, parsed and validated.
    pub async fn fetch_public(&self) -> Result<ValidPublic, FetchError> {
        let url = &self.public_url;
        let body = self.get(url, None).await?;
        let doc: PublicMetadata = parse_json(url, &body)?;
        doc.validate().map_err(|e| invalid_document(url, e))
    }

    /// `GET <endpoint>/private/multicluster.json` with `Authorization:
    /// Bearer <token>`, parsed and validated. The token is never logged.
    pub async fn fetch_private(&self, bearer_token: &str) -> Result<PrivateMetadata, FetchError> {
        let url = &self.private_url;
        let mut auth = HeaderValue::try_from(format!("Bearer {bearer_token}")).map_err(|_| FetchError::TokenInvalid)?;
        auth.set_sensitive(true);
        let body = self.get(url, Some(auth)).await?;
        let doc: PrivateMetadata = parse_json(url, &body)?;
        doc.validate().map_err(|e| invalid_document(url, e))?;
        Ok(doc)
    }

    /// One GET under the total deadline: status checked, body bounded.
    async fn get(&self, url: &Url, auth: Option<HeaderValue>) -> Result<Vec<u8>, FetchError> {
        let deadline = self.policy.total_timeout;
        let work = async {
            let mut req = self.client.get(url.clone()).header(ACCEPT, "application/json");
            if let Some(auth) = auth {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp = req.send().await.map_err(|e| classify(url, &e, deadline))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                return Err(unauthorized(url, status.as_u16(), resp, deadline).await);
            }
            if !status.is_success() {
                return Err(FetchError::HttpStatus { url: url.to_string(), status: status.as_u16() });
            }
            read_bounded(url, resp, self.policy.max_body_bytes, deadline).await
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { url: url.to_string(), after: deadline }),
        }
    }
}

/// Reads the body chunk by chunk, refusing it once it passes `limit`.
async fn read_bounded(url: &Url, mut resp: reqwest::Response, limit: usize, deadline: Duration) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::BodyTooLarge { url: url.to_string(), limit };
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let initial = declared.map_or(8 * 1024, |n| usize::try_from(n).unwrap_or(limit)).min(limit);
    let mut body = Vec::with_capacity(initial);
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(url, &e, deadline))? {
        if chunk.len() > limit - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The remote's JSON error body, as the edge filter writes it.
#[derive(serde::Deserialize)]
struct RemoteError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Remote text made safe for a condition message: printable, short.
fn sanitize(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(REMOTE_TEXT_LIMIT).collect();
    if s.chars().count() > REMOTE_TEXT_LIMIT {
        out.push('…');
    }
    out
}

async fn unauthorized(url: &Url, status: u16, resp: reqwest::Response, deadline: Duration) -> FetchError {
    let parsed =
        read_bounded(url, resp, ERROR_BODY_LIMIT, deadline).await.ok().and_then(|b| serde_json::from_slice::<RemoteError>(&b).ok());
    let (remote_reason, remote_error) = match parsed {
        Some(RemoteError { error, reason }) => (reason.map(|r| sanitize(&r)), error.map(|e| sanitize(&e))),
        None => (None, None),
    };
    FetchError::Unauthorized { url: url.to_string(), status, remote_reason, remote_error }
}

/// JSON that does not parse is `MalformedJson`; JSON of the wrong shape
/// (missing field, wrong type) is `InvalidDocument`, with serde's message,
/// which names the field.
fn parse_json<T: serde::de::DeserializeOwned>(url: &Url, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            FetchError::InvalidDocument { url: url.to_string(), field: serde_field(&e.to_string()), why: e.to_string() }
        }
        _ => FetchError::MalformedJson { url: url.to_string(), why: e.to_string() },
    })
}

/// The field name in serde's "missing field `x`" / "unknown field `x`".
fn serde_field(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg.get(start..)?.find('`')?;
    msg.get(start..start + len).map(str::to_string)
}

fn invalid_document(url: &Url, e: InvalidField) -> FetchError {
    FetchError::InvalidDocument { url: url.to_string(), why: e.to_string(), field: Some(e.field) }
}

/// Every message in an error's source chain, joined.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// Finds a `T` in an error's sources, looking inside `io::Error`s too
/// (whose `source()` skips the error they wrap).
fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

fn classify(url: &Url, e: &reqwest::Error, deadline: Duration) -> FetchError {
    let url_s = url.to_string();
    if let Some(veto) = find_source::<RedirectVeto>(e) {
        return match veto {
            RedirectVeto::OtherHost(target) => FetchError::RedirectRefused { url: url_s, target: target.clone() },
            RedirectVeto::TooMany => FetchError::TooManyRedirects { url: url_s, max: MAX_REDIRECTS },
        };
    }
    if e.is_timeout() {
        return FetchError::Timeout { url: url_s, after: deadline };
    }
    if let Some(tls) = find_source::<rustls::Error>(e) {
        let why = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertRevocationList(_) => {
                FetchError::TlsVerificationFailed { url: url_s, why }
            }
            _ => FetchError::TlsHandshakeFailed { url: url_s, why },
        };
    }
    if e.is_connect() {
        return FetchError::ConnectFailed { url: url_s, why: chain(e) };
    }
    FetchError::Request { url: url_s, why: chain(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_chooses_pinned_system_or_no_verification() {
        use crate::crd::MetadataTls;
        assert_eq!(Trust::from_spec(None), Trust::SystemRoots);
        assert_eq!(Trust::from_spec(Some(&MetadataTls::default())), Trust::SystemRoots);
        let insecure = MetadataTls { ca: None, insecure_skip_verify: true };
        assert_eq!(Trust::from_spec(Some(&insecure)), Trust::InsecureSkipVerify);
        let both = MetadataTls { ca: Some("PEM".into()), insecure_skip_verify: true };
        assert_eq!(Trust::from_spec(Some(&both)), Trust::Pinned("PEM".into()));
    }

    #[test]
    fn endpoints_must_be_https_without_extras() {
        let ok = Remote::new("https://gw.example.com/metadata//", Trust::InsecureSkipVerify, FetchPolicy::default()).unwrap();
        assert_eq!(ok.endpoint(), "https://gw.example.com/metadata");
        assert_eq!(ok.public_url.as_str(), "https://gw.example.com/metadata/public/public.json");
        assert_eq!(ok.private_url.as_str(), "https://gw.example.com/metadata/private/multicluster.json");
        for bad in ["http://gw.example.com/metadata", "gw.example.com", "https://u:p@gw/m", "https://gw/m?x=1", ""] {
            let e = Remote::new(bad, Trust::InsecureSkipVerify, FetchPolicy::default()).unwrap_err();
            assert_eq!(e.reason().as_str(), "EndpointInvalid", "{bad}: {e}");
            assert_eq!(e.metric_label(), "endpoint_invalid");
        }
    }

    #[test]
    fn a_pin_that_is_not_a_certificate_is_refused() {
        let e = Remote::new("https://gw/m", Trust::Pinned("nope".into()), FetchPolicy::default()).unwrap_err();
        assert_eq!(e.reason().as_str(), "TrustInvalid", "{e}");
    }

    #[test]
    fn serde_field_names_are_kept() {
        assert_eq!(serde_field("missing field `authnKeyPub` at line 1 column 2").as_deref(), Some("authnKeyPub"));
        assert_eq!(serde_field("expected value"), None);
        assert_eq!(sanitize("a\nb"), "ab");
    }
}
