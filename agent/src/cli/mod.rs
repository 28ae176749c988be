//! The agent binary's commands besides `run`: `status` and `check`
//! ([`inspect`]), `install` ([`install`]).

pub mod inspect;
pub mod install;
