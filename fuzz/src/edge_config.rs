//! The filter's configuration parser (`Edge::from_json`: JSON, then
//! `Edge::compile`, which validates every field and precomputes replies).
//!
//! Input: JSON bytes.
//!
//! Properties: nothing panics; a refusal names a field; an accepted
//! configuration survives serialize→parse→compile unchanged; the documents
//! it serves are the ones it holds; its mesh counter names are distinct.

use multicloud_core::edge::{Doc, Edge, Outcome, Request, TokenCache, PRIVATE_MULTICLUSTER_PATH, PUBLIC_JSON_PATH};
use multicloud_core::metadata::PublicMetadata;

pub fn run(data: &[u8]) {
    let edge = match Edge::from_json(data) {
        Ok(e) => e,
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal says why");
            return;
        }
    };
    let json = serde_json::to_vec(edge.config()).unwrap();
    let again = Edge::from_json(&json).unwrap_or_else(|e| panic!("an accepted configuration, re-serialized, is refused: {e}"));
    assert_eq!(again.config(), edge.config());
    for d in Doc::ALL {
        assert_eq!(again.etag(d), edge.etag(d), "the same configuration gives the same ETag");
    }
    let mut cache = TokenCache::default();
    let Outcome::Reply(reply, _) = edge.decide(&Request { method: "GET", path: PUBLIC_JSON_PATH, ..Default::default() }, || 0, &mut cache)
    else {
        panic!("public.json is not answered")
    };
    assert_eq!(reply.status, 200);
    let served: PublicMetadata = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(&served, &edge.config().public);
    let Outcome::Reply(reply, _) =
        edge.decide(&Request { method: "GET", path: PRIVATE_MULTICLUSTER_PATH, ..Default::default() }, || 0, &mut cache)
    else {
        panic!("the private document is not guarded")
    };
    assert_eq!(reply.status, 401, "the private document needs a token");
    let names = edge.mesh().counter_names();
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "mesh counter names repeat: {names:?}");
    assert_eq!(names.len(), 1 + 3 * edge.mesh().peers().len());
}
