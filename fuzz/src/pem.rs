//! PEM parsing and encoding (`core::pem`) and the base64 under it (`core::b64`).
//!
//! Input: text (any bytes, read as UTF-8 with replacement).
//!
//! Properties: nothing panics; every block parsed re-encodes and parses back
//! to itself; a certificate bundle, a federation public key or private key
//! that parses survives encode→parse unchanged; core's base64 accepts
//! exactly what the `base64` crate's strict engines accept, decodes to the
//! same bytes and is canonical (decode→encode gives the input back).

use base64::engine::general_purpose::{STANDARD as REF_STANDARD, URL_SAFE_NO_PAD as REF_URL};
use base64::Engine as _;
use multicloud_core::b64::{STANDARD, URL_SAFE_NO_PAD};
use multicloud_core::pem::{self, CertBundle, PemError};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match pem::parse_blocks(&text) {
        Ok(blocks) => {
            for b in &blocks {
                let again = pem::parse_blocks(&pem::encode(&b.label, &b.der)).expect("an encoded block parses");
                assert_eq!(again.as_slice(), std::slice::from_ref(b), "block {:?} does not survive encode→parse", b.label);
            }
        }
        Err(PemError::TooLarge) => assert!(text.len() > pem::MAX_PEM_BYTES),
        Err(_) => {}
    }
    if let Ok(bundle) = CertBundle::from_pem(&text) {
        assert!(!bundle.certs_der.is_empty());
        assert_eq!(CertBundle::from_pem(&bundle.to_pem()).as_ref(), Ok(&bundle));
    }
    if let Ok(key) = pem::ed25519_public_key_from_pem(&text) {
        assert_eq!(pem::ed25519_public_key_from_pem(&pem::ed25519_public_key_to_pem(&key)), Ok(key));
    }
    if let Ok(key) = pem::ed25519_signing_key_from_pem(&text) {
        let again = pem::ed25519_signing_key_from_pem(&pem::ed25519_signing_key_to_pem(&key)).expect("re-encoded key parses");
        assert_eq!(again.as_bytes(), key.as_bytes());
    }
    // base64 against the reference, on the whole text and on each line.
    base64_agrees(text.as_bytes());
    for line in text.lines().take(64) {
        base64_agrees(line.trim().as_bytes());
    }
    let raw = STANDARD.encode(data);
    assert_eq!(STANDARD.decode(&raw).as_deref(), Ok(data));
}

fn base64_agrees(s: &[u8]) {
    let ours = STANDARD.decode(s).ok();
    assert_eq!(ours, REF_STANDARD.decode(s).ok(), "standard base64 of {:?}", String::from_utf8_lossy(s));
    if let Some(bytes) = &ours {
        assert_eq!(STANDARD.encode(bytes).as_bytes(), s, "standard base64 decoding is not canonical");
    }
    let ours = URL_SAFE_NO_PAD.decode(s).ok();
    assert_eq!(ours, REF_URL.decode(s).ok(), "url-safe base64 of {:?}", String::from_utf8_lossy(s));
    if let Some(bytes) = &ours {
        assert_eq!(URL_SAFE_NO_PAD.encode(bytes).as_bytes(), s, "url-safe base64 decoding is not canonical");
    }
}
