//! Smoke pass of the fuzz targets, run by `cargo test` (and so `make test`)
//! on stable: every committed corpus input goes once through its target,
//! the same function the libFuzzer binary calls. No fuzzing happens here;
//! `make fuzz` (scripts/fuzz.sh) does that.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// The inputs that once failed a target (`fuzz/regressions/<target>/`,
/// each also a unit test where the fix is); kept apart from the corpus so
/// that minimizing it never drops them.
fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join(target)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = multicloud_fuzz::TARGETS.iter().find(|(n, _)| *n == target).expect("a target of that name");
    let mut files = files_in(&corpus_dir(target));
    assert!(!files.is_empty(), "the {target} corpus is empty");
    files.extend(files_in(&regressions_dir(target)));
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if std::panic::catch_unwind(|| run(&bytes)).is_err() {
            panic!("{target} fails on {}", f.display());
        }
    }
    eprintln!("{target}: {} corpus inputs replayed", files.len());
}

macro_rules! replays {
    ($($t:ident),* $(,)?) => {$(
        #[test]
        fn $t() {
            replay(stringify!($t));
        }
    )*};
}

replays!(token, pem, der, metadata, edge, edge_config, apiguard, meshguard, standalone);

/// Each target has its libFuzzer binary and its corpus, so `make fuzz`
/// and this smoke pass cover the same list.
#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in multicloud_fuzz::TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{name}.rs")).is_file(), "fuzz_targets/{name}.rs is missing");
        assert!(manifest.contains(&format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"")), "no [[bin]] for {name}");
        assert!(corpus_dir(name).is_dir(), "corpus/{name} is missing");
    }
    assert_eq!(multicloud_fuzz::TARGETS.len(), 9);
}
