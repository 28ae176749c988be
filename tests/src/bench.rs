//! Benchmark helpers: bounded `wrk` runs against the test bed, interleaved
//! A/B rounds so that both sides of a ratio see the same machine, and
//! `BENCHMARKS.md` sections rewritten in place.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// One bounded wrk run (`-d` seconds, one thread, `connections` connections).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub seconds: u64,
    pub connections: u32,
}

impl Load {
    pub fn from_env() -> Load {
        let secs = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        Load { seconds: secs.clamp(1, 60), connections: 16 }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
}

fn parse_latency(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mult)
}

/// Runs wrk against `http://addr path` with `headers`; the run stops by
/// itself after `load.seconds` (plus wrk's own timeout).
pub fn wrk(addr: SocketAddr, path: &str, headers: &[(&str, &str)], load: Load) -> Sample {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{}", load.connections), &format!("-d{}s", load.seconds), "--latency", "--timeout", "2s"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = cmd.output().expect("run wrk (scripts/bootstrap.sh --bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let mut s = Sample::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            s.p50_ms = parse_latency(v).unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("99%") {
            s.p99_ms = parse_latency(v).unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    assert!(s.rps > 0.0, "wrk reported no throughput: {text}");
    s
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs every target once per round, rotating the order each round, and
/// returns the samples per target.
pub fn interleave(rounds: usize, targets: &mut [(&str, &mut dyn FnMut() -> Sample)]) -> Vec<Vec<Sample>> {
    let n = targets.len();
    let mut out = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let (name, run) = &mut targets[i];
            let s = run();
            eprintln!("  round {round}: {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms", s.rps, s.p50_ms, s.p99_ms);
            out[i].push(s);
            std::thread::sleep(Duration::from_millis(200)); // let sockets in TIME_WAIT settle
        }
    }
    out
}

/// Replaces the section between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
/// in BENCHMARKS.md (appending it if absent).
pub fn write_section(name: &str, body: &str) {
    let path = crate::paths::workspace_root().join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `make bench`. Every figure is a ratio against a baseline measured in the same run, on the same machine, \
         so a shared, noisy machine moves both sides together. Absolute numbers are shown for orientation only.\n"
            .to_string()
    });
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let section = format!("{begin}\n{body}\n{end}");
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => text.replace_range(b..e + end.len(), &section),
        _ => {
            text.push('\n');
            text.push_str(&section);
            text.push('\n');
        }
    }
    std::fs::write(&path, text).expect("write BENCHMARKS.md");
}
