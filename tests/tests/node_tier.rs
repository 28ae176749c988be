//! Tier: real node (issue 22). One simulated cluster (140) of the real tier
//! with a real node (tests/src/node.rs): etcd + kube-apiserver, containerd
//! and runc (Debian's), the kubelet, kube-controller-manager,
//! kube-scheduler, kube-proxy (iptables) and CoreDNS, all from the pinned
//! sources scripts/tools.sh builds. Pods run from images imported into
//! containerd, on a bridge and subnet the test creates (10.88.140.0/24);
//! nothing else on the machine is touched, and the kernel settings the
//! components change are restored (and checked) at the end.
//!
//! What the tier still substitutes, and why: docs/testing.md, "The node
//! tier".

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::node::{read_sysctls, Node, NodeNetwork, POD_READY};
use multicloud_e2e::SimCluster;
use std::time::{Duration, Instant};

const SIM: SimCluster = SimCluster(140);

/// The node runs pods: Ready through the kubelet, a pod resolves
/// `kubernetes.default` through CoreDNS behind the kube-dns ClusterIP and
/// connects to the API server through the `kubernetes` Service's ClusterIP
/// (kube-proxy); afterwards nothing of the node is left and the kernel
/// settings are as before.
#[test]
fn node_tier() {
    let t0 = Instant::now();
    let sysctls_before = read_sysctls();
    let net = NodeNetwork::of(SIM);
    let cp = ControlPlane::start_for_node(SIM, &net.control_plane());
    let node = Node::start(&cp);
    eprintln!("node {} Ready with DNS in {:?} (control plane and node from {:?})", net.node_name, node.started_in, t0.elapsed());

    // Cluster DNS and the kubernetes Service from inside a pod: nslookup
    // asks CoreDNS through the kube-dns ClusterIP, then busybox's wget
    // connects to the address it got with nc (busybox's wget crashes in
    // this static build). A plain HTTP request: the API server's TLS port
    // answers it with 400, the proof that the connection through the
    // `kubernetes` ClusterIP arrived.
    let t = Instant::now();
    let script = "set -e; nslookup kubernetes.default.svc.cluster.local > /tmp/ns; cat /tmp/ns; \
                  ip=$(awk '/^Address: /{print $2}' /tmp/ns | tail -n 1); test \"$ip\" = 10.96.0.1; \
                  out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $ip 443 2>&1 || true); echo \"$out\"; \
                  case \"$out\" in *400*) exit 0;; esac; exit 1";
    let probe = node.run_probe_pod(&cp, "default", "dns-probe", script, POD_READY);
    if let Err(e) = &probe {
        let logs = cp.kubectl(&["logs", "-n", "default", "dns-probe"]);
        eprintln!("probe pod logs: {}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
        panic!("{e}");
    }
    eprintln!("probe pod (DNS + kubernetes Service) succeeded in {:?}", t.elapsed());

    let report = node.stop(&cp);
    eprintln!("teardown: {report:#?}");
    assert!(report.clean(), "the node left something behind: {report:#?}");
    assert_eq!(read_sysctls(), sysctls_before, "kernel settings after the tier");
    eprintln!("node tier: {:?} in all", t0.elapsed());
    let _ = Duration::ZERO;
}
