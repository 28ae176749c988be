//! A recorded Kubernetes API server: plain HTTP/1.1 on a cluster's loopback
//! address (the gateway reaches it unencrypted in the test bed; production
//! uses TLS to the API server). It records every request (method, path,
//! headers) and answers with the shapes a `kube` client expects:
//!
//! - `/version`, `/api`, `/apis`: minimal discovery documents;
//! - `GET /api/v1/services` and `/api/v1/namespaces/<ns>/services`: a
//!   `ServiceList`;
//! - the same with `?watch=true` (or `watch=1`): a chunked stream of
//!   newline-delimited `WatchEvent`s, one `ADDED` at once, then a `BOOKMARK`
//!   every second, until the client goes away or 60 s pass;
//! - anything else: 404 with a `Status` body.

use crate::upstream::Recorded;
use std::io::{BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    watch_events: AtomicU64,
    stop: AtomicBool,
}

pub struct RecordedApiServer {
    addr: SocketAddr,
    state: Arc<State>,
}

const MAX_HEAD: usize = 256 * 1024;
/// How long a watch stream stays open at most.
pub const WATCH_LIMIT: Duration = Duration::from_secs(60);

impl RecordedApiServer {
    pub fn start(ip: std::net::Ipv4Addr) -> RecordedApiServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind API server");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        crate::upstream::accept_each(listener, state.clone(), |s| s.stop.load(Ordering::Relaxed), move |conn| serve(conn, &st));
        RecordedApiServer { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Watch events written to clients so far (ADDED and BOOKMARK).
    pub fn watch_events(&self) -> u64 {
        self.state.watch_events.load(Ordering::SeqCst)
    }
}

impl Drop for RecordedApiServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

pub fn service(ns: &str, name: &str, rv: u64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "resourceVersion": rv.to_string()},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "type": "ClusterIP"}
    })
}

fn services(ns: Option<&str>) -> Vec<serde_json::Value> {
    let all = [service("abc", "foo", 11), service("abc", "bar", 12), service("default", "kubernetes", 10)];
    all.into_iter().filter(|s| ns.is_none_or(|n| s["metadata"]["namespace"] == n)).collect()
}

fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn respond(out: &mut TcpStream, code: u16, body: &serde_json::Value) -> std::io::Result<()> {
    let b = body.to_string();
    let text = if code == 200 { "OK" } else { "Not Found" };
    write!(out, "HTTP/1.1 {code} {text}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}", b.len())
}

fn chunk(out: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()
}

fn watch(out: &mut TcpStream, st: &State, ns: Option<&str>) -> std::io::Result<()> {
    write!(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")?;
    let first = services(ns).into_iter().next().unwrap_or_else(|| service("abc", "foo", 11));
    chunk(out, &format!("{}\n", serde_json::json!({"type": "ADDED", "object": first})))?;
    st.watch_events.fetch_add(1, Ordering::SeqCst);
    let start = Instant::now();
    let mut rv = 100u64;
    while start.elapsed() < WATCH_LIMIT && !st.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        rv += 1;
        let bookmark = serde_json::json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"resourceVersion": rv.to_string()}}});
        chunk(out, &format!("{bookmark}\n"))?;
        st.watch_events.fetch_add(1, Ordering::SeqCst);
    }
    write!(out, "0\r\n\r\n")?;
    out.flush()
}

fn handle(out: &mut TcpStream, st: &State, method: &str, target: &str) -> std::io::Result<()> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let is_watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    if method != "GET" {
        return respond(out, 404, &status(405, "MethodNotAllowed", "the recorded API server only reads"));
    }
    let ns = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "api", "v1", "services"] => Some(None),
        ["", "api", "v1", "namespaces", ns, "services"] => Some(Some(ns.to_string())),
        _ => None,
    };
    match (path, ns) {
        ("/version", _) => {
            respond(out, 200, &serde_json::json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}))
        }
        ("/api", _) => respond(out, 200, &serde_json::json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
        ("/apis", _) => respond(out, 200, &serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
        (_, Some(ns)) if is_watch => watch(out, st, ns.as_deref()),
        (_, Some(ns)) => respond(
            out,
            200,
            &serde_json::json!({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "42"}, "items": services(ns.as_deref())}),
        ),
        _ => respond(out, 404, &status(404, "NotFound", "the recorded API server does not serve this path")),
    }
}

fn serve(conn: TcpStream, st: &State) {
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else { return };
    let mut rd = BufReader::new(conn);
    loop {
        let Some(Recorded { method, path, headers }) = crate::upstream::read_request(&mut rd, MAX_HEAD) else { return };
        st.requests.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded { method: method.clone(), path: path.clone(), headers });
        if handle(&mut out, st, &method, &path).is_err() {
            return;
        }
    }
}
