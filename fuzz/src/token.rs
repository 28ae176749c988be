//! The compact JWS parser and verifier (`core::token::verify`, `sign`).
//!
//! Input: a first line with a clock offset in seconds from [`fixture::NOW`],
//! then either a token as it stands, or `sign:<header JSON>\n<claims JSON>`,
//! which the target signs with peer A's key so that everything after the
//! signature check is reached.
//!
//! Properties: verification never panics; a token that verifies has every
//! claim rule hold when read from scratch ([`oracle::token_in_force`]), with
//! the times and scope `verify` reported; and a claim set that parses as
//! [`Claims`], signed by core's own signer, verifies exactly when the rules
//! say it should.

use crate::{fixture, oracle};
use multicloud_core::token::{self, Audience, Claims, Scope, TokenError};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once('\n').unwrap_or(("", &text));
    let now = fixture::NOW.saturating_add(head.trim().parse::<i64>().unwrap_or(0));
    let a = fixture::key(fixture::A_SEED);
    let token = match body.strip_prefix("sign:") {
        Some(spec) => {
            let (h, c) = spec.split_once('\n').unwrap_or((r#"{"alg":"EdDSA","typ":"JWT"}"#, spec));
            fixture::sign_raw(&a, h.as_bytes(), c.as_bytes())
        }
        None => body.to_string(),
    };
    let _ = check(&token, now);

    // Core's signer and verifier agree with the rules on any claim set.
    if let Ok(claims) = serde_json::from_str::<Claims>(body) {
        let signed = token::sign(&a, &claims);
        let verdict = check(&signed, now);
        let aud_ok = match &claims.aud {
            Audience::One(x) => x == fixture::B,
            Audience::Many(v) => v.iter().any(|x| x == fixture::B),
        };
        let should = !claims.iss.is_empty()
            && claims.sub.eq_ignore_ascii_case(fixture::A)
            && aud_ok
            && now <= claims.exp.saturating_add(oracle::SKEW)
            && now.saturating_add(oracle::SKEW) >= claims.nbf
            && claims.exp.saturating_sub(claims.nbf) <= fixture::MAX_PRIVATE_LIFETIME;
        assert_eq!(verdict.is_ok(), should, "core's own token for {claims:?} at {now}: {verdict:?}");
    }
}

/// Verifies `token` as B, peer A known (any case of its UUID), and checks
/// what an accepted token must be.
fn check(token: &str, now: i64) -> Result<(), TokenError> {
    let a = fixture::key(fixture::A_SEED).verifying_key();
    let lookup = |sub: &str| sub.eq_ignore_ascii_case(fixture::A).then(|| (sub.to_ascii_lowercase(), [a]));
    match token::verify(token, fixture::B, now, fixture::MAX_PRIVATE_LIFETIME, lookup) {
        Ok(v) => {
            let held = oracle::token_in_force(token, &a, fixture::B, now, fixture::MAX_PRIVATE_LIFETIME)
                .unwrap_or_else(|why| panic!("verify accepted a token whose {why}: {token:?} at {now}"));
            assert_eq!(v.peer, fixture::A);
            assert_eq!((v.nbf, v.exp), (held.nbf, held.exp));
            assert_eq!(v.scope, Scope::parse(&held.scope));
            Ok(())
        }
        Err(e) => {
            assert!(matches!(e.status(), 401 | 403), "{e:?}");
            assert_ne!(e, TokenError::WrongScope, "verify returns the scope, it does not judge it");
            Err(e)
        }
    }
}
