//! `make bench`: measures the project against native Envoy baselines in the
//! same run and writes the ratios to BENCHMARKS.md. Every load is a bounded
//! wrk run on loopback; nothing runs without an end.
//!
//! Usage: bench [edge|instructions|api|xds|traffic|convergence|daemonset|fuzz]...   (default: all benchmarks)
//!
//! `fuzz` runs nothing: it copies the last `make fuzz` results
//! (docs/fuzzing-results.md) into their section.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use multicloud_e2e::bench::{interleave, median, write_section, wrk, Load, Sample};
use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::{edge_config, sample_private, unix_now, ClusterIdentity};
use multicloud_e2e::gateway::{ecds_file, edge_http_filter_yaml, enable_edge_filter_yaml, http_listener_yaml};
use multicloud_e2e::{hosts, http, paths, SimCluster};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.is_empty();
    if all {
        run_header();
    }
    if all || args.iter().any(|a| a == "edge") {
        edge();
    }
    if all || args.iter().any(|a| a == "api") {
        api();
    }
    if all || args.iter().any(|a| a == "instructions") {
        instructions::run();
    }
    if all || args.iter().any(|a| a == "xds") {
        xds::run();
    }
    if all || args.iter().any(|a| a == "traffic") {
        traffic::run();
    }
    if all || args.iter().any(|a| a == "convergence") {
        convergence::run();
    }
    if all || args.iter().any(|a| a == "daemonset") {
        daemonset::run();
    }
    // A heap profile's run, only when asked for: writes nothing.
    if args.iter().any(|a| a == "xds-heap") {
        xds::heap_run();
    }
    // The soak runs only when asked for (`make soak`): ten minutes or more.
    if args.iter().any(|a| a == "soak") {
        soak::run();
    }
    if all || args.iter().any(|a| a == "fuzz") {
        fuzz_results();
    }
}

/// The `run` section: when `make bench` ran every section, on what machine,
/// at which commit (the sections below each name their own command).
fn run_header() {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let body = format!(
        "## This run\n\nCommand: `make bench` (every section below from this one run, started {date}; the soak is `make soak`, \
run on its own). Machine: {cpus} cores ({model}), {mem} memory, Linux {kernel}; shared with other work, so req/s figures are \
ratios against a baseline measured in the same run, and instruction counts (callgrind) back the ones that swing. \
Commit: {commit}.\n",
        date = sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        cpus = sh("nproc"),
        model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'"),
        mem = sh("free -g | awk '/^Mem:/{print $2 \" GiB\"}'"),
        kernel = sh("uname -r"),
        commit = sh("git rev-parse --short HEAD"),
    );
    eprintln!("{body}");
    write_section("run", &body);
}

/// The Reliability section's fuzzing part: what `make fuzz` last recorded
/// (it takes FUZZ_SECONDS per target, too long to rerun inside a benchmark).
fn fuzz_results() {
    let path = paths::workspace_root().join("docs/fuzzing-results.md");
    match std::fs::read_to_string(&path) {
        Ok(text) => write_section("fuzz", text.trim_end()),
        Err(e) => eprintln!("== fuzz: no recorded results ({}: {e}); run `make fuzz`", path.display()),
    }
}

/// The API benchmark's Envoy: listener `api`, virtual hosts `guarded` (the
/// `multicloud-api` filter) and `plain` (none) to one recording upstream;
/// checked once (the guard passes a token, refuses none).
pub(crate) struct ApiBench {
    pub envoy: Envoy,
    pub listener: std::net::SocketAddr,
    pub auth: String,
    pub path: &'static str,
    _upstream: multicloud_e2e::upstream::RecordingUpstream,
}

