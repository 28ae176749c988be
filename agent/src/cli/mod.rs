//! The agent binary's commands besides `run`: `status` and `check`
//! ([`inspect`]; [`check_kube`] reads `check --kubernetes`'s inputs),
//! `install` ([`install`]).

pub mod check_kube;
pub mod inspect;
pub mod install;
