//! The test bed's fixtures, one place for every test: identities of
//! simulated clusters generated fresh in each test (a cluster UUID, an
//! Istio-style self-signed root CA, a federation Ed25519 key), the CAs and
//! the certificates they issue ([`Ca`]), the documents and edge
//! configuration built from them, and the data-plane builders the test
//! bed's Envoy bootstraps are made of ([`dp`]).

use ed25519_dalek::SigningKey;
use multicloud_core::edge::{EdgeConfig, PeerKey, SpiffeSettings};
use multicloud_core::metadata::{ExportedService, IngressGateway, PrivateMetadata, PublicMetadata, ServicePort};
use multicloud_core::pem;
use multicloud_core::token::{self, Audience, Claims};
use rand_core::RngCore as _;

use crate::{hosts, SimCluster};

pub mod dp;

/// A CA generated in the test (P-256), and what it issues.
pub struct Ca {
    pub key: rcgen::KeyPair,
    pub cert: rcgen::Certificate,
}

/// A CA for the gateways' public TLS (what a cluster's ingress certificate
/// chains to; distinct from the Istio root). Pinned in `spec.metadata.ca`.
pub type EdgeCa = Ca;

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

/// An Istio-style workload certificate's parameters: the SPIFFE ID
/// `spiffe://cluster.local/ns/<ns>/sa/<sa>` as its URI SAN, for server and
/// client use.
fn workload_params(ns: &str, sa: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("uri"))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl Ca {
    /// A self-signed CA of `params` (made a CA here).
    pub fn self_signed(mut params: rcgen::CertificateParams) -> Ca {
        let key = p256();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { key, cert }
    }

    /// An edge CA ([`EdgeCa`]) named after cluster `name`.
    pub fn generate(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("edge CA of {name}"));
        Ca::self_signed(params)
    }

    /// An Istio-style root CA (`O=cluster.local`, certificate and CRL signing) of cluster `name`.
    pub fn istio_root(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "cluster.local");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("Istio root CA of {name}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        Ca::self_signed(params)
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate of `params` for a fresh P-256 key, signed by this CA:
    /// (cert PEM, key PEM).
    pub fn issue(&self, params: rcgen::CertificateParams) -> (String, String) {
        let key = p256();
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `ip` (IP SAN), as (cert PEM, key PEM).
    pub fn server_cert(&self, ip: std::net::Ipv4Addr) -> (String, String) {
        self.server_cert_dns(&ip.to_string())
    }

    /// A server certificate for a DNS name (DNS SAN), as (cert PEM, key PEM).
    pub fn server_cert_dns(&self, name: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        self.issue(params)
    }

    /// A workload certificate with an Istio-style SPIFFE ID
    /// (`spiffe://cluster.local/ns/<ns>/sa/<sa>`).
    pub fn workload_cert(&self, ns: &str, sa: &str) -> (String, String) {
        self.issue(workload_params(ns, sa))
    }

    /// A workload certificate like [`Ca::workload_cert`] that also demands
    /// OCSP stapling (the TLS feature extension, RFC 7633, `status_request`).
    /// It pairs with its key, so the agent takes it; Envoy refuses a
    /// must-staple certificate served without an OCSP response, so a proxy
    /// given it NACKs the secret.
    pub fn workload_cert_must_staple(&self, ns: &str, sa: &str) -> (String, String) {
        let mut params = workload_params(ns, sa);
        // id-pe-tlsfeature; SEQUENCE { INTEGER 5 (status_request) }
        params.custom_extensions =
            vec![rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 24], vec![0x30, 0x03, 0x02, 0x01, 0x05])];
        self.issue(params)
    }

    /// An intermediate CA signed by this one, as Istio's plug-in CA
    /// procedure has istiod sign with (`cacerts`' `ca-cert.pem`).
    pub fn intermediate(&self, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "cluster.local");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let key = p256();
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign intermediate");
        Ca { key, cert }
    }

    /// The PEM of this CA's private key (`cacerts`' `ca-key.pem`).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A client certificate that names no workload (a DNS SAN, no SPIFFE URI).
    pub fn anonymous_client_cert(&self, dns: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

pub struct ClusterIdentity {
    pub name: String,
    pub uuid: String,
    /// The cluster's Istio root CA.
    pub root: Ca,
    pub federation_key: SigningKey,
}

pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

impl ClusterIdentity {
    pub fn generate(name: &str) -> ClusterIdentity {
        ClusterIdentity {
            name: name.into(),
            uuid: random_uuid(),
            root: Ca::istio_root(name),
            federation_key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// The TLS an in-process `XdsServer` of this cluster serves with, as the
    /// agent does: a self-signed serving certificate, client certificates
    /// required to chain to this cluster's root.
    pub fn xds_tls(&self) -> std::sync::Arc<multicloud_agent::xds::tls::XdsTls> {
        let serving = multicloud_agent::xds::tls::ServingCert::self_signed().expect("serving cert");
        let tls = multicloud_agent::xds::tls::XdsTls::new(serving).expect("serving cert and key");
        tls.set_client_roots(&self.root_pem()).expect("client roots");
        std::sync::Arc::new(tls)
    }

    /// A workload certificate with an Istio-style SPIFFE ID
    /// (`spiffe://cluster.local/ns/<ns>/sa/<sa>`), signed by this cluster's root.
    pub fn workload_cert(&self, ns: &str, sa: &str) -> (String, String) {
        self.root.workload_cert(ns, sa)
    }

    /// [`Ca::workload_cert_must_staple`] of this cluster's root.
    pub fn workload_cert_must_staple(&self, ns: &str, sa: &str) -> (String, String) {
        self.root.workload_cert_must_staple(ns, sa)
    }

    pub fn public_metadata(&self) -> PublicMetadata {
        PublicMetadata {
            cluster_uuid: self.uuid.clone(),
            root_ca: self.root_pem(),
            authn_key_pub: pem::ed25519_public_key_to_pem(&self.federation_key.verifying_key()),
            additional_authn_keys_pub: Vec::new(),
        }
    }

    pub fn peer_key(&self) -> PeerKey {
        PeerKey {
            cluster_uuid: self.uuid.clone(),
            authn_key_pub: pem::ed25519_public_key_to_pem(&self.federation_key.verifying_key()),
            max_api_token_lifetime_seconds: None,
            additional_authn_keys_pub: Vec::new(),
        }
    }

    pub fn federation_key_pem(&self) -> String {
        pem::ed25519_signing_key_to_pem(&self.federation_key)
    }

    /// A token from this cluster to `aud`, with explicit claims.
    pub fn token_with(&self, aud: &str, scope: &str, nbf: i64, exp: i64) -> String {
        token::sign(
            &self.federation_key,
            &Claims {
                iss: "istio-multicloud".into(),
                sub: self.uuid.clone(),
                aud: Audience::One(aud.into()),
                scope: scope.into(),
                nbf,
                exp,
            },
        )
    }

    /// A valid 60 s token from this cluster to `aud`.
    pub fn token_for(&self, aud: &ClusterIdentity, scope: &str) -> String {
        let now = unix_now();
        self.token_with(&aud.uuid, scope, now, now + 60)
    }
}

/// A plausible private document for `cluster`.
pub fn sample_private(cluster: SimCluster) -> PrivateMetadata {
    PrivateMetadata {
        ingress_gateways: vec![IngressGateway { address: cluster.ip(hosts::GATEWAY).to_string(), port: 15443 }],
        api_host: format!("api.cluster-{}.example:443", cluster.0),
        network_name: format!("network-{}", cluster.0),
        services: vec![ExportedService {
            hostname: "foo.abc.svc.cluster.local".into(),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) }],
            ready_endpoints: 2,
        }],
        mesh_mode: None,
    }
}

