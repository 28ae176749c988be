//! `make demo-istio`: the two-cluster demo under real Istio. Per simulated
//! cluster (141 = A, 142 = B, on 127.0.141.x and 127.0.142.x): a real etcd +
//! kube-apiserver, a real istiod with its own root, an istiod-run gateway, and
//! the agent in Kubernetes mode installed by `multicloud-agent install` (the
//! same set-up as tests/tests/istio_mesh.rs; docs/istio.md says what each
//! piece is and what the test bed substitutes). It
//! shows the agents join, A's istiod list B's services through B's API proxy,
//! and A's workload call `foo.abc.svc.cluster.local`, which runs only in B.
//! The last line starts with `RESULT:` and names the cluster that answered.
//! Everything stops when it exits.

// Test-bed code: a failed expectation stops the demo with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::istio_mesh::{call_foo, has_root, rootca, start_client, start_foo, strict_mtls, FOO};
use multicloud_e2e::kube_mesh::{object_name, start_kube_mesh, KubeMeshOptions};
use multicloud_e2e::{wait_until, SimCluster};
use std::time::{Duration, Instant};

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}] {text}\x1b[0m");
}

fn main() {
    let t0 = Instant::now();
    let sims = [SimCluster(141), SimCluster(142)];
    let (name_a, name_b) = (object_name(sims[0]), object_name(sims[1]));
    step(1, "two clusters: API server, istiod (own root), istiod-run gateway, the agent installed by `multicloud-agent install`");
    let clusters = start_kube_mesh(&sims, KubeMeshOptions { replicas: 1, istio: true, ..Default::default() });
    let (a, b) = (&clusters[0], &clusters[1]);
    for c in [a, b] {
        println!(
            "  {}: API server {}, istiod {}",
            object_name(c.sim),
            c.cp.server(),
            c.istiod.as_ref().map(|i| i.addrs.secure_grpc.to_string()).unwrap_or_default()
        );
    }

    step(2, "the agents exchange metadata and pin each other's root");
    a.wait_imc_ready(&name_b, Duration::from_secs(180));
    b.wait_imc_ready(&name_a, Duration::from_secs(180));
    print!("{}", a.cp.kubectl_ok(&["get", "imc"]));
    let cm = a.cp.get_json(&["configmap", "istio-multicloud-mesh", "-n", "istio-system"]).unwrap_or_default();
    println!(
        "  A's ConfigMap istio-multicloud-mesh (istiod's SHARED_MESH_CONFIG):\n  mesh: {}\n  meshNetworks: {}",
        cm["data"]["mesh"]
            .as_str()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.contains("BEGIN") && !l.contains("END"))
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        cm["data"]["meshNetworks"].as_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
    );

    step(3, "A's istiod lists B's services through B's API proxy (B's API server's audit log)");
    let (_foo_app, foo_b) = start_foo(b);
    for c in [a, b] {
        strict_mtls(c);
    }
    let (client, client_addr, _) = start_client(a);
    let reads = wait_until("A's istiod reading B's services", Duration::from_secs(60), || {
        let reads: std::collections::BTreeSet<String> = b
            .cp
            .audit("system:serviceaccount:istio-system:istio-multicloud-api-proxy")
            .iter()
            .map(|e| {
                format!("{} {}", e["verb"].as_str().unwrap_or(""), e["requestURI"].as_str().unwrap_or("").split('?').next().unwrap_or(""))
            })
            .collect();
        if reads.iter().any(|r| r.contains("/services")) {
            Ok(reads)
        } else {
            Err(format!("{reads:?}"))
        }
    });
    for r in &reads {
        println!("  {r}");
    }

    step(4, &format!("A's workload calls {FOO} (it runs only in B)"));
    let resp = wait_until("the call to be answered", Duration::from_secs(120), || match call_foo(client_addr, "/hello") {
        Ok(r) if r.status == 200 => Ok(r),
        Ok(r) => Err(format!("{} {}", r.status, r.text())),
        Err(e) => Err(e),
    });
    let body = resp.json();
    let answered = body["cluster"].as_str().unwrap_or("?").to_string();
    println!("  HTTP {} from {answered}", resp.status);
    println!("  B's sidecar saw the caller: {}", body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or(""));
    let root_b = multicloud_e2e::istio::published_root(b.cp, Duration::from_secs(30));
    let root_a = multicloud_e2e::istio::published_root(a.cp, Duration::from_secs(30));
    println!("  A's client trusts B's root (ROOTCA by PCDS): {}", has_root(&rootca(&client), &root_b));
    println!("  B's foo trusts A's root: {}", has_root(&rootca(&foo_b), &root_a));
    println!("  ({:.1} s in all)", t0.elapsed().as_secs_f64());
    let who = if answered == name_b { "B" } else { "not B" };
    println!("RESULT: {FOO} answered by {answered} ({who}), through B's istiod-run gateway, mTLS trusted by the agents' caCertificates");
    if answered != name_b {
        std::process::exit(1);
    }
}
