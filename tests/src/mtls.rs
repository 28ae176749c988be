//! A TLS client that can be anybody: any SNI, any client certificate (or
//! none), one HTTP/1.1 request. Tests use it to play a peer's workload, a
//! rogue CA or an impersonator against a gateway's mesh port or a
//! sidecar's inbound port, and to see exactly where they are refused.
//!
//! Without `server_ca` it does not check the server's certificate: the
//! attacker does not care who answers, and what is under test is whether
//! the *server* lets the client in. With it, the server must present a
//! certificate for `sni` from that CA.

use multicloud_agent::exchange::trust::AcceptAnyCertificate;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// What came back.
#[derive(Debug)]
pub enum Outcome {
    /// The handshake or the connection failed before any HTTP response.
    Refused(String),
    /// An HTTP response: status and body.
    Http(u16, String),
}

impl Outcome {
    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Http(s, _) => Some(*s),
            Outcome::Refused(_) => None,
        }
    }
    pub fn body(&self) -> &str {
        match self {
            Outcome::Http(_, b) => b,
            Outcome::Refused(e) => e,
        }
    }
}

/// One request over TLS to `addr` with `sni`, presenting `client` (chain
/// PEM, key PEM) if given: `GET path` with `Host: host` and `headers`.
pub fn get(addr: SocketAddr, sni: &str, client: Option<&(String, String)>, host: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
    get_from(addr, sni, None, client, host, path, headers)
}

/// [`get`], and the server must prove itself with a certificate for `sni`
/// from `server_ca` (PEM) when given.
pub fn get_from(
    addr: SocketAddr,
    sni: &str,
    server_ca: Option<&str>,
    client: Option<&(String, String)>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    get_alpn(addr, sni, server_ca, client, &[], host, path, headers)
}

/// [`get_from`] offering `alpn` protocols (Istio's sidecars match their mTLS
/// filter chains on ALPN `istio`, as Istio's clients offer it).
#[allow(clippy::too_many_arguments)]
pub fn get_alpn(
    addr: SocketAddr,
    sni: &str,
    server_ca: Option<&str>,
    client: Option<&(String, String)>,
    alpn: &[&str],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("protocol versions");
    let builder = match server_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.expect("server CA PEM")).expect("server CA");
            }
            versions.with_root_certificates(roots)
        }
        None => versions.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider))),
    };
    let mut config = match client {
        Some((chain, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>().expect("client chain PEM");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM");
            builder.with_client_auth_cert(certs, key).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = match ServerName::try_from(sni.to_string()) {
        Ok(n) => n,
        Err(e) => return Outcome::Refused(format!("bad SNI {sni:?}: {e}")),
    };
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(format!("connect: {e}")),
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if let Err(e) = tls.write_all(req.as_bytes()) {
        return Outcome::Refused(format!("handshake/write: {e}"));
    }
    let mut buf = Vec::new();
    let read = tls.read_to_end(&mut buf);
    if buf.is_empty() {
        return Outcome::Refused(match read {
            Err(e) => format!("read: {e}"),
            Ok(_) => "closed without a response".into(),
        });
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Outcome::Http(status, body)
}
