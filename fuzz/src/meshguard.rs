//! The mesh guard (`core::meshguard`): its configuration (`MeshGuard::compile`)
//! and its per-request decision (`MeshGuard::decide`).
//!
//! Input: structured ([`arbitrary`]): peers whose names, UUIDs, SNIs and
//! services are drawn from the tests' values (or are arbitrary text), and
//! requests whose SNI, peer certificate SAN, `:authority` and header names
//! are drawn from those peers (in any case, with a port or trailing dot) or
//! are arbitrary text.
//!
//! Properties: nothing panics; a refused configuration names the field; an
//! accepted one has distinct, well-formed counter names; a request is
//! allowed only if its SNI is that peer's, its SAN a bounded, printable
//! `spiffe://` ID and its host one the peer is exported; every
//! `x-multicloud-caller*` header (any case) and nothing else is stripped;
//! the caller headers set are safe header values.

use arbitrary::{Arbitrary, Unstructured};
use multicloud_core::meshguard::{
    authority_host, MeshGuard, MeshOutcome, MeshPeer, MeshRequest, MeshSettings, CALLER_PREFIX, MAX_SPIFFE_ID_BYTES,
};
use multicloud_core::reply::GuardRefusal;

use crate::fixture;

const NAMES: &[&str] = &["cluster-1", "cluster-c", "b.c", "Cluster-A", "a..b", "-a", ""];
const UUIDS: &[&str] = &[fixture::A, fixture::C, fixture::B, "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a00zz"];
const SERVICES: &[&str] = &["foo.abc.svc.cluster.local", "Baz.ABC.svc.cluster.local.", "bar.abc.svc.cluster.local", "127.0.0.1", "a..b"];
const SANS: &[&str] =
    &[fixture::SPIFFE_ID, "SPIFFE://cluster.local/ns/x/sa/y", "spiffe://", "https://example.org/x", "spiffe://a b", "spiffe://a\r\nx: y"];
const HEADERS: &[&str] =
    &[":authority", ":path", "x-multicloud-caller-cluster", "X-Multicloud-Caller-Spiffe", "x-multicloud-callerx", "x-multicloud", "accept"];

#[derive(Debug, Arbitrary)]
enum Pick {
    Known(u8),
    Any(String),
}

impl Pick {
    fn get(&self, from: &[&str]) -> String {
        match self {
            Pick::Known(i) => from[usize::from(*i) % from.len()].to_string(),
            Pick::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Variant {
    upper: bool,
    dot: bool,
    port: Option<u16>,
}

impl Variant {
    fn apply(&self, s: &str, port_ok: bool) -> String {
        let mut s = if self.upper { s.to_ascii_uppercase() } else { s.to_string() };
        if self.dot && !s.ends_with('.') {
            s.push('.');
        }
        if let (true, Some(p)) = (port_ok, self.port) {
            s = format!("{s}:{p}");
        }
        s
    }
}

#[derive(Debug, Arbitrary)]
enum Sni {
    OfUuid(Variant),
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct PeerIn {
    name: Pick,
    uuid: Pick,
    sni: Sni,
    services: Vec<Pick>,
}

#[derive(Debug, Arbitrary)]
enum ReqSni {
    OfPeer(u8, Variant),
    Any(String),
    Absent,
}

#[derive(Debug, Arbitrary)]
enum Authority {
    OfPeer { peer: u8, service: u8, variant: Variant },
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct ReqIn {
    sni: ReqSni,
    san: Option<Pick>,
    authority: Authority,
    headers: Vec<Pick>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    peers: Vec<PeerIn>,
    requests: Vec<ReqIn>,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let peers: Vec<MeshPeer> = input
        .peers
        .iter()
        .take(8)
        .map(|p| {
            let uuid = p.uuid.get(UUIDS);
            let sni = match &p.sni {
                Sni::OfUuid(v) => v.apply(&format!("{uuid}.peer.multicloud"), false),
                Sni::Any(s) => s.clone(),
            };
            MeshPeer {
                name: p.name.get(NAMES),
                cluster_uuid: uuid,
                sni,
                services: p.services.iter().take(8).map(|s| s.get(SERVICES)).collect(),
            }
        })
        .collect();
    let settings = MeshSettings { peers };
    let guard = match MeshGuard::compile(&settings, fixture::B) {
        Ok(g) => g,
        Err(e) => {
            assert!(e.0.starts_with("mesh.peers["), "refusal names no field: {e:?}");
            return;
        }
    };
    let names = guard.counter_names();
    assert_eq!(names.len(), 1 + 3 * settings.peers.len());
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:?}");
    assert!(names.iter().all(|n| n.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))), "{names:?}");

    for r in input.requests.iter().take(16) {
        let pick_peer = |i: u8| settings.peers.get(usize::from(i) % settings.peers.len().max(1));
        let sni = match &r.sni {
            ReqSni::OfPeer(i, v) => pick_peer(*i).map(|p| v.apply(&p.sni, false)),
            ReqSni::Any(s) => Some(s.clone()),
            ReqSni::Absent => None,
        };
        let san = r.san.as_ref().map(|s| s.get(SANS));
        let authority = match &r.authority {
            Authority::OfPeer { peer, service, variant } => pick_peer(*peer)
                .and_then(|p| p.services.get(usize::from(*service) % p.services.len().max(1)))
                .map(|s| variant.apply(s, true))
                .unwrap_or_default(),
            Authority::Any(s) => s.clone(),
        };
        let header_names: Vec<String> = r.headers.iter().take(16).map(|h| h.get(HEADERS)).collect();
        let req = MeshRequest { sni: sni.as_deref(), peer_uri_san: san.as_deref(), authority: &authority };
        let outcome = guard.decide(req, header_names.iter().map(String::as_str));
        assert!(outcome.counter() < names.len());
        match &outcome {
            MeshOutcome::Refuse { reply, refusal, counter } => {
                assert_eq!(reply.status, 403);
                assert!(names[*counter].ends_with(refusal.stat_suffix()), "{} for {refusal:?}", names[*counter]);
            }
            MeshOutcome::Allow { peer, spiffe, strip } => {
                let norm = |s: &str| s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
                let conf = settings
                    .peers
                    .iter()
                    .find(|p| p.cluster_uuid.eq_ignore_ascii_case(&peer.uuid))
                    .expect("the allowed peer is configured");
                assert_eq!(norm(sni.as_deref().unwrap_or_default()), norm(&conf.sni), "allowed on another peer's SNI");
                assert_eq!(Some(*spiffe), san.as_deref());
                assert!(spiffe.len() <= MAX_SPIFFE_ID_BYTES && spiffe.to_ascii_lowercase().starts_with("spiffe://") && spiffe.len() > 9);
                let host = authority_host(&authority).to_ascii_lowercase();
                assert!(conf.services.iter().any(|s| norm(s) == host), "{authority:?} is not exported to {}", conf.name);
                let want: Vec<&str> =
                    header_names.iter().map(String::as_str).filter(|n| n.to_ascii_lowercase().starts_with(CALLER_PREFIX)).collect();
                assert_eq!(strip, &want);
                for (k, v) in outcome.caller_headers().expect("an allowed request sets the caller headers") {
                    assert!(k.starts_with(CALLER_PREFIX));
                    assert!(
                        !v.is_empty() && v.bytes().all(|c| c.is_ascii_graphic()),
                        "caller header {k}: {v:?} is not a safe header value"
                    );
                }
                assert_eq!(names[outcome.counter()], format!("multicloud_mesh.peer.{}.allowed", conf.name));
            }
        }
    }
}
