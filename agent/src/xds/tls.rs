//! The xDS port's mutual TLS. A client must present a certificate that
//! chains to this cluster's Istio root (the local facts' `rootCA`, replaced
//! whenever the facts change, by `crate::sinks::client_roots`); its SPIFFE ID (the
//! leaf's `spiffe://` URI SAN) travels with the connection
//! ([`XdsPeer`], in each gRPC request's extensions) so that the xDS server
//! decides what the client may receive (`crate::xds::server::AccessPolicy`).
//!
//! The agent's own serving certificate comes from `--xds-cert/--xds-key` or
//! is generated (self-signed) at start: proxies authenticate themselves to
//! the agent, not the other way round (see docs/xds.md for what that means).

use crate::reasons::RefusalReason;
use parking_lot::RwLock;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client that has not finished its handshake by then is dropped, so a
/// stalled connection holds nothing for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of an xDS connection, as the TLS handshake
/// proved it. Present in every request's extensions on the TLS port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsPeer {
    pub remote: SocketAddr,
    /// The leaf certificate's first `spiffe://` URI SAN.
    pub spiffe: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsTlsError {
    #[error("{what}: {cause}")]
    Read { what: String, cause: String },
    #[error("this cluster's root CA (local facts' rootCA) holds no certificate the xDS port can trust: {0}")]
    Roots(String),
    #[error("cannot set up the xDS port's TLS: {0}")]
    Config(String),
}

/// The agent's serving certificate chain and key (DER).
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServingCert {
    /// Reads `--xds-cert` (PEM chain, leaf first) and `--xds-key` (PEM private key).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServingCert, XdsTlsError> {
        let read = |p: &Path, flag: &str| {
            std::fs::read(p).map_err(|e| XdsTlsError::Read {
                what: format!("{flag} {}", p.display()),
                cause: format!("{e} (point it at a readable PEM file, or omit --xds-cert/--xds-key for a self-signed certificate)"),
            })
        };
        let cert_pem = read(cert, "--xds-cert")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| XdsTlsError::Read { what: format!("--xds-cert {}", cert.display()), cause: format!("not PEM: {e}") })?;
        if chain.is_empty() {
            return Err(XdsTlsError::Read {
                what: format!("--xds-cert {}", cert.display()),
                cause: "holds no CERTIFICATE block (want the PEM chain, leaf first)".into(),
            });
        }
        let key_pem = read(key, "--xds-key")?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| XdsTlsError::Read {
            what: format!("--xds-key {}", key.display()),
            cause: match e {
                pem::Error::NoItemsFound => "holds no private key block (PKCS#8, PKCS#1 or SEC1 PEM)".into(),
                e => format!("not PEM: {e}"),
            },
        })?;
        Ok(ServingCert { chain, key: key_der })
    }

    /// A fresh self-signed certificate (P-256) for the agent's xDS Service
    /// names; nothing is written to disk. Clients in `deploy/` do not verify
    /// the agent, so its only job is to make TLS possible.
    pub fn self_signed() -> Result<ServingCert, XdsTlsError> {
        let err = |e: rcgen::Error| XdsTlsError::Config(format!("generating a self-signed serving certificate: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let names = ["multicloud-agent-xds", "multicloud-agent-xds.istio-system.svc", "localhost"].map(String::from).to_vec();
        let mut params = rcgen::CertificateParams::new(names).map_err(err)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "multicloud-agent xDS (self-signed)");
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(ServingCert { chain: vec![cert.der().clone()], key: PrivateKeyDer::Pkcs8(key.serialize_der().into()) })
    }
}

/// A server configuration on ring with rustls' safe protocol versions:
/// serving `chain` and `key`, asking for a client certificate that
/// `client_verifier` accepts when there is one, offering `alpn`. The one
/// place the agent (and its tests' TLS servers) build one.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The xDS port's TLS settings: the serving certificate (fixed) and the
/// client roots (replaced when this cluster's root changes). A handshake
/// uses the configuration current when it starts.
pub struct XdsTls {
    /// Replaced when an istiod-signed certificate arrives or is renewed
    /// (`crate::istio_ca`).
    serving: RwLock<ServingCert>,
    /// The root bundle (PEM as the facts hold it) and the config built from it.
    current: RwLock<Option<(String, Arc<rustls::ServerConfig>)>>,
}

impl XdsTls {
    /// Checks the serving certificate and key now (they must match and be a
    /// kind rustls signs with), so a bad `--xds-cert/--xds-key` stops the
    /// agent at start rather than at the first handshake.
    pub fn new(serving: ServingCert) -> Result<XdsTls, XdsTlsError> {
        server_config(serving.chain.clone(), serving.key.clone_key(), None, &[]).map_err(|e| {
            XdsTlsError::Config(format!(
                "--xds-cert and --xds-key do not match or are not supported ({e}); give the key of the chain's first certificate"
            ))
        })?;
        Ok(XdsTls { serving: RwLock::new(serving), current: RwLock::new(None) })
    }

