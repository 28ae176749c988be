//! The agent's own certificate from istiod's CA: the serving certificate of
//! the xDS port, for the agent's ServiceAccount's SPIFFE ID, so that the
//! gateway can verify the agent (deploy/'s EnvoyFilter validates it against
//! Istio's root, `ROOTCA`, and that SPIFFE ID) and no other server at the
//! agent's address can feed it a filter configuration.
//!
//! It asks as every Istio workload does: a CSR over gRPC
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`) on istiod's
//! secure port, authenticated by a ServiceAccount token with audience
//! `istio-ca` (deploy/ projects one into the pod), TLS verified against
//! this cluster's Istio root. The key never leaves the process.

use crate::xds::tls::{ServingCert, XdsTls};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the agent needs to ask istiod for its certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioCaConfig {
    /// istiod's secure gRPC address (`host:port`, Istio's 15012).
    pub address: String,
    /// This cluster's Istio root (PEM), to verify istiod.
    pub root_file: PathBuf,
    /// A ServiceAccount token with audience `istio-ca` (re-read each time).
    pub token_file: PathBuf,
    /// The cluster ID istiod knows this cluster by (its `--clusterID`).
    pub cluster_id: String,
    /// How long the certificate should live; renewed at half of it.
    #[serde(serialize_with = "humantime_duration")]
    pub lifetime: Duration,
}

fn humantime_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum IstioCaError {
    #[error("{what}: {cause}")]
    Read { what: String, cause: String },
    #[error("cannot generate the key or the CSR: {0}")]
    Csr(String),
    #[error("cannot reach istiod's CA at {address}: {cause} (check --istio-ca-address and that istiod runs)")]
    Connect { address: String, cause: String },
    #[error("istiod's CA at {address} refused the CSR: {cause} (the token in --istio-ca-token must be the agent's ServiceAccount's, audience istio-ca)")]
    Refused { address: String, cause: String },
    #[error("istiod's CA answered no usable certificate chain: {0}")]
    BadChain(String),
}

/// `IstioCertificateRequest` (istio.io/api security/v1alpha1/ca.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct IstioCertificateRequest {
    #[prost(string, tag = "1")]
    csr: String,
    #[prost(int64, tag = "3")]
    validity_duration: i64,
}

/// `IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    cert_chain: Vec<String>,
}

const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

fn read(what: &str, p: &std::path::Path) -> Result<String, IstioCaError> {
    std::fs::read_to_string(p).map_err(|e| IstioCaError::Read { what: format!("{what} {}", p.display()), cause: e.to_string() })
}

impl IstioCaConfig {
    /// One certificate: a fresh P-256 key, its CSR, istiod's signed chain.
    pub async fn fetch(&self) -> Result<ServingCert, IstioCaError> {
        let root = read("--istio-ca-root", &self.root_file)?;
        let token = read("--istio-ca-token", &self.token_file)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| IstioCaError::Csr(e.to_string()))?;
        // istiod puts the caller's identity (from the token) into the
        // certificate, whatever the CSR asks for; the CSR carries the key.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| IstioCaError::Csr(e.to_string()))?;
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "istio-multicloud agent");
        let csr = params
            .serialize_request(&key)
            .map_err(|e| IstioCaError::Csr(e.to_string()))?
            .pem()
            .map_err(|e| IstioCaError::Csr(e.to_string()))?;

        let (host, _) = self.address.rsplit_once(':').unwrap_or((self.address.as_str(), ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let connect = |cause: String| IstioCaError::Connect { address: self.address.clone(), cause };
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(root.as_bytes()))
            .domain_name(host);
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.address))
            .map_err(|e| connect(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .tls_config(tls)
            .map_err(|e| connect(e.to_string()))?
            .connect()
            .await
            .map_err(|e| connect(format!("{e:?}")))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| connect(e.to_string()))?;
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX),
        });
        let bearer = format!("Bearer {}", token.trim()).parse().map_err(|_| IstioCaError::Read {
            what: format!("--istio-ca-token {}", self.token_file.display()),
            cause: "not a token (characters a header cannot carry)".into(),
        })?;
        req.metadata_mut().insert("authorization", bearer);
        if let Ok(id) = self.cluster_id.parse() {
            req.metadata_mut().insert("clusterid", id);
        }
        let codec: tonic_prost::ProstCodec<IstioCertificateRequest, IstioCertificateResponse> = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
        let resp = grpc
            .unary(req, path, codec)
            .await
            .map_err(|s| IstioCaError::Refused { address: self.address.clone(), cause: format!("{:?}: {}", s.code(), s.message()) })?
            .into_inner();
        let mut chain: Vec<CertificateDer<'static>> = Vec::new();
        for pem in &resp.cert_chain {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(c.map_err(|e| IstioCaError::BadChain(e.to_string()))?);
            }
        }
        if chain.is_empty() {
            return Err(IstioCaError::BadChain("an empty chain".into()));
        }
        Ok(ServingCert { chain, key: PrivateKeyDer::Pkcs8(key.serialize_der().into()) })
    }

    /// Keeps `tls`'s serving certificate an istiod-signed one: fetched now,
    /// renewed at half its lifetime, retried every 10 s while it fails (the
    /// self-signed one, or the last good one, serves meanwhile; the gateway
    /// refuses a self-signed one, so it fails closed).
    pub fn spawn_renewal(self, tls: Arc<XdsTls>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let next = match self.fetch().await {
                    Ok(cert) => match tls.set_serving(cert) {
                        Ok(()) => {
                            tracing::info!(istiod = %self.address, "the xDS port serves an istiod-signed certificate for the agent's identity");
                            self.lifetime / 2
                        }
                        Err(e) => {
                            tracing::error!("istiod's certificate cannot serve: {e}");
                            Duration::from_secs(10)
                        }
                    },
                    Err(e) => {
                        tracing::warn!("cannot get the agent's certificate from istiod, retrying in 10 s: {e}");
                        Duration::from_secs(10)
                    }
                };
                tokio::time::sleep(next).await;
            }
        })
    }
}
