//! The agent's HTTP port: `/healthz` (the process runs), `/readyz` (state
//! loaded and the edge configured), `/metrics` (Prometheus text) and
//! `/status` (every object's status and the agent's configuration, JSON). A deliberately small HTTP/1.1
//! responder: GET only, bounded request head, one request per connection.

use crate::metrics::Metrics;
use crate::sinks::status::StatusBoard;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Read until the end of the request head, within 8 KiB and 5 s.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while let Some(rest) = buf.get_mut(n..).filter(|r| !r.is_empty()) {
                    match conn.read(rest).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => n += k,
                    }
                    if buf.get(..n).unwrap_or_default().windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = route(method, path, &state);
            let resp = format!("HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}

fn route(method: &str, path: &str, s: &AdminState) -> (&'static str, &'static str, String) {
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => {
            if let Some(e) = s.source_error.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                if !s.ready.load(Ordering::SeqCst) {
                    return ("503 Service Unavailable", "text/plain", format!("not ready: {e}\n"));
                }
            }
            if s.ready.load(Ordering::SeqCst) {
                ("200 OK", "text/plain", "ready\n".into())
            } else {
                ("503 Service Unavailable", "text/plain", "not ready: the edge configuration has not been written yet\n".into())
            }
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", s.metrics.render()),
        "/xds" => {
            // Connected proxies, each one's ACKed versions per type and its last NACK.
            let proxies = s.xds.as_ref().map(|x| x.proxies()).unwrap_or_default();
            (
                "200 OK",
                "application/json",
                serde_json::json!({ "proxies": proxies, "nacks": s.xds.as_ref().map_or(0, |x| x.nack_count()) }).to_string(),
            )
        }
        "/status" => {
            let mut v = serde_json::to_value(s.board.snapshot()).unwrap_or_default();
            if let (Some(e), Some(o)) = (s.source_error.lock().unwrap_or_else(|e| e.into_inner()).clone(), v.as_object_mut()) {
                o.insert("sourceError".into(), serde_json::Value::String(e));
            }
            if let (Some(c), Some(o)) = (&s.config, v.as_object_mut()) {
                o.insert("config".into(), c.clone());
            }
            ("200 OK", "application/json", v.to_string())
        }
        _ => ("404 Not Found", "text/plain", "try /healthz, /readyz, /metrics, /status or /xds\n".into()),
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
        assert_eq!((code, ctype), ("200 OK", "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["config"]["mode"]["kind"], "standalone");
        assert!(v["objects"].is_object(), "{v}");
    }
}
