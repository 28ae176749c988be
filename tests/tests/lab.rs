//! Real tier, real Istio: `make lab` stays up, works as it says, and stops
//! clean (issue 18, item 6; tests/src/lab.rs).
//!
//! Runs the lab's binary as `make lab` does (`demo_istio --lab`), on
//! clusters 143 and 144 (not the lab's own 141/142, so that a person's lab
//! can run beside the suite) and with its own lab directory. Once it prints
//! its ready line, every command it printed (the lines marked `$ `) runs as
//! printed: `kubectl get imc` with each printed `KUBECONFIG` says READY
//! True, the metadata endpoints answer with their cluster's UUID, and A's
//! client reaches `foo` in B. The IstioMulticloud object the lab prints for
//! a peer to apply is exactly the one that joined the other cluster (a
//! server-side diff is empty). A second lab on the same directory is refused
//! and leaves the first alone. `scripts/lab.sh down` (`make lab-down`) stops
//! it: the lab exits 0, none of its processes is left (each has the lab's
//! directory on its command line, which the test checks first) and the
//! directory is gone. Ctrl-C takes the same path (docs/testing.md says how it
//! was checked by hand).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::{lab, paths, procs, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the lab may take to say ready (55-60 s here on an idle machine:
/// two control planes, istiods, gateways, the join and the first call).
const READY_TIMEOUT: Duration = Duration::from_secs(420);

fn lab_command(dir: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo_istio"));
    cmd.args(["--lab", "--clusters", "143,144"])
        .env("MULTICLOUD_LAB_DIR", dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("lab output"))
        .stderr(std::fs::File::create(out.with_extension("err")).expect("lab stderr"));
    cmd
}

/// `sh -c CMD`: (exit code, stdout, stderr).
fn sh(cmd: &str) -> (i32, String, String) {
    let out = Command::new("sh").args(["-c", cmd]).stdin(Stdio::null()).output().expect("sh");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The printed block of each cluster (from its `cluster-N (ROLE)` line to
/// the next) after the `LAB:` line, by name.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    // The lab's text starts at its `LAB:` line (the demo's output is above).
    for line in text.lines().skip_while(|l| !l.starts_with("LAB:")) {
        if line.starts_with("cluster-") {
            out.push((line.split_whitespace().next().unwrap().to_string(), Vec::new()));
        } else if line.starts_with(lab::READY_PREFIX) {
            break;
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.trim().to_string());
        }
    }
    out
}

/// The commands of a block (its lines marked `$ `), the one that contains `needle`.
fn command<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("$ "))
        .find(|c| c.contains(needle))
        .unwrap_or_else(|| panic!("no printed command with {needle:?} in {lines:#?}"))
}

/// The pids of `pid`'s descendants (through every thread's `children`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for child in c.split_whitespace().filter_map(|s| s.parse::<u32>().ok()) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

fn cmdline(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

/// Every process whose command line names `dir` (the test's own `sh` never does).
fn naming(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| cmdline(pid).filter(|c| c.contains(&needle)).map(|c| format!("{pid} {c}")))
        .collect()
}

