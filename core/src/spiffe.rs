//! The SPIFFE trust bundle (`/metadata/public/spiffe-bundle-endpoint`): a
//! JWK set with one `x509-svid` key per root certificate, each carrying the
//! certificate in `x5c` and its public key parameters, plus
//! `spiffe_sequence` and `spiffe_refresh_hint` (SPIFFE Trust Domain and
//! Bundle spec). Roots may be RSA, EC (P-256/384/521) or Ed25519.

use crate::b64::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;

use crate::der::{self, PublicKey};
use crate::pem::CertBundle;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub x5c: [String; 1],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpiffeBundle {
    pub keys: Vec<Jwk>,
    pub spiffe_sequence: u64,
    pub spiffe_refresh_hint: u64,
}

/// Builds the bundle for `roots`. Fails only if a certificate's key cannot be
/// described, which [`CertBundle::from_pem`] already rules out.
pub fn bundle(roots: &CertBundle, sequence: u64, refresh_hint_secs: u64) -> Result<SpiffeBundle, der::DerError> {
    let mut keys = Vec::with_capacity(roots.certs_der.len());
    for cert in &roots.certs_der {
        let b64 = |b: &[u8]| Some(URL_SAFE_NO_PAD.encode(b));
        let x5c = [STANDARD.encode(cert)];
        let jwk = match der::certificate_public_key(cert)? {
            PublicKey::Rsa { n, e } => Jwk { kty: "RSA", use_: "x509-svid", crv: None, n: b64(&n), e: b64(&e), x: None, y: None, x5c },
            PublicKey::Ec { crv, x, y } => {
                Jwk { kty: "EC", use_: "x509-svid", crv: Some(crv), n: None, e: None, x: b64(&x), y: b64(&y), x5c }
            }
            PublicKey::Ed25519(raw) => {
                Jwk { kty: "OKP", use_: "x509-svid", crv: Some("Ed25519"), n: None, e: None, x: b64(&raw), y: None, x5c }
            }
        };
        keys.push(jwk);
    }
    Ok(SpiffeBundle { keys, spiffe_sequence: sequence, spiffe_refresh_hint: refresh_hint_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_becomes_one_x509_svid_key() {
        let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let k2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let c1 = rcgen::CertificateParams::new(vec![]).unwrap().self_signed(&k1).unwrap();
        let c2 = rcgen::CertificateParams::new(vec![]).unwrap().self_signed(&k2).unwrap();
        let roots = CertBundle::from_pem(&format!("{}{}", c1.pem(), c2.pem())).unwrap();
        let b = bundle(&roots, 3, 300).unwrap();
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["spiffe_sequence"], 3);
        assert_eq!(json["spiffe_refresh_hint"], 300);
        assert_eq!(json["keys"][0]["kty"], "EC");
        assert_eq!(json["keys"][0]["crv"], "P-256");
        assert_eq!(json["keys"][0]["use"], "x509-svid");
        assert_eq!(json["keys"][0]["x5c"][0], STANDARD.encode(c1.der()));
        assert_eq!(json["keys"][1]["kty"], "OKP");
        assert_eq!(json["keys"][1]["x"], URL_SAFE_NO_PAD.encode(k2.public_key_raw()));
    }
}
