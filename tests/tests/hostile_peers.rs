//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! Hostile peers are bounded: cluster A (23) is linked to a good peer B (24)
//! and to five hostile ones, all served by one TLS server on cluster 25's
//! range, one behaviour per endpoint path:
//! - `huge`: a public document of 100 MB, streamed without a length;
//! - `drip`: a public document trickled one byte every 500 ms;
//! - `loop`: a redirect to itself, for ever;
//! - `crowd`: a valid public document, then a private one listing 100,000
//!   services (about 7 MB, streamed);
//! - `dense`: a valid public document, then a private one listing 10,001
//!   services in under 1 MiB (the service limit, not the size limit).
//!
//! Each ends in its own reason on its own object (status and the fetch
//! metric), the agent holds no more than the body limit in memory, and B
//! stays Ready, keeps being fetched and keeps its data plane the whole time.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::{ExportedService, ServicePort, MAX_SERVICES};
use multicloud_e2e::fixtures::{sample_private, Ca, ClusterIdentity};
use multicloud_e2e::mesh::{start_full_mesh, Cluster, PeerRef};
use multicloud_e2e::{wait_until, SimCluster};
use rustls::pki_types::pem::PemObject;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);
const HOSTILE: SimCluster = SimCluster(25);

/// The hostile server: a TLS listener whose accept loop stops when the
/// test drops it, or after two minutes, whichever comes first; every reply
/// is bounded in bytes and time.
struct Hostile {
    addr: std::net::SocketAddr,
    ca: Ca,
    stop: Arc<AtomicBool>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A private document of `n` services with short names.
fn private_with(n: usize) -> String {
    let mut p = sample_private(HOSTILE);
    p.services = (0..n)
        .map(|i| ExportedService {
            hostname: format!("s{i}.a.svc.cluster.local"),
            ports: vec![ServicePort { name: "h".into(), port: 80, protocol: None }],
            ready_endpoints: 1,
        })
        .collect();
    serde_json::to_string(&p).unwrap()
}

fn head(status: &str, extra: &str) -> String {
    format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}\r\n")
}

/// Writes `total` bytes of `body` repeated, chunked, in 64 KiB chunks,
/// until the client goes away.
fn chunked(w: &mut impl Write, body: &[u8], total: usize) {
    if w.write_all(head("200 OK", "transfer-encoding: chunked\r\n").as_bytes()).is_err() {
        return;
    }
    let mut sent = 0;
    for chunk in body.chunks(64 * 1024).cycle() {
        if sent >= total {
            break;
        }
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if w.write_all(&framed).is_err() {
            return;
        }
        sent += chunk.len();
    }
    let _ = w.write_all(b"0\r\n\r\n");
}

