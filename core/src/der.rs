//! A minimal DER reader: just enough X.509 to find a certificate's
//! SubjectPublicKeyInfo (for SPIFFE bundle JWKs), its URI SANs (the SPIFFE
//! ID of an xDS client), and to check that a PEM body is a well-formed
//! certificate. It never panics and never recurses without
//! bound; anything unexpected is an error.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError(pub &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DER: {}", self.0)
    }
}

impl std::error::Error for DerError {}

pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OID: u8 = 0x06;
pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_CONTEXT_0: u8 = 0xa0;
pub const TAG_BOOLEAN: u8 = 0x01;
pub const TAG_OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const TAG_CONTEXT_3: u8 = 0xa3;
/// `uniformResourceIdentifier [6] IMPLICIT IA5String` in GeneralNames.
const TAG_GENERAL_NAME_URI: u8 = 0x86;
/// id-ce-subjectAltName (2.5.29.17).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One TLV element.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

/// Reads consecutive TLVs from a byte slice.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let (&tag, rest) = self.rest.split_first().ok_or(DerError("truncated tag"))?;
        let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError("unsupported length encoding"));
            }
            let (len_bytes, after) = rest.split_at_checked(n).ok_or(DerError("truncated length"))?;
            rest = after;
            len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (value, after) = rest.split_at_checked(len).ok_or(DerError("length beyond end of data"))?;
        self.rest = after;
        Ok(Tlv { tag, value })
    }

    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        let tlv = self.read()?;
        if tlv.tag != tag {
            return Err(DerError(what));
        }
        Ok(tlv.value)
    }
}

