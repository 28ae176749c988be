//! Pure, I/O-free federation logic shared by the gateway filter (wasm32) and
//! the agent: metadata documents and their validation, federation tokens,
//! SPIFFE bundles, PEM/DER handling, the data plane's names and the
//! three guards' request decisions.
//!
//! The guards: [`edge`] (the metadata documents; it runs the other two),
//! [`apiguard`] (the API proxy route) and [`meshguard`] (the mesh port).
//! What they share, the reply, the configuration error and the refusal
//! shape, is in [`reply`]; none imports another's internals.
//!
//! Nothing here touches a clock, a socket or a file: callers pass `now` and
//! bytes in. That keeps the filter small and lets the agent check exactly
//! what the filter enforces.

pub mod apiguard;
pub mod b64;
pub mod der;
pub mod edge;
pub mod meshguard;
pub mod metadata;
pub mod naming;
pub mod pem;
pub mod reply;
pub mod spiffe;
pub mod token;