pub(crate) fn api_bench(callgrind: Option<std::path::PathBuf>) -> ApiBench {
    use multicloud_e2e::fixtures::dp;
    use multicloud_proto::edge_filter;
    use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
    use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use multicloud_proto::envoy_types::pb::envoy::config::route::v3::FilterConfig;
    use multicloud_proto::envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
    use multicloud_proto::envoy_types::pb::google::protobuf::Any;
    use multicloud_proto::envoy_types::util::pack_any;
    use multicloud_proto::prost::Message as _;
    use std::collections::HashMap;
    let cluster = SimCluster(43);
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let mut config = edge_config(&b, &[&a], sample_private(cluster));
    // Measure the guard, not its rate limiter.
    config.api.requests_per_second = 10_000_000;
    config.api.burst = 10_000_000;
    let upstream = multicloud_e2e::upstream::RecordingUpstream::start(cluster.ip(hosts::UPSTREAM), false);
    let wasm = paths::filter_wasm().display().to_string();
    let ecds = multicloud_proto::discovery_response(
        edge_filter::EXTENSION_CONFIG_TYPE_URL,
        "1",
        vec![edge_filter::resource_with_root_id(&wasm.as_str().into(), &serde_json::to_string(&config).unwrap(), "multicloud-api")],
    )
    .encode_to_vec();
    // Two virtual hosts to the same upstream: `guarded` enables the guard
    // (disabled in the chain, its configuration by ECDS from a file), `plain` does not.
    let mut guarded = dp::route_to("apiserver");
    guarded.typed_per_filter_config =
        HashMap::from([("multicloud-api".to_string(), pack_any(FilterConfig { config: Some(Any::default()), ..Default::default() }))]);
    let guard = HttpFilter { disabled: true, ..dp::ecds_filter("multicloud-api", dp::file_source("ecds/api.pb", "ecds")) };
    let hcm = dp::hcm(
        "api",
        vec![
            dp::virtual_host("guarded", &["guarded"], vec![guarded]),
            dp::virtual_host("plain", &["plain"], vec![dp::route_to("apiserver")]),
        ],
        vec![guard],
    );
    let listener = dp::listener(
        "api",
        std::net::SocketAddr::from((cluster.ip(hosts::GATEWAY), 0)),
        vec![FilterChain { filters: vec![dp::hcm_filter(hcm)], ..Default::default() }],
    );
    let typed = Bootstrap {
        static_resources: Some(StaticResources {
            listeners: vec![listener],
            clusters: vec![dp::static_cluster("apiserver", upstream.addr())],
            ..Default::default()
        }),
        ..Default::default()
    };
    let envoy = Envoy::start(EnvoySpec {
        files: vec![("ecds/api.pb".into(), ecds)],
        callgrind,
        ..EnvoySpec::typed("gateway-bench-api".into(), cluster, hosts::GATEWAY, typed)
    });
    let l = envoy.listener("api");
    let now = unix_now();
    let auth = format!("Bearer {}", a.token_with(&b.uuid, "api", now - 10, now + 3600));
    let path = "/api/v1/namespaces/abc/services";
    let guarded = http::request("GET", &format!("http://{l}{path}"), &[("host", "guarded"), ("authorization", &auth)]);
    assert_eq!(guarded.status, 200, "guarded route: {}", guarded.text());
    let refused = http::request("GET", &format!("http://{l}{path}"), &[("host", "guarded")]);
    assert_eq!(refused.status, 401, "the guard is in force on the guarded route");
    ApiBench { envoy, listener: l, auth, path, _upstream: upstream }
}

