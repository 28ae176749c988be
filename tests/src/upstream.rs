//! An HTTP/1.1 upstream that records the requests it receives, so tests can
//! assert what a filter let through, and with which headers. It keeps the
//! last [`RECORD_LIMIT`] requests (a benchmark's load would otherwise grow
//! it without bound) and counts all of them.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<VecDeque<Recorded>>,
    count: AtomicU64,
    stop: AtomicBool,
}

pub struct RecordingUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    /// Keep only a count (benchmarks), not every request.
    record: bool,
}

/// What an upstream answers.
#[derive(Clone)]
enum Reply {
    /// `upstream <method> <path>` (text).
    Plain,
    /// The echo app: JSON `{"cluster": <label>, "path", "headers": {name: value}}`,
    /// so a test sees which cluster answered and who it says called.
    Echo(Arc<str>),
}

const MAX_HEAD: usize = 64 * 1024;

/// How many of the latest requests an upstream keeps (oldest dropped first).
pub const RECORD_LIMIT: usize = 1000;

/// Serves every connection `listener` accepts on a thread of its own with
/// `handle`, until `stopped(state)` says so (checked at each accept).
pub(crate) fn accept_each<S: Send + Sync + 'static>(
    listener: TcpListener,
    state: Arc<S>,
    stopped: impl Fn(&S) -> bool + Send + 'static,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped(&state) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(conn));
        }
    });
}

impl RecordingUpstream {
    /// Listens on `ip:0`. Answers `200 upstream <method> <path>`.
    pub fn start(ip: std::net::Ipv4Addr, record: bool) -> RecordingUpstream {
        Self::start_with(ip, record, Reply::Plain)
    }

    /// The echo app of a simulated cluster: answers every request with
    /// JSON naming `cluster` and every request header it received (the
    /// caller identity a sidecar or gateway passed on), and records it.
    pub fn start_echo(ip: std::net::Ipv4Addr, cluster: &str) -> RecordingUpstream {
        Self::start_with(ip, true, Reply::Echo(cluster.into()))
    }

    fn start_with(ip: std::net::Ipv4Addr, record: bool, reply: Reply) -> RecordingUpstream {
        let listener = TcpListener::bind((ip, 0)).expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        accept_each(listener, state.clone(), |s| s.stop.load(Ordering::Relaxed), move |conn| serve(conn, &st, record, &reply));
        RecordingUpstream { addr, state, record }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn count(&self) -> u64 {
        self.state.count.load(Ordering::SeqCst)
    }

    /// The last [`RECORD_LIMIT`] requests, oldest first ([`Self::count`] counts all).
    pub fn requests(&self) -> Vec<Recorded> {
        assert!(self.record, "this upstream only counts");
        self.state.requests.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

impl RecordingUpstream {
    /// Stops answering: new connections are refused, requests on open ones
    /// get no answer (the app died).
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake accept()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one HTTP/1.1 request (head at most `max_head` bytes, body up to
/// 1 MiB by `content-length`, discarded); `None` at EOF or on a bad request.
/// Header names are lower-cased.
pub(crate) fn read_request(rd: &mut BufReader<TcpStream>, max_head: usize) -> Option<Recorded> {
    let mut line = String::new();
    if rd.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut headers = Vec::new();
    let mut size = line.len();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        size += h.len();
        if size > max_head {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                content_length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; content_length.min(1 << 20)];
    rd.read_exact(&mut body).ok()?;
    Some(Recorded { method, path, headers })
}

fn serve(conn: TcpStream, st: &State, record: bool, reply_kind: &Reply) {
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else { return };
    let mut rd = BufReader::new(conn);
    loop {
        let Some(Recorded { method, path, headers }) = read_request(&mut rd, MAX_HEAD) else { return };
        if st.stop.load(Ordering::SeqCst) {
            // Stopped: close kept-alive connections too, without an answer.
            return;
        }
        let (content_type, reply) = match reply_kind {
            Reply::Plain => ("text/plain", format!("upstream {method} {path}\n")),
            Reply::Echo(cluster) => {
                let h: serde_json::Map<String, serde_json::Value> =
                    headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                ("application/json", serde_json::json!({"cluster": &**cluster, "path": path, "headers": h}).to_string())
            }
        };
        if record {
            let mut kept = st.requests.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() >= RECORD_LIMIT {
                kept.pop_front();
            }
            kept.push_back(Recorded { method, path, headers });
        }
        st.count.fetch_add(1, Ordering::SeqCst);
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{reply}", reply.len());
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
