//! What the three guards share: the edge's metadata documents
//! ([`crate::edge`]), the API proxy guard ([`crate::apiguard`]) and the mesh
//! port's guard ([`crate::meshguard`]). A [`Reply`] ready to send, the
//! [`ConfigError`] a refused configuration gives, and one refusal shape:
//! every guard's refusal is a [`GuardRefusal`], and its replies are built
//! once per configuration into [`RefusalReplies`], so no request serializes.
//!
//! The guards depend on this module and never on one another's internals,
//! so `core` has no import cycle: `edge` (which runs all three) uses
//! `apiguard` and `meshguard`, and both of them use only this module.

use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;

use crate::metadata::InvalidField;

/// A reply, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a configuration was refused: one line a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid multicloud edge configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl From<InvalidField> for ConfigError {
    fn from(e: InvalidField) -> Self {
        ConfigError(e.to_string())
    }
}

/// The headers of every JSON reply.
pub(crate) fn json_headers(cache_control: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("cache-control".into(), cache_control.into()),
        ("x-content-type-options".into(), "nosniff".into()),
    ]
}

/// A refusal: `{"error": <what to do>, "reason": <Reason>}`, not cached.
pub(crate) fn json_refusal(status: u32, error: &str, reason: &str) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        reason: &'a str,
    }
    let body = serde_json::to_vec(&Body { error, reason }).unwrap_or_default();
    Reply { status, headers: json_headers("no-store"), body }
}

/// The shape of every guard's refusal: what it answers, how it is counted,
/// and where its precomputed reply sits.
pub trait GuardRefusal: Copy + Sized {
    /// Number of distinct refusals; [`GuardRefusal::index`] is below it.
    const COUNT: usize;
    /// The HTTP status.
    fn status(self) -> u32;
    /// The stable, machine-readable reason the reply's body carries.
    fn reason(self) -> &'static str;
    /// What a person reading the refusal should know and do.
    fn message(self) -> &'static str;
    /// The suffix of the refusal's counter (`<guard>.refused.<suffix>`).
    fn stat_suffix(self) -> &'static str;
    /// The refusal's position in [`GuardRefusal::every`].
    fn index(self) -> usize;
    /// Every refusal, in [`GuardRefusal::index`] order.
    fn every() -> impl Iterator<Item = Self>;
    /// The reply (built once per configuration by [`RefusalReplies::compile`]).
    fn reply(self) -> Reply;
}

/// One precomputed reply per refusal of a guard.
#[derive(Debug)]
pub struct RefusalReplies<R> {
    replies: Vec<Reply>,
    refusal: PhantomData<fn(R)>,
}

impl<R> Default for RefusalReplies<R> {
    fn default() -> Self {
        RefusalReplies { replies: Vec::new(), refusal: PhantomData }
    }
}

/// Only a [`RefusalReplies::default`] (never compiled) lacks a reply.
static NO_REPLY: Reply = Reply { status: 500, headers: Vec::new(), body: Vec::new() };

impl<R: GuardRefusal> RefusalReplies<R> {
    pub fn compile() -> Self {
        RefusalReplies { replies: R::every().map(R::reply).collect(), refusal: PhantomData }
    }

    pub fn get(&self, r: R) -> &Reply {
        self.replies.get(r.index()).unwrap_or(&NO_REPLY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiguard::ApiRefusal;
    use crate::edge::Refusal;
    use crate::meshguard::MeshRefusal;

    fn indexes_are_every_order<R: GuardRefusal>() {
        let idx: Vec<usize> = R::every().map(R::index).collect();
        assert_eq!(idx, (0..R::COUNT).collect::<Vec<_>>());
        let replies = RefusalReplies::<R>::compile();
        for r in R::every() {
            assert_eq!(replies.get(r).status, r.status());
        }
    }

    #[test]
    fn every_guard_lists_its_refusals_in_index_order_each_with_its_reply() {
        indexes_are_every_order::<Refusal>();
        indexes_are_every_order::<ApiRefusal>();
        indexes_are_every_order::<MeshRefusal>();
    }
}
