//! How a remote's TLS certificate is trusted ([`Trust`], from the spec's
//! `metadata`), and the rustls client configuration for it
//! ([`client_config`], ring provider): the pinned CA bundle alone, the
//! system roots, or, for `insecureSkipVerify`, any certificate whose key
//! signed the handshake.

use super::error::FetchError;
use multicloud_core::pem::CertBundle;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::sync::Arc;

/// How the remote's TLS certificate is trusted.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only the CA(s) in this PEM bundle.
    Pinned(String),
    /// The system's root store (rustls-native-certs).
    SystemRoots,
    /// No certificate verification (handshake signatures are still checked).
    InsecureSkipVerify,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Pinned(pem) => write!(f, "Pinned({} bytes of PEM)", pem.len()),
            Trust::SystemRoots => f.write_str("SystemRoots"),
            Trust::InsecureSkipVerify => f.write_str("InsecureSkipVerify"),
        }
    }
}

impl Trust {
    /// `spec.metadata.ca` pins (and wins over `insecureSkipVerify`), else
    /// `insecureSkipVerify` disables verification, else the system roots.
    pub fn from_spec(tls: Option<&crate::crd::MetadataTls>) -> Trust {
        match tls {
            Some(t) => match &t.ca {
                Some(ca) if !ca.trim().is_empty() => {
                    if t.insecure_skip_verify {
                        tracing::warn!("spec.metadata.ca is set: spec.metadata.insecureSkipVerify is ignored");
                    }
                    Trust::Pinned(ca.clone())
                }
                _ if t.insecure_skip_verify => Trust::InsecureSkipVerify,
                _ => Trust::SystemRoots,
            },
            None => Trust::SystemRoots,
        }
    }
}

/// The rustls client configuration for a trust choice (ring provider).
pub fn client_config(trust: &Trust, endpoint: &str) -> Result<rustls::ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::ClientBuild(e.to_string()))?;
    let mut config = match trust {
        Trust::Pinned(pem) => {
            let bundle = CertBundle::from_pem(pem).map_err(|e| FetchError::TrustInvalid(format!("spec.metadata.ca: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for der in bundle.certs_der {
                roots.add(CertificateDer::from(der)).map_err(|e| FetchError::TrustInvalid(format!("spec.metadata.ca: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "while loading the system root certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(FetchError::TrustInvalid("no system root certificates found; set spec.metadata.ca to the remote's CA".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::InsecureSkipVerify => {
            tracing::warn!(
                endpoint,
                "TLS CERTIFICATE VERIFICATION IS DISABLED for this metadata endpoint (spec.metadata.insecureSkipVerify); \
                 anyone on the path can impersonate the remote cluster. Use only in tests; set spec.metadata.ca instead."
            );
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider))).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecureSkipVerify`: accepts any certificate chain and name, but still
/// checks that the handshake is signed by the key in the presented
/// certificate (ring), so the session is at least bound to that key.
/// (The test bed plays clients that do not care who answers with it.)
#[derive(Debug)]
pub struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    /// Checks handshake signatures with `provider`'s algorithms.
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> AcceptAnyCertificate {
        AcceptAnyCertificate { algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
