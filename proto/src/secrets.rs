//! SDS secrets: the roots a proxy trusts (the merged trust bundle, each
//! peer's root alone, the local root alone), a workload certificate, and
//! the API proxy's credential.
//!
//! Trust: a remote cluster validates the server against **that peer's root
//! only** ([`peer_root_secret_name`]), not the merged [`TRUST_BUNDLE_SECRET`]:
//! both clusters share the SPIFFE trust domain, so with the merged bundle any
//! peer's CA (or the local one) could mint the certificate that answers for
//! another peer's service. The merged bundle is for the workloads' inbound
//! side, which must accept callers from every peer. Roots are re-encoded
//! from the parsed DER, so only `CERTIFICATE` blocks reach Envoy.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, GenericSecret, Secret, TlsCertificate,
};
use multicloud_core::naming::{
    peer_root_secret_name, API_PROXY_CREDENTIAL_SECRET, LOCAL_ROOT_SECRET, PEER_ROOT_SECRET_PREFIX, TRUST_BUNDLE_SECRET,
};
use multicloud_core::pem::CertBundle;

use crate::error::{malformed, name_err, BuildError, LOCAL};
use crate::inputs::{check_peer_names, PeerView};

fn inline(s: String) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::InlineString(s)), ..Default::default() })
}

pub(crate) fn parse_root(peer: &str, field: &str, pem: &str) -> Result<CertBundle, BuildError> {
    CertBundle::from_pem(pem).map_err(|e| BuildError::Root { peer: peer.into(), field: field.into(), cause: e.to_string() })
}

/// A validation-context secret of `name` trusting `pem`.
pub fn validation_secret(name: &str, pem: String) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext { trusted_ca: inline(pem), ..Default::default() })),
    }
}

/// [`TRUST_BUNDLE_SECRET`]: the local root, then each peer's root (peers in
/// name order, duplicate certificates once).
pub fn trust_bundle_secret(local_root_pem: &str, peers: &[PeerView]) -> Result<Secret, BuildError> {
    let mut certs: Vec<Vec<u8>> = parse_root(LOCAL, "rootCA", local_root_pem)?.certs_der;
    let mut sorted: Vec<&PeerView> = peers.iter().collect();
    sorted.sort_by_key(|p| p.name);
    for p in sorted {
        check_peer_names(p)?;
        certs.extend(parse_root(p.name, "rootCA", p.root_ca_pem)?.certs_der);
    }
    let mut seen = HashSet::new();
    certs.retain(|c| seen.insert(c.clone()));
    let s = validation_secret(TRUST_BUNDLE_SECRET, CertBundle { certs_der: certs }.to_pem());
    validate_secret(&s)?;
    Ok(s)
}

/// [`peer_root_secret_name`]: only `peer`'s root.
pub fn peer_root_secret(peer: &PeerView) -> Result<Secret, BuildError> {
    check_peer_names(peer)?;
    let root = parse_root(peer.name, "rootCA", peer.root_ca_pem)?;
    let s = validation_secret(&peer_root_secret_name(peer.cluster_uuid), root.to_pem());
    validate_secret(&s)?;
    Ok(s)
}

/// [`LOCAL_ROOT_SECRET`]: the local root alone.
pub fn local_root_secret(local_root_pem: &str) -> Result<Secret, BuildError> {
    let s = validation_secret(LOCAL_ROOT_SECRET, parse_root(LOCAL, "rootCA", local_root_pem)?.to_pem());
    validate_secret(&s)?;
    Ok(s)
}

/// A validation-context secret: named, and its `trusted_ca` an inline PEM
/// bundle of certificates. The peer in errors is read from the name.
pub fn validate_secret(s: &Secret) -> Result<(), BuildError> {
    let peer = s.name.strip_prefix(PEER_ROOT_SECRET_PREFIX).unwrap_or(&s.name);
    if s.name.is_empty() {
        return Err(name_err("?", "name", "is empty"));
    }
    let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
        return Err(malformed(peer, "validation_context", "is missing"));
    };
    match vc.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineString(pem)) => parse_root(peer, "validation_context.trusted_ca", pem).map(|_| ()),
        _ => Err(malformed(peer, "validation_context.trusted_ca", "is not an inline string")),
    }
}

/// A workload certificate: `chain` and `key` (PEM) under the SDS name `name`.
pub fn tls_certificate_secret(name: &str, chain: &str, key: &str) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain.to_string()),
            private_key: inline(key.to_string()),
            ..Default::default()
        })),
    }
}

/// The SDS generic secret [`API_PROXY_CREDENTIAL_SECRET`] holding the API
/// proxy credential. Envoy marks `generic_secret.secret` sensitive:
/// config_dump shows it redacted.
pub fn api_credential_secret(credential: &str) -> Secret {
    Secret {
        name: API_PROXY_CREDENTIAL_SECRET.to_string(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret { secret: inline(credential.to_string()), ..Default::default() })),
    }
}