fn serve_one(tcp: TcpStream, config: Arc<rustls::ServerConfig>, public: Arc<String>, crowd: Arc<String>, dense: Arc<String>) {
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(15)));
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(15)));
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut line = String::new();
    {
        let mut r = BufReader::new(&mut tls);
        if r.read_line(&mut line).is_err() {
            return;
        }
        // The request's header lines, up to the blank one (bounded).
        for _ in 0..100 {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mode = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let public_doc = path.ends_with("/public/public.json");
    match (mode, public_doc) {
        ("huge", _) => chunked(&mut tls, &[b' '; 64 * 1024], 100 * 1024 * 1024),
        ("drip", _) => {
            let body = public.as_bytes();
            if tls.write_all(head("200 OK", &format!("content-length: {}\r\n", body.len())).as_bytes()).is_err() {
                return;
            }
            // At most 60 bytes, 30 s: the agent gives up first.
            for b in body.iter().take(60) {
                if tls.write_all(&[*b]).and_then(|_| tls.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        ("loop", _) => {
            let _ = tls.write_all(head("302 Found", &format!("location: {path}\r\ncontent-length: 0\r\n")).as_bytes());
        }
        ("crowd" | "dense", true) => {
            let _ = tls.write_all(head("200 OK", &format!("content-length: {}\r\n", public.len())).as_bytes());
            let _ = tls.write_all(public.as_bytes());
        }
        ("crowd", false) => chunked(&mut tls, crowd.as_bytes(), crowd.len()),
        ("dense", false) => {
            let _ = tls.write_all(head("200 OK", &format!("content-length: {}\r\n", dense.len())).as_bytes());
            let _ = tls.write_all(dense.as_bytes());
        }
        _ => {
            let _ = tls.write_all(head("404 Not Found", "content-length: 0\r\n").as_bytes());
        }
    }
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn start_hostile(ip: Ipv4Addr) -> Hostile {
    let ca = Ca::generate("hostile peer's edge CA");
    let (cert_pem, key_pem) = ca.server_cert(ip);
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = Arc::new(multicloud_agent::xds::tls::server_config(certs, key, None, &[b"http/1.1"]).unwrap());
    let id = ClusterIdentity::generate("hostile");
    let public = Arc::new(serde_json::to_string(&id.public_metadata()).unwrap());
    let crowd = Arc::new(private_with(100_000));
    let dense = Arc::new(private_with(MAX_SERVICES + 1));
    assert!(crowd.len() > 4 * 1024 * 1024, "the crowded document is several MiB: {}", crowd.len());
    assert!(dense.len() < 1024 * 1024, "the dense document is under the body limit, so the service limit refuses it: {}", dense.len());
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(120);
        while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
            match listener.accept() {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nonblocking(false);
                    let (config, public, crowd, dense) = (config.clone(), public.clone(), crowd.clone(), dense.clone());
                    std::thread::spawn(move || serve_one(tcp, config, public, crowd, dense));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Hostile { addr, ca, stop }
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn fetch_count(metrics: &str, peer: &str, document: &str, result: &str) -> f64 {
    let prefix = format!("multicloud_agent_fetch_total{{peer=\"{peer}\",document=\"{document}\",result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn hostile_peers_are_cut_off_with_a_reason_and_the_good_peer_is_not_disturbed() {
    let mut cs = start_full_mesh(&[SimCluster(23), SimCluster(24)]);
    let b_name = Cluster::object_name(cs[1].sim);
    cs[0].agent.wait_condition(&b_name, "Ready", "True", SETTLE);
    let hostile = start_hostile(HOSTILE.ip(1));
    let before = cs[0].agent.metrics();
    let b_fetched = fetch_count(&before, &b_name, "public", "ok");

    // (object, the condition that fails, its reason, the fetch metric's document and label, a word of the message)
    let cases = [
        ("hostile-huge", "PublicMetadataExchangeReady", "BodyTooLarge", "public", "body_too_large", "1048576"),
        ("hostile-drip", "PublicMetadataExchangeReady", "Timeout", "public", "timeout", ""),
        ("hostile-loop", "PublicMetadataExchangeReady", "RedirectRefused", "public", "redirect_refused", "redirects"),
        ("hostile-crowd", "PrivateMetadataExchangeReady", "BodyTooLarge", "private", "body_too_large", "1048576"),
        ("hostile-dense", "PrivateMetadataExchangeReady", "InvalidDocument", "private", "invalid_document", "services"),
    ];
    for (name, ..) in &cases {
        let mode = name.trim_start_matches("hostile-");
        cs[0].peers.push(PeerRef {
            object_name: name.to_string(),
            endpoint: format!("https://{}/{mode}", hostile.addr),
            ca_pem: hostile.ca.pem(),
        });
    }
    cs[0].rewrite_standalone();

    for (name, condition, reason, document, label, word) in &cases {
        let s = cs[0].agent.wait_reason(name, condition, "False", reason, SETTLE);
        let c = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == *condition).unwrap().clone();
        assert!(c["message"].as_str().unwrap_or("").contains(word), "{name}: the message says why: {c}");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "False", "{name} never becomes Ready: {ready}");
        let m = cs[0].agent.metrics();
        assert!(fetch_count(&m, name, document, label) >= 1.0, "{name}: counted as {document}/{label}");
        assert!(m.contains(&format!("multicloud_agent_peer_ready{{peer=\"{name}\"}} 0")), "{name} is not a ready peer");
    }
    eprintln!("FIGURES hostile peers: {:?}", cases.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>());

    // B, meanwhile: still Ready, still fetched, still in A's data plane.
    let m = cs[0].agent.metrics();
    assert!(m.contains(&format!("multicloud_agent_peer_ready{{peer=\"{b_name}\"}} 1")), "B stays ready");
    let b_uuid = cs[1].id.uuid.clone();
    wait_until("A to fetch B again while the hostile peers are refused", SETTLE, || {
        let n = fetch_count(&cs[0].agent.metrics(), &b_name, "public", "ok");
        if n > b_fetched {
            Ok(())
        } else {
            Err(format!("{n} fetches of B's public document"))
        }
    });
    let s = cs[0].agent.status();
    assert_eq!(s["objects"][&b_name]["remoteClusterUUID"], b_uuid.as_str());
    let ready = s["objects"][&b_name]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "True", "B is not disturbed: {ready}");
    // A's gateway still answers B's private fetch: B stays Ready on its side.
    let a_name = Cluster::object_name(cs[0].sim);
    let b_side = cs[1].agent.status()["objects"][&a_name]["conditions"].clone();
    assert!(b_side.as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True"), "{b_side}");

    // The 100 MB and 7 MB bodies were cut off, not held: the agent's peak
    // memory stays far below either.
    let pid = cs[0].agent.pid().unwrap();
    let peak = vm_rss_kib(pid);
    eprintln!("FIGURES agent peak RSS with the hostile peers: {peak} KiB");
    assert!(peak > 0 && peak < 64 * 1024, "the agent's peak RSS {peak} KiB");
    drop(hostile);
}