    /// Serves `cert` from the next handshake on (checked first: on error the
    /// one in force stays).
    pub fn set_serving(&self, cert: ServingCert) -> Result<(), XdsTlsError> {
        XdsTls::new(ServingCert { chain: cert.chain.clone(), key: cert.key.clone_key() })?;
        *self.serving.write() = cert;
        let roots = self.current.read().as_ref().map(|(p, _)| p.clone());
        if let Some(roots) = roots {
            // The same roots with the new certificate, swapped in whole.
            let config = self.build(&roots)?;
            *self.current.write() = Some((roots, config));
        }
        Ok(())
    }

    /// Trusts the certificates of `roots_pem` (every one: during an Istio
    /// root rotation the bundle holds the old and the new root) as client
    /// roots from now on; true if they changed. On error the previous roots
    /// stay in force.
    pub fn set_client_roots(&self, roots_pem: &str) -> Result<bool, XdsTlsError> {
        if self.current.read().as_ref().is_some_and(|(p, _)| p == roots_pem) {
            return Ok(false);
        }
        let config = self.build(roots_pem)?;
        *self.current.write() = Some((roots_pem.to_string(), config));
        Ok(true)
    }

    /// The server configuration: client roots `roots_pem`, the serving certificate in force.
    fn build(&self, roots_pem: &str) -> Result<Arc<rustls::ServerConfig>, XdsTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            let c = c.map_err(|e| XdsTlsError::Roots(format!("not PEM: {e}")))?;
            roots.add(c).map_err(|e| XdsTlsError::Roots(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(XdsTlsError::Roots("no CERTIFICATE block".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let serving = self.serving.read();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| XdsTlsError::Roots(e.to_string()))?;
        // gRPC is HTTP/2 only.
        let config = server_config(serving.chain.clone(), serving.key.clone_key(), Some(verifier), &[b"h2"])
            .map_err(|e| XdsTlsError::Config(format!("the serving certificate and key do not match or are not supported: {e}")))?;
        Ok(Arc::new(config))
    }

    fn config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.read().as_ref().map(|(_, c)| c.clone())
    }

    /// Runs the server side of the handshake on `tcp`; on success, the
    /// connection and the identity it proved.
    pub async fn accept(&self, tcp: tokio::net::TcpStream, remote: SocketAddr) -> Result<TlsConn, (RefusalReason, String)> {
        let Some(config) = self.config() else {
            return Err((RefusalReason::NoLocalRoot, "this cluster's root CA is not known yet (local facts not read)".into()));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Err(_) => return Err((RefusalReason::HandshakeTimeout, format!("no complete handshake within {HANDSHAKE_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(classify_handshake_error(&e)),
            Ok(Ok(s)) => s,
        };
        let spiffe = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| multicloud_core::der::certificate_uri_sans(leaf).ok())
            .and_then(|uris| uris.into_iter().find(|u| u.starts_with("spiffe://")).map(str::to_string));
        Ok(TlsConn { stream, peer: XdsPeer { remote, spiffe } })
    }
}

fn classify_handshake_error(e: &std::io::Error) -> (RefusalReason, String) {
    let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => RefusalReason::NoClientCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => RefusalReason::UntrustedCertificate,
        _ => RefusalReason::HandshakeFailed,
    };
    (reason, e.to_string())
}

/// An accepted TLS connection and who it proved to be; tonic hands
/// [`XdsPeer`] to each request on it.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: XdsPeer,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = XdsPeer;

    fn connect_info(&self) -> XdsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["xds.example".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn serving_files_are_read_and_bad_ones_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let ((c1, k1), (_, k2)) = (pem_pair(), pem_pair());
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key, other_key) = (write("c.pem", &c1), write("k.pem", &k1), write("k2.pem", &k2));
        assert!(XdsTls::new(ServingCert::from_files(&cert, &key).unwrap()).is_ok());
        let mismatched = XdsTls::new(ServingCert::from_files(&cert, &other_key).unwrap()).err().unwrap().to_string();
        assert!(mismatched.contains("--xds-cert and --xds-key do not match"), "{mismatched}");
        let missing = ServingCert::from_files(&dir.path().join("absent.pem"), &key).err().unwrap().to_string();
        assert!(missing.contains("--xds-cert") && missing.contains("absent.pem"), "{missing}");
        let no_key = ServingCert::from_files(&cert, &cert).err().unwrap().to_string();
        assert!(no_key.contains("--xds-key") && no_key.contains("no private key"), "{no_key}");
    }

    #[test]
    fn client_roots_change_only_on_a_valid_bundle() {
        let tls = XdsTls::new(ServingCert::self_signed().unwrap()).unwrap();
        assert!(tls.config().is_none(), "no roots: no handshake can succeed");
        let (root, _) = pem_pair();
        assert!(tls.set_client_roots(&root).unwrap());
        assert!(!tls.set_client_roots(&root).unwrap(), "the same bundle is no change");
        assert!(tls.set_client_roots("not a certificate").is_err());
        assert!(tls.config().is_some(), "a bad bundle keeps the previous roots");
    }
}