/// The public key of a certificate, as far as JWKs need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and exponent, big-endian, without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An EC point on a named curve (`P-256`, `P-384`, `P-521`), uncompressed.
    Ec { crv: &'static str, x: Vec<u8>, y: Vec<u8> },
    /// An Ed25519 key (raw 32 bytes).
    Ed25519([u8; 32]),
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Parses a certificate far enough to return its SubjectPublicKeyInfo.
/// Also serves as the structural check that a PEM body is a certificate.
pub fn certificate_public_key(cert_der: &[u8]) -> Result<PublicKey, DerError> {
    let (spki, _) = tbs_after_subject(cert_der)?;
    spki_public_key(spki)
}

/// The URI subject alternative names of a certificate (e.g. its SPIFFE ID),
/// in the order the certificate lists them. The signature is not checked
/// here: callers read names only from a chain their TLS stack verified.
pub fn certificate_uri_sans(cert_der: &[u8]) -> Result<Vec<&str>, DerError> {
    let (_, mut tbs) = tbs_after_subject(cert_der)?;
    let mut uris = Vec::new();
    while !tbs.is_empty() {
        let field = tbs.read()?;
        if field.tag != TAG_CONTEXT_3 {
            continue; // issuerUniqueID / subjectUniqueID
        }
        let mut exts = Reader::new(Reader::new(field.value).expect(TAG_SEQUENCE, "extensions are not a SEQUENCE")?);
        while !exts.is_empty() {
            let mut ext = Reader::new(exts.expect(TAG_SEQUENCE, "extension is not a SEQUENCE")?);
            let oid = ext.expect(TAG_OID, "extension id is not an OID")?;
            if ext.peek_tag() == Some(TAG_BOOLEAN) {
                ext.read()?; // critical
            }
            let value = ext.expect(TAG_OCTET_STRING, "extension value is not an OCTET STRING")?;
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            let mut names = Reader::new(Reader::new(value).expect(TAG_SEQUENCE, "subjectAltName is not a SEQUENCE")?);
            while !names.is_empty() {
                let name = names.read()?;
                if name.tag == TAG_GENERAL_NAME_URI {
                    uris.push(std::str::from_utf8(name.value).map_err(|_| DerError("URI SAN is not text"))?);
                }
            }
        }
    }
    Ok(uris)
}

/// The SubjectPublicKeyInfo of a certificate and a reader over the rest of
/// its TBSCertificate (unique IDs, extensions).
fn tbs_after_subject(cert_der: &[u8]) -> Result<(&[u8], Reader<'_>), DerError> {
    let mut outer = Reader::new(cert_der);
    let cert = outer.expect(TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    if !outer.is_empty() {
        return Err(DerError("trailing data after certificate"));
    }
    let mut cert = Reader::new(cert);
    let tbs = cert.expect(TAG_SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    cert.expect(TAG_SEQUENCE, "signatureAlgorithm is not a SEQUENCE")?;
    cert.expect(TAG_BIT_STRING, "signature is not a BIT STRING")?;
    let mut tbs = Reader::new(tbs);
    if tbs.peek_tag() == Some(TAG_CONTEXT_0) {
        tbs.read()?; // version
    }
    tbs.expect(TAG_INTEGER, "serialNumber is not an INTEGER")?;
    tbs.expect(TAG_SEQUENCE, "signature algorithm is not a SEQUENCE")?;
    tbs.expect(TAG_SEQUENCE, "issuer is not a SEQUENCE")?;
    tbs.expect(TAG_SEQUENCE, "validity is not a SEQUENCE")?;
    tbs.expect(TAG_SEQUENCE, "subject is not a SEQUENCE")?;
    let spki = tbs.expect(TAG_SEQUENCE, "subjectPublicKeyInfo is not a SEQUENCE")?;
    Ok((spki, tbs))
}

/// Decodes the inside of a SubjectPublicKeyInfo SEQUENCE.
pub fn spki_public_key(spki: &[u8]) -> Result<PublicKey, DerError> {
    let mut spki = Reader::new(spki);
    let alg = spki.expect(TAG_SEQUENCE, "algorithm is not a SEQUENCE")?;
    let key = spki.expect(TAG_BIT_STRING, "subjectPublicKey is not a BIT STRING")?;
    let key = match key.split_first() {
        Some((0, bits)) => bits,
        _ => return Err(DerError("subjectPublicKey has unused bits")),
    };
    let mut alg = Reader::new(alg);
    let oid = alg.expect(TAG_OID, "algorithm identifier is not an OID")?;
    if oid == OID_RSA {
        let mut seq = Reader::new(key);
        let mut inner = Reader::new(seq.expect(TAG_SEQUENCE, "RSA key is not a SEQUENCE")?);
        let n = strip_leading_zeros(inner.expect(TAG_INTEGER, "RSA modulus is not an INTEGER")?);
        let e = strip_leading_zeros(inner.expect(TAG_INTEGER, "RSA exponent is not an INTEGER")?);
        if n.is_empty() || e.is_empty() {
            return Err(DerError("empty RSA parameter"));
        }
        Ok(PublicKey::Rsa { n: n.to_vec(), e: e.to_vec() })
    } else if oid == OID_EC {
        let curve = alg.expect(TAG_OID, "EC parameters are not a named curve")?;
        let (crv, size) = if curve == OID_P256 {
            ("P-256", 32)
        } else if curve == OID_P384 {
            ("P-384", 48)
        } else if curve == OID_P521 {
            ("P-521", 66)
        } else {
            return Err(DerError("unsupported EC curve"));
        };
        match key.split_first() {
            Some((4, xy)) if xy.len() == 2 * size => {
                let (x, y) = xy.split_at(size);
                Ok(PublicKey::Ec { crv, x: x.to_vec(), y: y.to_vec() })
            }
            _ => Err(DerError("EC point is not uncompressed or has the wrong size")),
        }
    } else if oid == OID_ED25519 {
        let raw: [u8; 32] = key.try_into().map_err(|_| DerError("Ed25519 key is not 32 bytes"))?;
        Ok(PublicKey::Ed25519(raw))
    } else {
        Err(DerError("unsupported public key algorithm"))
    }
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let Some((0, rest)) = b.split_first() {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_oversized_lengths_are_errors() {
        assert!(Reader::new(&[0x30]).read().is_err());
        assert!(Reader::new(&[0x30, 0x05, 0x00]).read().is_err());
        assert!(Reader::new(&[0x30, 0x85, 1, 1, 1, 1, 1]).read().is_err());
        assert!(certificate_public_key(&[]).is_err());
        assert!(certificate_public_key(&[0x30, 0x00]).is_err());
    }

    #[test]
    fn reads_the_uri_sans_of_a_workload_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://cluster.local/ns/abc/sa/foo".try_into().unwrap()));
        params.subject_alt_names.push(rcgen::SanType::URI("https://example.org/x".try_into().unwrap()));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_uri_sans(cert.der()).unwrap(), ["spiffe://cluster.local/ns/abc/sa/foo", "https://example.org/x"]);
        let plain = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&key).unwrap();
        assert!(certificate_uri_sans(plain.der()).unwrap().is_empty());
        assert!(certificate_uri_sans(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
    }

    #[test]
    fn reads_ec_key_of_generated_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&key).unwrap();
        match certificate_public_key(cert.der()).unwrap() {
            PublicKey::Ec { crv, x, y } => {
                assert_eq!(crv, "P-256");
                let raw = key.public_key_raw();
                assert_eq!(raw[0], 4);
                assert_eq!(&raw[1..33], &x[..]);
                assert_eq!(&raw[33..], &y[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