/// The API guard's cost per request: the same list request to the same
/// upstream, through the `multicloud-api` filter (token verified from its
/// cache, allow-list, limits, token stripped) and through a route without it.
fn api() {
    eprintln!("== api: the API guard per request");
    let load = Load::from_env();
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let ApiBench { envoy, listener: l, auth, path, _upstream } = api_bench(None);
    let leak = |v: Vec<(String, String)>| -> &'static [(&'static str, &'static str)] {
        Box::leak(
            v.into_iter()
                .map(|(k, v)| (&*Box::leak(k.into_boxed_str()), &*Box::leak(v.into_boxed_str())))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    };
    let hg = leak(vec![("Host".into(), "guarded".into()), ("authorization".into(), auth.clone())]);
    let hp = leak(vec![("Host".into(), "plain".into()), ("authorization".into(), auth.clone())]);
    wrk(l, path, hg, Load { seconds: 1, connections: load.connections });
    let mut tg = || wrk(l, path, hg, load);
    let mut tp = || wrk(l, path, hp, load);
    let samples = interleave(rounds, &mut [("list through the guard", &mut tg), ("list, same route without the guard", &mut tp)]);
    let bad: Vec<u64> = samples.iter().flatten().map(|s| s.non_2xx).collect();
    assert!(
        bad.iter().all(|n| *n == 0),
        "non-2xx under load (per run): {bad:?}; stats: {}",
        envoy.admin_get("/stats?filter=(wasmcustom|upstream_rq_5|rq_4|rq_5)").unwrap_or_default()
    );
    let rps = |i: usize| median(samples[i].iter().map(|s: &Sample| s.rps).collect());
    let p50 = |i: usize| median(samples[i].iter().map(|s: &Sample| s.p50_ms).collect());
    let body = format!(
        "## API proxy guard (issue: the API proxy)\n\nCommand: `scripts/bench.sh api`.\n\n\
Run: `wrk -t1 -c{c} -d{d}s`, {rounds} interleaved rounds, median; one Envoy (`--concurrency 1`), one upstream standing in for the API server (the test bed's recording server, counting only). \
The same `GET {path}` with the same bearer token goes to the same upstream through a route with the `multicloud-api` filter (token verified, from its cache after the first request; allow-list; per-peer limits set out of reach; token stripped) and through a route without it.\n\n\
| figure | ratio | guarded | unguarded |\n|---|---|---|---|\n\
| list requests through the guard vs the same route without it | {r:.2}× req/s ({cost:+.1}% per request) | {g:.0} req/s, p50 {pg:.3} ms | {p:.0} req/s, p50 {pp:.3} ms |\n",
        c = load.connections,
        d = load.seconds,
        r = rps(0) / rps(1),
        cost = (rps(1) / rps(0) - 1.0) * 100.0,
        g = rps(0),
        p = rps(1),
        pg = p50(0),
        pp = p50(1),
    );
    eprintln!("{body}");
    write_section("api", &body);
}

mod convergence;
mod daemonset;
mod instructions;
mod soak;
mod traffic;
mod xds;

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// The edge benchmark's Envoy, each target checked once to answer what it
/// should: one Envoy, four listeners that differ only in what is measured.
/// - `edge`: the filter in the chain (disabled), enabled on `/metadata/`;
///   `/native/*` are direct_response twins of the documents; `/app` is a
///   non-federation route;
/// - `plain`: the same routes, in the same order, with no Wasm filter at all;
/// - `jwt` / `jwt_cached`: Envoy's native jwt_authn guarding a direct_response
///   of the private document, without and with its verified-token cache.
pub(crate) struct EdgeBench {
    envoy: Envoy,
    edge_l: std::net::SocketAddr,
    plain_l: std::net::SocketAddr,
    jwt_l: std::net::SocketAddr,
    jwtc_l: std::net::SocketAddr,
    auth: String,
}

