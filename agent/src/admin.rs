//! The agent's HTTP port (`--http`): `/healthz` (the process runs),
//! `/readyz` (state loaded and every data plane sink applied, set by
//! `crate::sinks::ready`), `/metrics` (OpenMetrics text, `crate::metrics`),
//! `/status` (every object's status, the source's last error and the agent's
//! configuration, JSON) and `/xds` (every connected proxy's ACKed versions
//! and last NACK, JSON). GET only; served by axum over HTTP/1.1; [`route`]
//! decides every answer.

use crate::metrics::Metrics;
use crate::sinks::status::StatusBoard;
use axum::http::{header, Method, StatusCode, Uri};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub board: Arc<StatusBoard>,
    /// Set by `crate::sinks::ready` once the first data plane state was applied.
    pub ready: Arc<AtomicBool>,
    pub source_error: Arc<Mutex<Option<String>>>,
    pub xds: Option<crate::xds::server::XdsServer>,
    /// The agent's configuration (`crate::config::Config`), shown on `/status`.
    pub config: Option<serde_json::Value>,
}

/// Serves the port until the process ends. axum's accept loop waits a
/// second after an error such as EMFILE (out of file descriptors) instead of
/// retrying at once, so a full descriptor table costs no CPU.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let state = state.clone();
        async move {
            let (status, ctype, body) = route(method.as_str(), uri.path(), &state);
            (status, [(header::CONTENT_TYPE, ctype)], body)
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP port (--http) stopped: {e}");
    }
}

/// The one routing decision: status, content type and body for a request.
pub fn route(method: &str, path: &str, s: &AdminState) -> (StatusCode, &'static str, String) {
    if method != "GET" {
        return (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if let Some(e) = s.source_error.lock().clone() {
                if !s.ready.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {e}\n"));
                }
            }
            if s.ready.load(Ordering::SeqCst) {
                (StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: the edge configuration has not been written yet\n".into())
            }
        }
        "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", s.metrics.render()),
        "/xds" => {
            // Connected proxies, each one's ACKed versions per type and its last NACK.
            let view = s.xds.as_ref().map(|x| x.view()).unwrap_or_default();
            (StatusCode::OK, "application/json", serde_json::to_string(&view).unwrap_or_default())
        }
        "/status" => {
            let mut v = serde_json::to_value(s.board.snapshot()).unwrap_or_default();
            if let (Some(e), Some(o)) = (s.source_error.lock().clone(), v.as_object_mut()) {
                o.insert("sourceError".into(), serde_json::Value::String(e));
            }
            if let (Some(c), Some(o)) = (&s.config, v.as_object_mut()) {
                o.insert("config".into(), c.clone());
            }
            (StatusCode::OK, "application/json", v.to_string())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /healthz, /readyz, /metrics, /status or /xds\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_the_objects_and_the_configuration() {
        let state = AdminState {
            metrics: Arc::default(),
            board: Arc::new(StatusBoard::new(None)),
            ready: Arc::default(),
            source_error: Arc::default(),
            xds: None,
            config: Some(serde_json::json!({"http": "127.0.0.1:15090", "mode": {"kind": "standalone"}})),
        };
        let (code, ctype, body) = route("GET", "/status", &state);
        assert_eq!((code, ctype), (StatusCode::OK, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["config"]["mode"]["kind"], "standalone");
        assert!(v["objects"].is_object(), "{v}");
    }
}
