//! PEM and key encodings the federation formats use: certificate bundles
//! (`rootCA`), the Ed25519 federation public key (`authnKeyPub`, SPKI in a
//! `PUBLIC KEY` block, as Deckhouse publishes it) and the private key
//! (PKCS#8 `PRIVATE KEY`, as `openssl genpkey -algorithm ed25519` writes it).

use crate::b64::STANDARD;
use std::fmt;

use crate::der;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemError {
    NoBlock(&'static str),
    Unterminated(String),
    Base64(String),
    Der(String),
    WrongKeyType(&'static str),
    TooLarge,
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemError::NoBlock(label) => write!(f, "no PEM block labelled {label:?}"),
            PemError::Unterminated(label) => write!(f, "PEM block {label:?} has no END line"),
            PemError::Base64(label) => write!(f, "PEM block {label:?} is not valid base64"),
            PemError::Der(why) => write!(f, "PEM body does not decode: {why}"),
            PemError::WrongKeyType(what) => write!(f, "{what}"),
            PemError::TooLarge => write!(f, "PEM text is larger than 64 KiB"),
        }
    }
}

impl std::error::Error for PemError {}

/// Upper bound on any PEM text accepted from configuration or a remote.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

/// Decodes every PEM block in `text`, in order. Text between blocks is
/// ignored (as OpenSSL does), but a block that starts must end and decode.
pub fn parse_blocks(text: &str) -> Result<Vec<Block>, PemError> {
    if text.len() > MAX_PEM_BYTES {
        return Err(PemError::TooLarge);
    }
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for body in lines.by_ref() {
            if body == end {
                closed = true;
                break;
            }
            if body.contains(':') {
                continue; // RFC 1421 headers, e.g. "Proc-Type:"; not used here
            }
            b64.push_str(body);
        }
        if !closed {
            return Err(PemError::Unterminated(label.to_string()));
        }
        let der = STANDARD.decode(b64.as_bytes()).map_err(|_| PemError::Base64(label.to_string()))?;
        blocks.push(Block { label: label.to_string(), der });
    }
    Ok(blocks)
}

/// Encodes DER as a PEM block with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// A validated bundle of one or more X.509 certificates (a root CA, or old
/// and new roots during a rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub certs_der: Vec<Vec<u8>>,
}

impl CertBundle {
    /// Parses a PEM bundle; every `CERTIFICATE` block must be a certificate
    /// whose public key this project can describe; there must be at least one.
    pub fn from_pem(text: &str) -> Result<Self, PemError> {
        let mut certs_der = Vec::new();
        for block in parse_blocks(text)? {
            if block.label != "CERTIFICATE" {
                continue;
            }
            der::certificate_public_key(&block.der).map_err(|e| PemError::Der(e.to_string()))?;
            certs_der.push(block.der);
        }
        if certs_der.is_empty() {
            return Err(PemError::NoBlock("CERTIFICATE"));
        }
        Ok(CertBundle { certs_der })
    }

    pub fn to_pem(&self) -> String {
        self.certs_der.iter().map(|d| encode("CERTIFICATE", d)).collect()
    }
}

// DER prefixes of the fixed-size Ed25519 encodings (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
const ED25519_PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Parses an Ed25519 public key from a `PUBLIC KEY` (SPKI) PEM block.
pub fn ed25519_public_key_from_pem(text: &str) -> Result<ed25519_dalek::VerifyingKey, PemError> {
    let block = parse_blocks(text)?.into_iter().find(|b| b.label == "PUBLIC KEY").ok_or(PemError::NoBlock("PUBLIC KEY"))?;
    let raw = match der::spki_public_key(
        der::Reader::new(&block.der).expect(der::TAG_SEQUENCE, "public key is not a SEQUENCE").map_err(|e| PemError::Der(e.to_string()))?,
    ) {
        Ok(der::PublicKey::Ed25519(raw)) => raw,
        Ok(_) => return Err(PemError::WrongKeyType("the public key is not an Ed25519 key")),
        Err(e) => return Err(PemError::Der(e.to_string())),
    };
    ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| PemError::WrongKeyType("the Ed25519 public key is not a valid curve point"))
}

/// Encodes an Ed25519 public key as a `PUBLIC KEY` (SPKI) PEM block.
pub fn ed25519_public_key_to_pem(key: &ed25519_dalek::VerifyingKey) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    encode("PUBLIC KEY", &der)
}

/// Parses an Ed25519 private key from a PKCS#8 `PRIVATE KEY` PEM block.
pub fn ed25519_signing_key_from_pem(text: &str) -> Result<ed25519_dalek::SigningKey, PemError> {
    let block = parse_blocks(text)?.into_iter().find(|b| b.label == "PRIVATE KEY").ok_or(PemError::NoBlock("PRIVATE KEY"))?;
    let seed =
        block.der.strip_prefix(&ED25519_PKCS8_PREFIX[..]).ok_or(PemError::WrongKeyType("the private key is not a PKCS#8 Ed25519 key"))?;
    let seed: [u8; 32] = seed.try_into().map_err(|_| PemError::WrongKeyType("the Ed25519 private key is not 32 bytes"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Encodes an Ed25519 private key as a PKCS#8 `PRIVATE KEY` PEM block.
pub fn ed25519_signing_key_to_pem(key: &ed25519_dalek::SigningKey) -> String {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    encode("PRIVATE KEY", &der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_round_trip_through_pem() {
        let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let pem = ed25519_signing_key_to_pem(&sk);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(ed25519_signing_key_from_pem(&pem).unwrap().as_bytes(), sk.as_bytes());
        let pub_pem = ed25519_public_key_to_pem(&sk.verifying_key());
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(ed25519_public_key_from_pem(&pub_pem).unwrap(), sk.verifying_key());
    }

    #[test]
    fn ec_public_key_is_refused_as_federation_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = ed25519_public_key_from_pem(&key.public_key_pem()).unwrap_err();
        assert_eq!(err, PemError::WrongKeyType("the public key is not an Ed25519 key"));
    }

    #[test]
    fn bundles_need_certificates_that_parse() {
        assert_eq!(CertBundle::from_pem("hello").unwrap_err(), PemError::NoBlock("CERTIFICATE"));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(CertBundle::from_pem(bad), Err(PemError::Der(_))));
        let open = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(CertBundle::from_pem(open), Err(PemError::Unterminated(_))));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()]).unwrap().self_signed(&key).unwrap();
        let two = format!("{}{}", cert.pem(), cert.pem());
        let bundle = CertBundle::from_pem(&two).unwrap();
        assert_eq!(bundle.certs_der.len(), 2);
        assert_eq!(CertBundle::from_pem(&bundle.to_pem()).unwrap(), bundle);
    }
}