pub(crate) fn edge_bench(callgrind: Option<std::path::PathBuf>) -> EdgeBench {
    let cluster = SimCluster(41);
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let mut config = edge_config(&b, &[&a], sample_private(cluster));
    config.max_token_lifetime_seconds = 3600;
    let public_body = serde_json::to_string(&config.public).unwrap();
    let private_body = serde_json::to_string(&config.private).unwrap();
    let jwk = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "x": URL_SAFE_NO_PAD.encode(a.federation_key.verifying_key().as_bytes())}]})
    .to_string();
    let ip = cluster.ip(hosts::GATEWAY);
    let hcm = |stat: &str, routes: &str, filters: &str| http_listener_yaml(stat, ip, routes, filters);
    let direct = |prefix: &str, body: &str, cc: &str| {
        format!(
            r#"              - match: {{prefix: {prefix}}}
                direct_response: {{status: 200, body: {{inline_string: {body}}}}}
                response_headers_to_add:
                - header: {{key: content-type, value: application/json}}
                - header: {{key: cache-control, value: "{cc}"}}
                - header: {{key: x-content-type-options, value: nosniff}}
                - header: {{key: etag, value: "\"0123456789abcdef0123456789abcdef\""}}
"#,
            body = yaml_str(body)
        )
    };
    let app = "              - match: {prefix: /app}\n                direct_response: {status: 200, body: {inline_string: \"ok\\n\"}}\n";
    let metadata_route = format!(
        "              - match: {{prefix: /metadata/}}\n                direct_response: {{status: 503}}\n{}",
        enable_edge_filter_yaml()
    );
    let jwt_filter = |cache: bool| {
        format!(
            r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                peer:
                  audiences: [{aud}]
                  clock_skew_seconds: 60
                  local_jwks: {{inline_string: {jwks}}}
{cache}              rules:
              - match: {{prefix: /}}
                requires: {{provider_name: peer}}
"#,
            aud = b.uuid,
            jwks = yaml_str(&jwk),
            cache = if cache { "                  jwt_cache_config: {jwt_cache_size: 1000}\n" } else { "" }
        )
    };
    let twins = format!(
        "{}{}",
        direct("/native/public.json", &public_body, "public, max-age=60"),
        direct("/floor/public.json", &public_body, "public, max-age=60")
    );
    let bootstrap = format!(
        "static_resources:\n  listeners:\n{}{}{}{}",
        hcm("edge", &format!("{metadata_route}{twins}{}{app}", enable_edge_filter_yaml()), &edge_http_filter_yaml()),
        // The same routes in the same order, without the filter: `/app`
        // is matched after the same prefixes on both sides.
        hcm(
            "plain",
            &format!("              - match: {{prefix: /metadata/}}\n                direct_response: {{status: 503}}\n{twins}{app}"),
            ""
        ),
        hcm("jwt", &direct("/", &private_body, "private, no-store"), &jwt_filter(false)),
        hcm("jwt_cached", &direct("/", &private_body, "private, no-store"), &jwt_filter(true)),
    );
    let envoy = Envoy::start(EnvoySpec {
        name: "gateway-bench".into(),
        cluster,
        host: hosts::GATEWAY,
        bootstrap,
        files: vec![("ecds/edge.pb".into(), ecds_file(&serde_json::to_string(&config).unwrap(), "1"))],
        callgrind,
        ..Default::default()
    });
    let (edge_l, plain_l, jwt_l, jwtc_l) =
        (envoy.listener("edge"), envoy.listener("plain"), envoy.listener("jwt"), envoy.listener("jwt_cached"));
    let now = unix_now();
    let token = a.token_with(&b.uuid, "private-multicluster", now - 10, now + 1800);
    let auth = format!("Bearer {token}");

    // Sanity: each target answers what it should, so the load measures the right thing.
    let check = |url: String, h: &[(&str, &str)], want: &str| {
        let r = http::request("GET", &url, h);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        assert_eq!(r.text(), want, "{url}");
    };
    check(format!("http://{edge_l}/metadata/public/public.json"), &[], &public_body);
    check(format!("http://{edge_l}/native/public.json"), &[], &public_body);
    check(format!("http://{edge_l}/metadata/private/multicluster.json"), &[("authorization", &auth)], &private_body);
    check(format!("http://{jwt_l}/private"), &[("authorization", &auth)], &private_body);
    check(format!("http://{jwtc_l}/private"), &[("authorization", &auth)], &private_body);
    check(format!("http://{edge_l}/app"), &[], "ok\n");
    check(format!("http://{plain_l}/app"), &[], "ok\n");
    assert_eq!(http::request("GET", &format!("http://{jwt_l}/private"), &[]).status, 401, "jwt_authn must refuse without a token");
    EdgeBench { envoy, edge_l, plain_l, jwt_l, jwtc_l, auth }
}

