//! Why a fetch failed ([`FetchError`]), naming the URL and the cause, and
//! the condition [`Reason`] and metric label each failure is reported under.

use crate::reasons::Reason;
use std::time::Duration;

/// Why a fetch (or building the client for it) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("metadata endpoint {endpoint:?} is invalid: {why}")]
    EndpointInvalid { endpoint: String, why: String },
    #[error("TLS trust configuration is invalid: {0}")]
    TrustInvalid(String),
    #[error("cannot build the HTTPS client: {0}")]
    ClientBuild(String),
    #[error("the bearer token cannot be sent as an HTTP header value")]
    TokenInvalid,
    #[error("cannot connect to {url}: {why}")]
    ConnectFailed { url: String, why: String },
    #[error("{url} did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("TLS certificate of {url} is not trusted: {why}")]
    TlsVerificationFailed { url: String, why: String },
    #[error("TLS handshake with {url} failed: {why}")]
    TlsHandshakeFailed { url: String, why: String },
    #[error("{url} redirects to another host, refused: {target}")]
    RedirectRefused { url: String, target: String },
    #[error("{url} redirects more than {max} times")]
    TooManyRedirects { url: String, max: usize },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url} refused the request (HTTP {status}){}", remote_detail(.remote_reason, .remote_error))]
    Unauthorized { url: String, status: u16, remote_reason: Option<String>, remote_error: Option<String> },
    #[error("{url} sent a body larger than {limit} bytes")]
    BodyTooLarge { url: String, limit: usize },
    #[error("{url} is not valid JSON: {why}")]
    MalformedJson { url: String, why: String },
    #[error("{url} is not a valid document: {why}")]
    InvalidDocument { url: String, field: Option<String>, why: String },
    #[error("request to {url} failed: {why}")]
    Request { url: String, why: String },
}

fn remote_detail(reason: &Option<String>, error: &Option<String>) -> String {
    match (reason, error) {
        (Some(r), Some(e)) => format!(": {r}: {e}"),
        (Some(r), None) => format!(": {r}"),
        (None, Some(e)) => format!(": {e}"),
        (None, None) => String::new(),
    }
}

impl FetchError {
    /// The condition reason (`Reason::as_str` is its CamelCase word).
    pub fn reason(&self) -> Reason {
        match self {
            FetchError::EndpointInvalid { .. } => Reason::EndpointInvalid,
            FetchError::TrustInvalid(_) => Reason::TrustInvalid,
            FetchError::ClientBuild(_) => Reason::ClientBuildFailed,
            FetchError::TokenInvalid => Reason::TokenInvalid,
            FetchError::ConnectFailed { .. } => Reason::ConnectFailed,
            FetchError::Timeout { .. } => Reason::Timeout,
            FetchError::TlsVerificationFailed { .. } => Reason::TlsVerificationFailed,
            FetchError::TlsHandshakeFailed { .. } => Reason::TlsHandshakeFailed,
            FetchError::RedirectRefused { .. } | FetchError::TooManyRedirects { .. } => Reason::RedirectRefused,
            FetchError::HttpStatus { .. } => Reason::HttpStatus,
            FetchError::Unauthorized { .. } => Reason::Unauthorized,
            FetchError::BodyTooLarge { .. } => Reason::BodyTooLarge,
            FetchError::MalformedJson { .. } => Reason::MalformedJson,
            FetchError::InvalidDocument { .. } => Reason::InvalidDocument,
            FetchError::Request { .. } => Reason::RequestFailed,
        }
    }

    /// snake_case of [`FetchError::reason`], for metric labels.
    pub fn metric_label(&self) -> &'static str {
        self.reason().metric_label()
    }
}
