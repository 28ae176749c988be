//! A small blocking HTTP client for tests (loopback only).

use std::io::Read as _;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).redirects(0).build()
}

/// Sends a request; any HTTP status is a response, only transport errors fail.
pub fn try_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let status = resp.status();
    let headers = resp.headers_names().into_iter().filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string()))).collect();
    let mut body = Vec::new();
    resp.into_reader().take(16 << 20).read_to_end(&mut body).map_err(|e| format!("reading body: {e}"))?;
    Ok(Resp { status, headers, body })
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    try_request(method, url, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn get(url: &str) -> Resp {
    request("GET", url, &[])
}
