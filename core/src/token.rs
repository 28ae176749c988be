//! Federation tokens: compact JWS, EdDSA (Ed25519), as Deckhouse's `istio`
//! module mints them, so either implementation can federate with the other.
//!
//! Claims: `iss`, `sub` (the caller's cluster UUID), `aud` (the callee's
//! cluster UUID; a string, an array is also accepted), `scope`, `nbf`, `exp`.
//! Verification order matters: the token is size-checked and parsed, the
//! peer is found by `sub`, the signature is verified with that peer's key,
//! and only then are audience, time and scope trusted.

use crate::b64::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The clock skew tolerated on `nbf` and `exp`.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read this cluster's private multicluster metadata document.
    PrivateMulticluster,
    /// Read this cluster's API server through the API proxy route.
    Api,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PrivateMulticluster => "private-multicluster",
            Scope::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "private-multicluster" => Some(Scope::PrivateMulticluster),
            "api" => Some(Scope::Api),
            _ => None,
        }
    }
}

/// Why a token was refused. Every variant maps to 401 except
/// [`TokenError::WrongScope`] (403: who you are is known, what you ask is not
/// allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    Missing,
    WrongScheme,
    TooLarge,
    Malformed,
    UnsupportedAlgorithm,
    MissingClaim,
    UnknownPeer,
    BadSignature,
    WrongAudience,
    Expired,
    NotYetValid,
    LifetimeTooLong,
    WrongScope,
}

impl TokenError {
    pub const ALL: [TokenError; 13] = [
        TokenError::Missing,
        TokenError::WrongScheme,
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::UnsupportedAlgorithm,
        TokenError::MissingClaim,
        TokenError::UnknownPeer,
        TokenError::BadSignature,
        TokenError::WrongAudience,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::LifetimeTooLong,
        TokenError::WrongScope,
    ];

    pub fn status(self) -> u32 {
        match self {
            TokenError::WrongScope => 403,
            _ => 401,
        }
    }

    /// A stable, machine-readable reason (also the stats suffix).
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "TokenMissing",
            TokenError::WrongScheme => "TokenWrongScheme",
            TokenError::TooLarge => "TokenTooLarge",
            TokenError::Malformed => "TokenMalformed",
            TokenError::UnsupportedAlgorithm => "TokenUnsupportedAlgorithm",
            TokenError::MissingClaim => "TokenMissingClaim",
            TokenError::UnknownPeer => "TokenUnknownPeer",
            TokenError::BadSignature => "TokenBadSignature",
            TokenError::WrongAudience => "TokenWrongAudience",
            TokenError::Expired => "TokenExpired",
            TokenError::NotYetValid => "TokenNotYetValid",
            TokenError::LifetimeTooLong => "TokenLifetimeTooLong",
            TokenError::WrongScope => "TokenWrongScope",
        }
    }

    /// What a person reading the refusal should know and do.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Missing => "this document needs an Authorization: Bearer <federation token> header",
            TokenError::WrongScheme => "the Authorization header must use the Bearer scheme",
            TokenError::TooLarge => "the bearer token is larger than 8 KiB",
            TokenError::Malformed => "the bearer token is not a compact JWS (three base64url parts with JSON header and claims)",
            TokenError::UnsupportedAlgorithm => {
                "the token must be signed with EdDSA (Ed25519); other algorithms, including none and HMAC, are refused"
            }
            TokenError::MissingClaim => "the token lacks one of the claims iss, sub, aud, scope, nbf, exp",
            TokenError::UnknownPeer => {
                "the token's sub is not a cluster this cluster federates with; create an IstioMulticloud object for it on this side"
            }
            TokenError::BadSignature => "the token's signature does not verify with the federation key of the cluster named in sub",
            TokenError::WrongAudience => "the token's aud is not this cluster's UUID",
            TokenError::Expired => "the token has expired (60 s clock skew allowed); mint a fresh one and check the caller's clock",
            TokenError::NotYetValid => "the token is not valid yet (nbf is in the future beyond 60 s clock skew); check the caller's clock",
            TokenError::LifetimeTooLong => "the token's lifetime (exp - nbf) is longer than this cluster accepts for its scope",
            TokenError::WrongScope => "the token is valid but its scope does not grant this resource",
        }
    }

    pub fn stat_suffix(self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::WrongScheme => "token_wrong_scheme",
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed => "token_malformed",
            TokenError::UnsupportedAlgorithm => "token_unsupported_algorithm",
            TokenError::MissingClaim => "token_missing_claim",
            TokenError::UnknownPeer => "token_unknown_peer",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::LifetimeTooLong => "token_lifetime_too_long",
            TokenError::WrongScope => "token_wrong_scope",
        }
    }
}

/// The `aud` claim: RFC 7519 allows a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, uuid: &str) -> bool {
        match self {
            Audience::One(a) => a == uuid,
            Audience::Many(v) => v.iter().any(|a| a == uuid),
        }
    }
}

/// The claim set of a federation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub scope: String,
    pub nbf: i64,
    pub exp: i64,
}

/// Claims as they arrive: every field optional, so that a missing claim is
/// reported as such rather than as a parse error.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    scope: Option<String>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Signs `claims` as a compact JWS with header `{"alg":"EdDSA","typ":"JWT"}`.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    const HEADER: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9"; // {"alg":"EdDSA","typ":"JWT"}
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mut out = String::with_capacity(HEADER.len() + payload.len() * 4 / 3 + 100);
    out.push_str(HEADER);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(&payload));
    let sig = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    out
}