fn edge() {
    eprintln!("== edge: metadata replies, non-federation routes, token guard, module size");
    let load = Load::from_env();
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let EdgeBench { envoy, edge_l, plain_l, jwt_l, jwtc_l, auth } = edge_bench(None);

    let h: &[(&str, &str)] = &[("authorization", &auth)];
    let leak = |v: &[(&str, &str)]| -> &'static [(&'static str, &'static str)] {
        Box::leak(
            v.iter()
                .map(|(k, v)| (&*Box::leak(k.to_string().into_boxed_str()), &*Box::leak(v.to_string().into_boxed_str())))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    };
    let h = leak(h);
    let mut t_meta = || wrk(edge_l, "/metadata/public/public.json", &[], load);
    let mut t_native = || wrk(edge_l, "/native/public.json", &[], load);
    let mut t_floor = || wrk(edge_l, "/floor/public.json", &[], load);
    let mut t_app_filter = || wrk(edge_l, "/app", &[], load);
    let mut t_app_plain = || wrk(plain_l, "/app", &[], load);
    let mut t_private = || wrk(edge_l, "/metadata/private/multicluster.json", h, load);
    let mut t_jwt = || wrk(jwt_l, "/private", h, load);
    let mut t_jwtc = || wrk(jwtc_l, "/private", h, load);
    // Warm-up (V8 tiers up, connection pools fill); not recorded.
    for (p, hh) in [("/metadata/public/public.json", &[][..]), ("/metadata/private/multicluster.json", h)] {
        wrk(edge_l, p, hh, Load { seconds: 1, connections: load.connections });
    }
    let samples = interleave(
        rounds,
        &mut [
            ("filter public.json", &mut t_meta),
            ("direct_response public.json", &mut t_native),
            ("/app with filter installed", &mut t_app_filter),
            ("/app without filter", &mut t_app_plain),
            ("filter private (token)", &mut t_private),
            ("jwt_authn default", &mut t_jwt),
            ("jwt_authn + jwt_cache_config", &mut t_jwtc),
            ("filter entered, passes to direct_response", &mut t_floor),
        ],
    );
    for (i, s) in samples.iter().enumerate() {
        assert!(s.iter().all(|x| x.non_2xx == 0), "target {i} answered non-2xx under load");
    }
    let rps = |i: usize| median(samples[i].iter().map(|s: &Sample| s.rps).collect());
    let p50 = |i: usize| median(samples[i].iter().map(|s: &Sample| s.p50_ms).collect());
    let (meta, native, appf, appp, private, jwt, jwtc) = (rps(0), rps(1), rps(2), rps(3), rps(4), rps(5), rps(6));
    let floor = rps(7);
    let size = std::fs::metadata(paths::filter_wasm()).expect("filter wasm").len();
    drop(envoy);

    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let slowdown = (1.0 - appf / appp) * 100.0;
    let body = format!(
        "## Edge filter (issue: the edge)\n\nCommand: `scripts/bench.sh edge` (`make bench` runs all sections).\n\n\
Run: {date}, Envoy 1.40.0 (V8), `--concurrency 1`; load: `wrk -t1 -c{c} -d{d}s`, {rounds} interleaved rounds, median. \
Bodies and response headers are the same on both sides of each ratio.\n\n\
| figure | ratio | target | | filter side | baseline side |\n|---|---|---|---|---|---|\n\
| metadata reply (`public.json`) vs native `direct_response` of the same body | {r1:.2}× req/s | ≥ 0.85× | {m1} | {meta:.0} req/s, p50 {p1:.3} ms | {native:.0} req/s, p50 {p2:.3} ms |\n\
| non-federation route, filter installed (disabled per route) vs no filter | {s2:+.1}% slower | ≤ 3% | {m2} | {appf:.0} req/s | {appp:.0} req/s |\n\
| token-guarded private document vs `jwt_authn` (default, no cache) | {r3:.2}× req/s | ≥ 1.0× | {m3} | {private:.0} req/s, p50 {p3:.3} ms | {jwt:.0} req/s, p50 {p4:.3} ms |\n\
| token-guarded private document vs `jwt_authn` + `jwt_cache_config` (its best) | {r4:.2}× req/s | ≥ 1.0× | {m4} | {private:.0} req/s | {jwtc:.0} req/s, p50 {p5:.3} ms |\n\
| floor: filter entered on a route, passes to the same `direct_response` (the fixed cost of a Wasm HTTP context) | {r6:.2}× req/s | (diagnostic) | | {floor:.0} req/s, p50 {p6:.3} ms | {native:.0} req/s |\n\
| size of `multicloud_filter.wasm` | {kb:.0} KB ({size} bytes) | ≤ 300 KB | {m5} | | |\n\n\
Notes: the filter, like `jwt_cache_config`, keeps a bounded per-worker cache of tokens whose signature verified \
(512 entries; time and scope re-checked on every hit), so a peer re-presenting one token pays for one Ed25519 \
verification. `jwt_authn` checks signature, `aud` and time; the filter also checks `scope` and the peer table.\n",
        date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        c = load.connections,
        d = load.seconds,
        r1 = meta / native,
        m1 = met(meta / native >= 0.85),
        p1 = p50(0),
        p2 = p50(1),
        s2 = slowdown,
        m2 = met(slowdown <= 3.0),
        r3 = private / jwt,
        m3 = met(private / jwt >= 1.0),
        p3 = p50(4),
        p4 = p50(5),
        r4 = private / jwtc,
        m4 = met(private / jwtc >= 1.0),
        p5 = p50(6),
        kb = size as f64 / 1000.0,
        r6 = floor / native,
        p6 = p50(7),
        m5 = met(size <= 300_000),
    );
    eprintln!("{body}");
    write_section("edge", &body);
}
