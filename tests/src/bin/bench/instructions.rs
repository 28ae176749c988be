//! Instruction counts per request (valgrind's callgrind), beside the req/s
//! ratios of the edge and API sections: counts do not move with the
//! machine's load, which the req/s ratios do (issue 19, item 4).
//!
//! One Envoy, the edge section's bootstrap, runs under callgrind,
//! uninstrumented until measured. For each target: a warm-up on one keep-alive connection
//! (not counted), then `BENCH_CALLGRIND_REQUESTS` (2,000) requests on one
//! keep-alive connection with collection on, all of Envoy's threads
//! counted. Envoy's idle instructions over the same time (timers, stats)
//! are measured alone and taken off.

use super::{api_bench, edge_bench, ApiBench, EdgeBench};
use multicloud_e2e::bench::write_section;
use multicloud_e2e::envoy::Envoy;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `n` GETs of `path` on one keep-alive connection, each answered 200.
fn keepalive_requests(addr: SocketAddr, path: &str, headers: &[(&str, &str)], n: usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        extra.push_str("Host: bench.example\r\n");
    }
    let request = format!("GET {path} HTTP/1.1\r\n{extra}\r\n");
    for i in 0..n {
        writer.write_all(request.as_bytes()).expect("write request");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "request {i} to {path}: {status:?}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("body");
    }
}

/// Envoy's own instructions per second while nothing is asked of it.
fn idle_rate(envoy: &Envoy) -> f64 {
    let (idle, took) = envoy.callgrind(|| {
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        t.elapsed()
    });
    idle as f64 / took.as_secs_f64()
}

/// Instructions per request for `n` requests (after a warm-up of `n / 10`),
/// Envoy's idle rate over the same time taken off.
fn counted(envoy: &Envoy, idle_per_s: f64, addr: SocketAddr, path: &str, h: &[(&str, &str)], n: usize) -> f64 {
    keepalive_requests(addr, path, h, n / 10);
    let (ir, took) = envoy.callgrind(|| {
        let t = Instant::now();
        keepalive_requests(addr, path, h, n);
        t.elapsed()
    });
    (ir as f64 - idle_per_s * took.as_secs_f64()).max(0.0) / n as f64
}

pub fn run() {
    eprintln!("== instructions: callgrind counts per request");
    let n: usize = std::env::var("BENCH_CALLGRIND_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = tempfile::Builder::new().prefix("multicloud-callgrind-").tempdir().expect("tempdir");
    let t0 = Instant::now();
    let EdgeBench { envoy, edge_l, plain_l, jwtc_l, auth, .. } = edge_bench(Some(dir.path().join("callgrind.out")));
    let started = t0.elapsed();
    let token: &[(&str, &str)] = &[("authorization", auth.as_str())];
    let idle_per_s = idle_rate(&envoy);
    let per_request = |addr: SocketAddr, path: &str, h: &[(&str, &str)]| counted(&envoy, idle_per_s, addr, path, h, n);
    let app_filter = per_request(edge_l, "/app", &[]);
    let app_plain = per_request(plain_l, "/app", &[]);
    let public = per_request(edge_l, "/metadata/public/public.json", &[]);
    let native = per_request(edge_l, "/native/public.json", &[]);
    let floor = per_request(edge_l, "/floor/public.json", &[]);
    let private = per_request(edge_l, "/metadata/private/multicluster.json", token);
    let jwt_cached = per_request(jwtc_l, "/private", token);
    drop(envoy);

    // The API guard: the same list through the guarded and the plain virtual host.
    let ApiBench { envoy, listener, auth, path, _upstream } = api_bench(Some(dir.path().join("callgrind-api.out")));
    let api_idle_per_s = idle_rate(&envoy);
    let api_per_request = |h: &[(&str, &str)]| counted(&envoy, api_idle_per_s, listener, path, h, n);
    let guarded = api_per_request(&[("Host", "guarded"), ("authorization", auth.as_str())]);
    let unguarded = api_per_request(&[("Host", "plain"), ("authorization", auth.as_str())]);
    drop(envoy);

    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let more = (app_filter / app_plain - 1.0) * 100.0;
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let body = format!(
        "## Instructions per request (issue 19, item 4)\n\nCommand: `scripts/bench.sh instructions`.\n\n\
Run: {date}; the edge section's Envoy 1.40 (V8, `--concurrency 1`) under valgrind's callgrind \
(`--smc-check=all-non-file`; started in {started:.0?}), {n} requests per target on one keep-alive connection after a \
warm-up of {w}; every Envoy thread counted; Envoy's idle rate ({idle:.0} instructions/s) taken off. \
Counts do not move with the machine's load; the req/s ratios of the edge section do.\n\n\
| figure | filter side (instructions/request) | baseline side | ratio | target | |\n|---|---|---|---|---|---|\n\
| non-federation route, filter installed (disabled per route) vs no filter | {app_filter:.0} | {app_plain:.0} | {more:+.2}% | ≤ +1% | {m1} |\n\
| metadata reply (`public.json`) vs native `direct_response` | {public:.0} | {native:.0} | {r2:.2}× the instructions | (req/s goal ≥ 0.85×: edge section) | |\n\
| token-guarded private document vs `jwt_authn` + `jwt_cache_config` | {private:.0} | {jwt_cached:.0} | {r3:.2}× the instructions | (req/s goal ≥ 1.0×: edge section) | |\n\
| floor: filter entered, passes to the same `direct_response` | {floor:.0} | {native:.0} | {r4:.2}× | (diagnostic) | |\n\
| API list (`GET {path}`) through the guard vs the same route without it (the API section's Envoy) | {guarded:.0} | {unguarded:.0} | {r5:.2}× the instructions | (req/s goal ≥ 0.9×: API section) | |\n\n\
Where the instructions go: entering any Wasm HTTP context on a route costs {fixed:.0} per request (floor − native: \
{fixed_pct:.0}% of native's whole request), before the filter does anything. On top of that the filter's own work is \
{own_public:.0} for `public.json` (public − floor) and {own_private:.0} for the token-guarded document (private − floor), \
against {own_jwt:.0} for `jwt_authn`'s own work with its cache (jwt_authn − native). So with Wasm on this Envoy, \
`public.json` cannot reach 0.85× of native req/s: the fixed cost alone is {fixed_pct:.0}% more work. Reaching it would \
need the public document served without Wasm (a native `direct_response` the agent renders), which the design's shape \
(the filter serves the metadata at the edge) rules out; the target stays missed.\n",
        w = n / 10,
        idle = idle_per_s,
        m1 = met(more <= 1.0),
        r2 = public / native,
        r3 = private / jwt_cached,
        r4 = floor / native,
        r5 = guarded / unguarded,
        fixed = floor - native,
        fixed_pct = (floor / native - 1.0) * 100.0,
        own_public = public - floor,
        own_private = private - floor,
        own_jwt = jwt_cached - native,
    );
    eprintln!("{body}");
    write_section("instructions", &body);
}