/// A token whose signature verified and whose claims are in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<P> {
    /// Whatever the key lookup returned for `sub` (e.g. a peer index).
    pub peer: P,
    pub scope: Option<Scope>,
    pub nbf: i64,
    pub exp: i64,
}

/// Verifies a token's structure, signature, audience and times. The scope is
/// returned, not judged: the caller knows what the resource needs.
///
/// `lookup` maps `sub` to the peer's key and a handle for the caller.
pub fn verify<P, K: AsRef<[VerifyingKey]>>(
    token: &str,
    local_uuid: &str,
    now: i64,
    max_lifetime_secs: i64,
    lookup: impl FnOnce(&str) -> Option<(P, K)>,
) -> Result<Verified<P>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD.decode(h64).map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.alg.as_deref() != Some("EdDSA") || header.crit.is_some() {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let payload_json = URL_SAFE_NO_PAD.decode(p64).map_err(|_| TokenError::Malformed)?;
    let raw: RawClaims = serde_json::from_slice(&payload_json).map_err(|_| TokenError::Malformed)?;
    let (Some(iss), Some(sub), Some(aud), Some(scope), Some(nbf), Some(exp)) = (raw.iss, raw.sub, raw.aud, raw.scope, raw.nbf, raw.exp)
    else {
        return Err(TokenError::MissingClaim);
    };
    if iss.is_empty() || sub.is_empty() {
        return Err(TokenError::MissingClaim);
    }
    let (peer, keys) = lookup(&sub).ok_or(TokenError::UnknownPeer)?;
    if s64.len() != 86 {
        return Err(TokenError::Malformed); // 64 bytes, unpadded
    }
    let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(s64).ok().and_then(|v| v.try_into().ok()).ok_or(TokenError::Malformed)?;
    let signed_len = h64.len() + 1 + p64.len();
    let signed = token.as_bytes().get(..signed_len).ok_or(TokenError::Malformed)?;
    // Any of the peer's keys (during its rotation, more than one).
    let sig = Signature::from_bytes(&sig);
    if !keys.as_ref().iter().any(|k| k.verify_strict(signed, &sig).is_ok()) {
        return Err(TokenError::BadSignature);
    }
    if !aud.contains(local_uuid) {
        return Err(TokenError::WrongAudience);
    }
    if now > exp.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(TokenError::Expired);
    }
    if now.saturating_add(MAX_CLOCK_SKEW_SECS) < nbf {
        return Err(TokenError::NotYetValid);
    }
    if exp.saturating_sub(nbf) > max_lifetime_secs {
        return Err(TokenError::LifetimeTooLong);
    }
    Ok(Verified { peer, scope: Scope::parse(&scope), nbf, exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0001";
    const B: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0002";

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "istio-multicloud".into(),
            sub: A.into(),
            aud: Audience::One(B.into()),
            scope: "private-multicluster".into(),
            nbf: now,
            exp: now + 60,
        }
    }

    fn check(token: &str, key: &SigningKey, now: i64) -> Result<Verified<u8>, TokenError> {
        let vk = key.verifying_key();
        verify(token, B, now, 600, |sub| (sub == A).then_some((7u8, [vk])))
    }

    #[test]
    fn a_signed_token_verifies_and_reports_its_scope() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let t = sign(&key, &claims(1000));
        let v = check(&t, &key, 1000).unwrap();
        assert_eq!(v, Verified { peer: 7, scope: Some(Scope::PrivateMulticluster), nbf: 1000, exp: 1060 });
    }

    #[test]
    fn each_defect_has_its_own_reason() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let now = 1000;
        let mut c = claims(now);
        assert_eq!(check(&sign(&other, &c), &key, now), Err(TokenError::BadSignature));
        assert_eq!(check(&sign(&key, &c), &key, now + 121), Err(TokenError::Expired));
        assert!(check(&sign(&key, &c), &key, now + 120).is_ok(), "60 s skew after exp is allowed");
        assert_eq!(check(&sign(&key, &c), &key, now - 61), Err(TokenError::NotYetValid));
        c.aud = Audience::Many(vec!["x".into(), B.into()]);
        assert!(check(&sign(&key, &c), &key, now).is_ok());
        c.aud = Audience::One(A.into());
        assert_eq!(check(&sign(&key, &c), &key, now), Err(TokenError::WrongAudience));
        c = claims(now);
        c.sub = "someone-else".into();
        assert_eq!(check(&sign(&key, &c), &key, now), Err(TokenError::UnknownPeer));
        c = claims(now);
        c.exp = now + 10_000;
        assert_eq!(check(&sign(&key, &c), &key, now), Err(TokenError::LifetimeTooLong));
        assert_eq!(check("a.b", &key, now), Err(TokenError::Malformed));
        assert_eq!(check("a.b.c.d", &key, now), Err(TokenError::Malformed));
        assert_eq!(check(&"x".repeat(MAX_TOKEN_BYTES + 1), &key, now), Err(TokenError::TooLarge));
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode("{}"));
        assert_eq!(check(&none, &key, now), Err(TokenError::UnsupportedAlgorithm));
        let missing = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#),
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert_eq!(check(&missing, &key, now), Err(TokenError::MissingClaim));
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let t = sign(&key, &claims(1000));
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(1000);
        c.scope = "api".into();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        parts[1] = &forged;
        assert_eq!(check(&parts.join("."), &key, 1000), Err(TokenError::BadSignature));
    }
}
