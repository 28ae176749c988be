//! `check`'s two network probes: the peer's API proxy ([`api_step`]: `GET
//! /version` with a `scope: api` token over reqwest, trusting
//! `spec.metadata.ca`) and a gateway's mesh port ([`mesh_step`]: a TLS
//! handshake with the SNI a caller would send, trusting only the peer's
//! Istio root, checking the chain but not the name: [`ChainOnly`]). TLS
//! outcomes are told apart by rustls' typed errors.

use super::report::{error_chain, Step};
use crate::crd::IstioMulticloudSpec;
use crate::exchange::Trust;
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn api_step(api_host: &str, spec: &IstioMulticloudSpec, token: &str, overrides: &[String]) -> Step {
    let name = "api";
    let url = format!("https://{api_host}/version");
    let trust = Trust::from_spec(spec.metadata.as_ref());
    let tls = match crate::exchange::client_config(&trust, api_host) {
        Ok(c) => c,
        Err(e) => return Step::fail(name, e.reason().as_str(), e.to_string(), "fix spec.metadata.ca".into()),
    };
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(8))
        .redirect(reqwest::redirect::Policy::none());
    let host_only = crate::host_port::HostPort::host_of(api_host);
    let host_only = host_only.as_str();
    for o in overrides {
        if let Some((h, addr)) = o.split_once('=') {
            if h == api_host || h == host_only {
                match addr.parse::<std::net::SocketAddr>() {
                    Ok(sa) => b = b.resolve(host_only, sa),
                    Err(e) => {
                        return Step::fail(name, "OverrideInvalid", format!("--api-host-override {o:?}: {e}"), "want HOST=IP:PORT".into())
                    }
                }
            }
        }
    }
    let client = match b.build() {
        Ok(c) => c,
        Err(e) => return Step::fail(name, "ClientBuildFailed", e.to_string(), "report a bug".into()),
    };
    match client.get(&url).bearer_auth(token).send().await {
        Ok(r) if r.status().is_success() => Step::pass(name, format!("{url} answered {}", r.status().as_u16())),
        Ok(r) => {
            let code = r.status().as_u16();
            let body: String = r.text().await.unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect();
            Step::fail(
                name,
                "HttpStatus",
                format!("{url} answered HTTP {code}: {body}"),
                "the peer's API proxy refused: check its credential and RBAC (deploy/), and that the peer federates with this cluster"
                    .into(),
            )
        }
        Err(e) => {
            let why = error_chain(&e);
            Step::fail(name, if e.is_connect() { "ConnectFailed" } else { "RequestFailed" }, format!("{url}: {why}"), "is the peer's apiHost reachable from here (DNS, firewall), and is it served by the peer's gateway with a certificate from spec.metadata.ca?".into())
        }
    }
}

pub(super) fn mesh_step(address: &str, port: u16, roots_der: &[Vec<u8>], sni: Option<&str>) -> Step {
    let name = "mesh";
    let target = format!("{address}:{port}");
    let Some(sni) = sni else {
        return Step::skip(name, format!("{target}: the peer exports no service to name in the SNI"));
    };
    let addr = match (address, port).to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            return Step::fail(
                name,
                "ResolveFailed",
                format!("cannot resolve {address}"),
                "the peer advertises a gateway address this cluster cannot resolve".into(),
            )
        }
    };
    let mut tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Step::fail(
                name,
                "MeshPortClosed",
                format!("{target}: nothing listens there ({e})"),
                "the peer's gateway does not serve its mesh port: is the gateway up, and does the peer advertise the right ingressGateways port?"
                    .into(),
            );
        }
        Err(e) => {
            return Step::fail(
                name,
                "ConnectFailed",
                format!("{target}: {e}"),
                "open the path to the peer's ingress gateway mesh port (firewall, load balancer)".into(),
            )
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let mut roots = rustls::RootCertStore::empty();
    for d in roots_der {
        let _ = roots.add(rustls::pki_types::CertificateDer::from(d.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build() {
        Ok(v) => v,
        Err(e) => {
            return Step::fail(
                name,
                "TrustInvalid",
                format!("the peer's rootCA: {e}"),
                "the peer publishes a root this cluster cannot use".into(),
            )
        }
    };
    let cfg = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(verifier))).with_no_client_auth(),
        Err(e) => return Step::fail(name, "Internal", e.to_string(), "report a bug".into()),
    };
    let server_name = match rustls::pki_types::ServerName::try_from(sni.to_string()) {
        Ok(s) => s,
        Err(e) => return Step::fail(name, "SniInvalid", format!("{sni}: {e}"), "the peer's service hostname is not a DNS name".into()),
    };
    let mut conn = match rustls::ClientConnection::new(Arc::new(cfg), server_name) {
        Ok(c) => c,
        Err(e) => return Step::fail(name, "Internal", e.to_string(), "report a bug".into()),
    };
    let mut result = Ok(());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => Step::pass(name, format!("{target}: TLS handshake with SNI {sni} completed (peer root trusted)")),
        Err(e) => {
            let msg = e.to_string();
            // The server checked our (absent) client certificate only after
            // we verified its own: the peer's root is trusted.
            let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            if matches!(tls, Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))) {
                Step::pass(name, format!("{target}: server certificate verified; the gateway wants a client certificate ({msg})"))
            } else {
                Step::fail(
                    name,
                    "TlsHandshakeFailed",
                    format!("{target} (SNI {sni}): {msg}"),
                    "the gateway's mesh port must present a certificate from the peer's Istio root (rootCA in public.json)".into(),
                )
            }
        }
    }
}

/// Verifies the chain to the peer's Istio root but not the name: Istio's
/// gateways present workload certificates (SPIFFE URI SANs), which never
/// carry the `outbound_...` SNI as a DNS name.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::report::Outcome;

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap(), key)
    }

    /// A TLS server on 127.0.0.1 that requires a client certificate, with a
    /// leaf (named `spiffe`-style, not after the SNI) from `ca`; one connection.
    fn mtls_server(ca: &(rcgen::Certificate, rcgen::KeyPair)) -> u16 {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["istio-ingressgateway.istio-system.svc".to_string()])
            .unwrap()
            .signed_by(&key, &ca.0, &ca.1)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.0.der().clone()).unwrap();
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let cfg = crate::xds::tls::server_config(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
            Some(client_verifier),
            &[],
        )
        .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut tcp, _)) = l.accept() {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        break;
                    }
                }
                let _ = conn.complete_io(&mut tcp);
            }
        });
        port
    }

    #[test]
    fn the_mesh_step_trusts_the_peer_root_and_tolerates_a_missing_client_certificate() {
        let peer_ca = ca();
        let port = mtls_server(&peer_ca);
        let s = mesh_step("127.0.0.1", port, &[peer_ca.0.der().to_vec()], Some("outbound_.80_._.foo.abc.svc.cluster.local"));
        assert_eq!(s.result, Outcome::Pass, "{s:?}");
        let other = ca();
        let port = mtls_server(&peer_ca);
        let s = mesh_step("127.0.0.1", port, &[other.0.der().to_vec()], Some("outbound_.80_._.foo.abc.svc.cluster.local"));
        assert_eq!(s.result, Outcome::Fail, "{s:?}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let closed = mesh_step("127.0.0.1", port, &[], Some("outbound_.80_._.x"));
        assert_eq!((closed.result, closed.reason.as_deref()), (Outcome::Fail, Some("MeshPortClosed")), "{closed:?}");
    }
}