/// `local`'s edge configuration, federating with `peers`.
pub fn edge_config(local: &ClusterIdentity, peers: &[&ClusterIdentity], private: PrivateMetadata) -> EdgeConfig {
    EdgeConfig {
        public: local.public_metadata(),
        private,
        peers: peers.iter().map(|p| p.peer_key()).collect(),
        spiffe: SpiffeSettings::default(),
        max_token_lifetime_seconds: 600,
        public_max_age_seconds: 60,
        api: multicloud_core::edge::ApiSettings::default(),
        mesh: Default::default(),
    }
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range
/// (32768-60999 by default), so no socket bound to port 0 and no outgoing
/// connection takes one, and below the NodePort range (30000-32767).
const CLAIMED_PORTS: std::ops::Range<u16> = 20000..30000;

/// A port for `ip`, free on every address now and claimed for this process,
/// for what is chosen before it is bound (a gateway that peers point at, a
/// listener istiod binds on every address later).
///
/// A port asked of the kernel (bind to port 0) is free only until it is let
/// go: another test process running beside this one may be given the same
/// number for another address, and a listener that binds it on every address
/// a moment later fails with `Address already in use` (CI saw it once). So
/// the port comes from a range the kernel never hands out, and the choice is
/// recorded as `$TMPDIR/multicloud-ports/PORT` holding the claiming process's
/// PID; a claim whose process is gone is taken over. `ip` is kept for the
/// callers' sake: the port is free on all addresses, including `ip`.
pub fn free_port(ip: std::net::Ipv4Addr) -> u16 {
    let _ = ip;
    let dir = std::env::temp_dir().join("multicloud-ports");
    std::fs::create_dir_all(&dir).expect("mkdir multicloud-ports");
    let span = u32::from(CLAIMED_PORTS.end - CLAIMED_PORTS.start);
    let start = rand_core::OsRng.next_u32() % span;
    for i in 0..span {
        let port = CLAIMED_PORTS.start + ((start + i) % span) as u16;
        if claim_port(&dir, port) && std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port left in {CLAIMED_PORTS:?} (claims under {})", dir.display());
}

/// Records `port` as this process's; false when a live process holds it.
fn claim_port(dir: &std::path::Path, port: u16) -> bool {
    use std::io::Write as _;
    let path = dir.join(port.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
                match holder {
                    // Half-written by a live claimer, or held: not ours.
                    None => return false,
                    Some(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => return false,
                    // The claimer is gone: take the port over.
                    Some(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Err(e) => panic!("claim port {port} in {}: {e}", dir.display()),
        }
    }
    false
}

/// A public document's keys as JSON holds them: `authnKeyPub`, then
/// `additionalAuthnKeysPub` (empty when absent).
pub fn published_keys(doc: &serde_json::Value) -> (String, Vec<String>) {
    let current = doc["authnKeyPub"].as_str().unwrap_or_default().to_string();
    let additional = doc["additionalAuthnKeysPub"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    (current, additional)
}
