//! The certificates the agent serves to its proxies itself (standalone
//! mode's `--workload-cert` and `--gateway-cert`): a pair read from its
//! files, checked to pair, and re-read when the files change.

/// A certificate chain and its private key (PEM contents; never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub chain: String,
    pub key: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").field("chain", &format_args!("{} bytes", self.chain.len())).finish_non_exhaustive()
    }
}

impl CertAndKey {
    /// Reads both files and checks that they pair ([`CertAndKey::check`]);
    /// errors name the flags (`flags`: the chain's, the key's).
    pub fn read(cert: &std::path::Path, key: &std::path::Path, flags: (&str, &str)) -> anyhow::Result<CertAndKey> {
        use anyhow::Context as _;
        let pair = CertAndKey {
            chain: std::fs::read_to_string(cert).with_context(|| format!("reading {} {}", flags.0, cert.display()))?,
            key: std::fs::read_to_string(key).with_context(|| format!("reading {} {}", flags.1, key.display()))?,
        };
        pair.check().with_context(|| format!("{} {} with {} {}", flags.0, cert.display(), flags.1, key.display()))?;
        Ok(pair)
    }

    /// The chain is PEM, leaf first, and the key is the leaf's: what Envoy
    /// would otherwise refuse (a NACK) when the pair is served, as when only
    /// one of the two files has been rewritten yet.
    pub fn check(&self) -> anyhow::Result<()> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("the certificate chain is not PEM: {e}"))?;
        anyhow::ensure!(!chain.is_empty(), "the certificate file holds no CERTIFICATE block");
        // The error names the kind of failure only: never the key's bytes.
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|_| anyhow::anyhow!("the key file holds no PEM private key"))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| anyhow::anyhow!("the private key is not the certificate's: {e}"))?;
        Ok(())
    }
}

/// A certificate the agent serves itself (standalone mode: `--workload-cert`,
/// `--gateway-cert`), re-read from its files when they change: a rotated
/// certificate (a new root's, say) reaches the proxies without a restart.
/// A pair that does not read or pair keeps the last good one in force.
pub struct ServedCert {
    files: Option<ServedCertFiles>,
    current: parking_lot::RwLock<CertAndKey>,
}

struct ServedCertFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    flags: (&'static str, &'static str),
}

impl ServedCert {
    /// A pair that never changes (tests, benchmarks).
    pub fn fixed(pair: CertAndKey) -> ServedCert {
        ServedCert { files: None, current: parking_lot::RwLock::new(pair) }
    }

    /// Reads the files now (an error at start), to be re-read by [`ServedCert::refresh`].
    pub fn load(cert: &std::path::Path, key: &std::path::Path, flags: (&'static str, &'static str)) -> anyhow::Result<ServedCert> {
        let pair = CertAndKey::read(cert, key, flags)?;
        let files = ServedCertFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), flags };
        Ok(ServedCert { files: Some(files), current: parking_lot::RwLock::new(pair) })
    }

    pub fn current(&self) -> CertAndKey {
        self.current.read().clone()
    }

    /// Re-reads the files: `Ok(true)` when a new, valid pair took over; an
    /// error (the last good pair stays) when they do not read or pair.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        let Some(f) = &self.files else { return Ok(false) };
        let pair = CertAndKey::read(&f.cert, &f.key, f.flags)?;
        if *self.current.read() == pair {
            return Ok(false);
        }
        *self.current.write() = pair;
        Ok(true)
    }

    /// The files' flag and path, for logs.
    pub fn describe(&self) -> String {
        match &self.files {
            Some(f) => format!("{} {}", f.flags.0, f.cert.display()),
            None => "a fixed certificate".into(),
        }
    }
}

impl From<(String, String)> for CertAndKey {
    /// `(chain, key)`, as the test bed's fixtures hand them out.
    fn from((chain, key): (String, String)) -> CertAndKey {
        CertAndKey { chain, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> CertAndKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["foo.example".into()]).unwrap().self_signed(&key).unwrap();
        CertAndKey { chain: cert.pem(), key: key.serialize_pem() }
    }

    #[test]
    fn a_served_certificate_follows_its_files_and_a_half_rewritten_pair_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (first, second) = (leaf(), leaf());
        std::fs::write(&cert, &first.chain).unwrap();
        std::fs::write(&key, &first.key).unwrap();
        let served = ServedCert::load(&cert, &key, ("--workload-cert", "--workload-key")).unwrap();
        assert!(!served.refresh().unwrap(), "unchanged files are no change");

        // The chain rewritten, the key not yet: refused, the first pair stays.
        std::fs::write(&cert, &second.chain).unwrap();
        let e = format!("{:#}", served.refresh().unwrap_err());
        assert!(e.contains("--workload-cert") && e.contains("not the certificate's"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "no key material in the error: {e}");
        assert!(served.current() == first);

        std::fs::write(&key, &second.key).unwrap();
        assert!(served.refresh().unwrap());
        assert!(served.current() == second);

        // A file that is not PEM at all, at start: an error naming the flag.
        std::fs::write(&key, "junk").unwrap();
        let e = format!("{:#}", ServedCert::load(&cert, &key, ("--gateway-cert", "--gateway-key")).err().unwrap());
        assert!(e.contains("--gateway-key") && e.contains("no PEM private key"), "{e}");
        assert!(served.refresh().is_err() && served.current() == second);
    }
}