#[test]
fn lab_stays_up_works_with_kubectl_and_stops_clean() {
    let scratch = tempfile::Builder::new().prefix("multicloud-lab-test-").tempdir().expect("tempdir");
    let dir: PathBuf = scratch.path().join("lab");
    let out = scratch.path().join("lab.out");
    let mut lab = procs::spawn(lab_command(&dir, &out)).expect("spawn the lab");
    let lab_pid = lab.id().expect("pid");
    let log = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
        )
    };
    let text = wait_until("the lab's ready line", READY_TIMEOUT, || {
        if let Some(st) = lab.try_wait() {
            panic!("the lab exited before it was ready ({st}):\n{}", log());
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(lab::READY_PREFIX)) {
            Ok(text)
        } else {
            Err(text.lines().last().unwrap_or_default().to_string())
        }
    });
    println!("{text}");
    assert_eq!(std::fs::read_to_string(dir.join(lab::PID_FILE)).expect("pid file").trim(), lab_pid.to_string());

    let blocks = sections(&text);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cluster-143", "cluster-144"], "one block per cluster:\n{text}");
    for (name, lines) in &blocks {
        let peer_name = if name == "cluster-143" { "cluster-144" } else { "cluster-143" };
        // Its KUBECONFIG line, and the printed kubectl command with it.
        let kubeconfig = lines.iter().find_map(|l| l.strip_prefix("KUBECONFIG=")).unwrap_or_else(|| panic!("{name}: no KUBECONFIG= line"));
        assert!(Path::new(kubeconfig).starts_with(&dir), "{name}: the kubeconfig lives in the lab's directory: {kubeconfig}");
        let get_imc = command(lines, " get imc");
        assert!(get_imc.starts_with(&format!("KUBECONFIG={kubeconfig} ")), "{get_imc}");
        let (code, stdout, stderr) = sh(get_imc);
        assert_eq!(code, 0, "{get_imc}: {stderr}");
        let mut rows = stdout.lines();
        let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
        let row: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
        let col = |h: &str| header.iter().position(|x| *x == h).and_then(|i| row.get(i).copied()).unwrap_or_default();
        assert_eq!((col("NAME"), col("READY")), (peer_name, "True"), "{get_imc}:\n{stdout}");
        let kubectl = get_imc.split_whitespace().nth(1).expect("kubectl path");
        assert!(Path::new(kubectl).starts_with(&dir), "the printed kubectl is the lab's wrapper: {kubectl}");

        // The metadata endpoint, as printed, answers with this cluster's UUID.
        let (code, uid, stderr) = sh(&format!("KUBECONFIG={kubeconfig} {kubectl} get namespace kube-system -o jsonpath={{.metadata.uid}}"));
        assert_eq!(code, 0, "{stderr}");
        let public = command(lines, "public.json");
        let (code, body, stderr) = sh(public);
        assert_eq!(code, 0, "{public}: {stderr}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{public}: {e}: {body}"));
        assert_eq!(doc["clusterUUID"], uid.trim(), "{public}: {body}");

        // The object a peer applies is the one that joined the other cluster.
        let peer_line = lines.iter().find(|l| l.contains("names it with ")).expect("the peer object's line");
        let peer_file = peer_line.split("names it with ").nth(1).and_then(|r| r.split_whitespace().next()).expect("its path");
        let other = blocks.iter().find(|(n, _)| n == peer_name).expect("the other block");
        let other_kubeconfig = other.1.iter().find_map(|l| l.strip_prefix("KUBECONFIG=")).expect("KUBECONFIG=");
        let diff = format!(
            "KUBECONFIG={other_kubeconfig} {kubectl} diff --server-side --field-manager=test-admin --force-conflicts -f {peer_file}"
        );
        let (code, stdout, stderr) = sh(&diff);
        assert_eq!(code, 0, "{diff} (exit 1 means a difference): {stdout}{stderr}");
    }
    // A's client reaches foo, which runs in B only.
    let call = command(&blocks[0].1, "/hello");
    let (code, body, stderr) = sh(call);
    assert_eq!(code, 0, "{call}: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{call}: {e}: {body}"));
    assert_eq!(answer["cluster"], "cluster-144", "{call}: {body}");

    // Every process of the lab names its directory: what the checks below,
    // and scripts/lab.sh, find leftovers by.
    let family = descendants(lab_pid);
    assert!(family.len() >= 16, "etcd, kube-apiserver, istiod, gateway and sidecars (pilot-agent, Envoy), agent per cluster: {family:?}");
    for pid in &family {
        let c = cmdline(*pid).unwrap_or_default();
        assert!(c.contains(&format!("{}/", dir.display())), "process {pid} of the lab does not name {}: {c}", dir.display());
    }

    // A second lab on the same directory is refused, and the first stays.
    let second_out = scratch.path().join("second.out");
    let second = lab_command(&dir, &second_out).output().expect("second lab");
    let err = std::fs::read_to_string(second_out.with_extension("err")).unwrap_or_default();
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("already running") && err.contains("make lab-down"), "{err}");
    assert!(lab.try_wait().is_none() && dir.join(lab::PID_FILE).exists(), "the first lab is untouched");
    assert_eq!(sh(command(&blocks[0].1, " get imc")).0, 0);

    // make lab-down.
    let down = Command::new(paths::workspace_root().join("scripts/lab.sh"))
        .arg("down")
        .env("MULTICLOUD_LAB_DIR", &dir)
        .output()
        .expect("scripts/lab.sh down");
    let down_err = String::from_utf8_lossy(&down.stderr);
    assert!(down.status.success(), "scripts/lab.sh down: {down_err}\n{}", log());
    assert!(down_err.contains("no process of the lab is left"), "{down_err}");
    let status = wait_until("the lab's exit", Duration::from_secs(10), || lab.try_wait().ok_or_else(|| "running".to_string()));
    assert_eq!(status.code(), Some(0), "stopped on request, the lab exits 0:\n{}", log());
    assert!(log().contains("lab stopped: no process left"), "{}", log());
    let left: Vec<String> = family.iter().filter_map(|p| cmdline(*p).map(|c| format!("{p} {c}"))).collect();
    assert!(left.is_empty(), "processes of the lab left: {left:#?}");
    assert!(naming(&dir).is_empty(), "processes naming the lab's directory: {:#?}", naming(&dir));
    assert!(!dir.exists(), "the lab's directory is removed: {}", dir.display());
}
