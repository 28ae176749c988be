//! Fuzz targets for what faces peers and operators: federation tokens, PEM
//! and DER, the metadata documents, the edge's, the API guard's and the mesh
//! guard's request decisions, the filter's configuration and the agent's
//! standalone file.
//!
//! Each target is a function from bytes (`<module>::run`) that returns on
//! any input and panics only when one of its properties fails: a decision
//! that contradicts an independent reading of the input (see [`oracle`]), a
//! document that does not survive serialize→parse, a parser that panics.
//! `fuzz_targets/` wraps each for libFuzzer (nightly, `scripts/fuzz.sh`), and
//! `tests/corpus.rs` replays the committed corpora through the same
//! functions on stable (part of `cargo test --workspace`).
//!
//! Text inputs are line-based, so a test's input is a seed as it stands
//! (`examples/write_seeds.rs` writes them); the mesh guard's input is
//! structured ([`arbitrary`]), drawing names, UUIDs and hosts from the
//! tests' own values so that valid configurations and matching requests are
//! common.

// A failed property is a finding: harness code asserts and unwraps freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod apiguard;
pub mod der;
pub mod edge;
pub mod edge_config;
pub mod fixture;
pub mod meshguard;
pub mod metadata;
pub mod oracle;
pub mod pem;
#[cfg(feature = "agent")]
pub mod standalone;
pub mod token;

/// A target: bytes in, a panic only on a failed property.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz_targets/` binary and of its
/// `corpus/` folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("token", token::run),
    ("pem", pem::run),
    ("der", der::run),
    ("metadata", metadata::run),
    ("edge", edge::run),
    ("edge_config", edge_config::run),
    ("apiguard", apiguard::run),
    ("meshguard", meshguard::run),
    #[cfg(feature = "agent")]
    ("standalone", standalone::run),
];
