//! The DER reader (`core::der`): certificates' public keys and URI SANs,
//! SubjectPublicKeyInfo, and the SPIFFE bundle built from them.
//!
//! Input: raw bytes, read as a certificate, as the inside of an SPKI, and
//! as a sequence of TLVs.
//!
//! Properties: nothing panics or loops; a key that is returned has the
//! sizes its kind requires (EC coordinates of the curve's size, RSA
//! parameters without leading zeros, Ed25519 of 32 bytes); URI SANs are
//! pieces of the input; a certificate whose key is read goes through PEM
//! into a bundle unchanged, and the SPIFFE bundle of it builds (as
//! `spiffe::bundle` promises once `CertBundle::from_pem` accepted it).

use multicloud_core::der::{self, PublicKey, Reader};
use multicloud_core::pem::{self, CertBundle};
use multicloud_core::spiffe;

pub fn run(data: &[u8]) {
    if let Ok(key) = der::certificate_public_key(data) {
        key_is_well_formed(&key);
        let bundle = CertBundle::from_pem(&pem::encode("CERTIFICATE", data)).expect("a certificate with a readable key bundles");
        assert_eq!(bundle.certs_der, [data.to_vec()]);
        let b = spiffe::bundle(&bundle, 1, 300).expect("the SPIFFE bundle of an accepted root builds");
        assert_eq!(b.keys.len(), 1);
        serde_json::to_vec(&b).expect("the SPIFFE bundle serializes");
    }
    if let Ok(uris) = der::certificate_uri_sans(data) {
        for u in uris {
            assert!(data.windows(u.len().max(1)).any(|w| w == u.as_bytes()) || u.is_empty(), "URI SAN {u:?} is not in the input");
        }
    }
    if let Ok(key) = der::spki_public_key(data) {
        key_is_well_formed(&key);
    }
    let mut r = Reader::new(data);
    let mut steps = 0usize;
    while !r.is_empty() {
        let Ok(tlv) = r.read() else { break };
        assert!(tlv.value.len() <= data.len());
        steps += 1;
        assert!(steps <= data.len() / 2, "the reader read more TLVs than the input can hold");
    }
}

fn key_is_well_formed(key: &PublicKey) {
    match key {
        PublicKey::Rsa { n, e } => {
            assert!(!n.is_empty() && !e.is_empty());
            assert_ne!(n[0], 0, "RSA modulus has a leading zero");
            assert_ne!(e[0], 0, "RSA exponent has a leading zero");
        }
        PublicKey::Ec { crv, x, y } => {
            let size = match *crv {
                "P-256" => 32,
                "P-384" => 48,
                "P-521" => 66,
                other => panic!("unknown curve {other}"),
            };
            assert_eq!((x.len(), y.len()), (size, size));
        }
        PublicKey::Ed25519(raw) => assert_eq!(raw.len(), 32),
    }
}
