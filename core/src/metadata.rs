//! The metadata documents a cluster publishes at its edge, field for field as
//! Deckhouse's `istio` module names them (unknown fields are ignored by both
//! sides, so `services` rides along in the private document), and the
//! validation every document passes before anyone relies on it.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::pem::{self, CertBundle};

/// `GET /metadata/public/public.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PublicMetadata {
    #[serde(rename = "clusterUUID")]
    pub cluster_uuid: String,
    /// PEM bundle of this cluster's Istio root CA(s).
    #[serde(rename = "rootCA")]
    pub root_ca: String,
    /// PEM (SPKI) of this cluster's Ed25519 federation public key: the key
    /// its tokens are signed with (the only one Deckhouse peers read).
    #[serde(rename = "authnKeyPub")]
    pub authn_key_pub: String,
    /// PEM (SPKI) of at most [`MAX_ADDITIONAL_KEYS`] further keys whose
    /// tokens peers accept too, during a key rotation: the staged next key
    /// before the switch, the retired one after it, until its tokens have
    /// expired. Absent outside a rotation (and ignored by Deckhouse).
    #[serde(rename = "additionalAuthnKeysPub", default, skip_serializing_if = "Vec::is_empty")]
    pub additional_authn_keys_pub: Vec<String>,
}

/// How many keys a cluster may publish beside `authnKeyPub` (the next and
/// the previous one of a rotation).
pub const MAX_ADDITIONAL_KEYS: usize = 2;

/// `GET /metadata/private/multicluster.json` (bearer token required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PrivateMetadata {
    pub ingress_gateways: Vec<IngressGateway>,
    /// Host (and optional port) of the API proxy route, without scheme.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_host: String,
    pub network_name: String,
    #[serde(default)]
    pub services: Vec<ExportedService>,
    /// How this cluster's gateway treats mesh traffic on `ingressGateways`
    /// ([`MeshMode`] by name; read it with [`PrivateMetadata::mesh_mode`]);
    /// absent (Deckhouse, older agents) means [`MeshMode::Passthrough`]. A
    /// string here, not the enum: the Wasm filter parses private documents
    /// in its configuration, and an enum field costs it about 1 KB it does
    /// not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_mode: Option<String>,
}

/// What a cluster's gateway does with mesh traffic from peers, and so what
/// a caller must send it (see `docs/traffic.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum MeshMode {
    /// Istio's `AUTO_PASSTHROUGH`: routed by SNI `outbound_.<port>_._.<host>`,
    /// mTLS end to end between the sidecars.
    #[default]
    Passthrough,
    /// The gateway terminates the peer's mTLS, validates the client against
    /// that peer's root only (chain chosen by SNI `<caller uuid>.peer.multicloud`),
    /// allows only exported services and tells the application who called.
    IdentityEnforcing,
}

impl MeshMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MeshMode::Passthrough => "Passthrough",
            MeshMode::IdentityEnforcing => "IdentityEnforcing",
        }
    }
}

// By hand, through `&str`: the derived enum code costs the Wasm filter
// (which parses private documents in its configuration) about 3 KB.
impl Serialize for MeshMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MeshMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "Passthrough" => Ok(MeshMode::Passthrough),
            "IdentityEnforcing" => Ok(MeshMode::IdentityEnforcing),
            _ => Err(serde::de::Error::custom("meshMode: want Passthrough or IdentityEnforcing")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressGateway {
    pub address: String,
    pub port: u16,
}

/// A Service this cluster exports to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    /// `name.namespace.svc.<cluster domain>`.
    pub hostname: String,
    pub ports: Vec<ServicePort>,
    /// Ready endpoints behind the service here; peers weigh this cluster by it.
    #[serde(default)]
    pub ready_endpoints: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A document field that failed validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: String,
    pub why: String,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

impl std::error::Error for InvalidField {}

fn invalid(field: impl Into<String>, why: impl fmt::Display) -> InvalidField {
    InvalidField { field: field.into(), why: why.to_string() }
}

/// A canonical UUID: 8-4-4-4-12 hex digits (any case, as Kubernetes writes
/// lower case). Deckhouse publishes the kube-system namespace UID.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A host a peer can dial: an IP literal or a DNS name (RFC 1123 labels).
pub fn is_host(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// A host with an optional `:port`.
fn is_host_port(s: &str) -> bool {
    if is_host(s) {
        return true;
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return sa.port() != 0;
    }
    match s.rsplit_once(':') {
        Some((h, p)) => is_host(h) && p.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// The parts of a public document that others act on, parsed.
#[derive(Debug, Clone)]
pub struct ValidPublic {
    pub doc: PublicMetadata,
    pub root: CertBundle,
    /// `authnKeyPub`, the signing key.
    pub key: ed25519_dalek::VerifyingKey,
    /// `additionalAuthnKeysPub`, in order.
    pub additional_keys: Vec<ed25519_dalek::VerifyingKey>,
}

impl PublicMetadata {
    pub fn validate(&self) -> Result<ValidPublic, InvalidField> {
        if !is_uuid(&self.cluster_uuid) {
            return Err(invalid("clusterUUID", "is not a UUID"));
        }
        let root = CertBundle::from_pem(&self.root_ca).map_err(|e| invalid("rootCA", e))?;
        let key = pem::ed25519_public_key_from_pem(&self.authn_key_pub).map_err(|e| invalid("authnKeyPub", e))?;
        let additional_keys =
            additional_keys(&self.authn_key_pub, &self.additional_authn_keys_pub).map_err(|e| invalid("additionalAuthnKeysPub", e))?;
        Ok(ValidPublic { doc: self.clone(), root, key, additional_keys })
    }
}

/// Parses the keys published beside `current`: at most
/// [`MAX_ADDITIONAL_KEYS`], each an Ed25519 SPKI PEM, none repeated.
pub fn additional_keys(current: &str, pems: &[String]) -> Result<Vec<ed25519_dalek::VerifyingKey>, &'static str> {
    if pems.len() > MAX_ADDITIONAL_KEYS {
        return Err("more than 2 keys");
    }
    let mut keys = Vec::with_capacity(pems.len() + 1);
    keys.push(pem::ed25519_public_key_from_pem(current).map_err(|_| "authnKeyPub is not an Ed25519 public key")?);
    for p in pems {
        let k = pem::ed25519_public_key_from_pem(p).map_err(|_| "an entry is not an Ed25519 public key (SPKI PEM)")?;
        if keys.contains(&k) {
            return Err("repeats a key");
        }
        keys.push(k);
    }
    keys.remove(0);
    Ok(keys)
}

/// Upper bounds that keep a hostile document from growing without limit.
pub const MAX_GATEWAYS: usize = 64;
pub const MAX_SERVICES: usize = 10_000;
pub const MAX_PORTS_PER_SERVICE: usize = 64;

impl PrivateMetadata {
    /// The gateway's mode; an unknown name is an error naming the field.
    pub fn mesh_mode(&self) -> Result<MeshMode, InvalidField> {
        match self.mesh_mode.as_deref() {
            None | Some("Passthrough") => Ok(MeshMode::Passthrough),
            Some("IdentityEnforcing") => Ok(MeshMode::IdentityEnforcing),
            Some(_) => Err(invalid("meshMode", "must be Passthrough or IdentityEnforcing")),
        }
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.ingress_gateways.len() > MAX_GATEWAYS {
            return Err(invalid("ingressGateways", format!("more than {MAX_GATEWAYS} entries")));
        }
        for (i, g) in self.ingress_gateways.iter().enumerate() {
            if !is_host(&g.address) {
                return Err(invalid(format!("ingressGateways[{i}].address"), "is not an IP address or DNS name"));
            }
            if g.port == 0 {
                return Err(invalid(format!("ingressGateways[{i}].port"), "must be 1-65535"));
            }
        }
        if !self.api_host.is_empty() && !is_host_port(&self.api_host) {
            return Err(invalid("apiHost", "is not a host[:port]"));
        }
        if self.network_name.is_empty()
            || self.network_name.len() > 253
            || !self.network_name.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
        {
            return Err(invalid("networkName", "must be 1-253 characters of [A-Za-z0-9-._]"));
        }
        self.mesh_mode()?;
        if self.services.len() > MAX_SERVICES {
            return Err(invalid("services", format!("more than {MAX_SERVICES} entries")));
        }
        for (i, s) in self.services.iter().enumerate() {
            if !is_host(&s.hostname) || s.hostname.parse::<std::net::IpAddr>().is_ok() {
                return Err(invalid(format!("services[{i}].hostname"), "is not a DNS name"));
            }
            if s.ports.is_empty() || s.ports.len() > MAX_PORTS_PER_SERVICE {
                return Err(invalid(format!("services[{i}].ports"), format!("must have 1-{MAX_PORTS_PER_SERVICE} ports")));
            }
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 {
                    return Err(invalid(format!("services[{i}].ports[{j}].port"), "must be 1-65535"));
                }
            }
        }
        Ok(())
    }
}

/// Cluster B's private document in core's tests and the fuzz crate's seeds:
/// one gateway, `foo.abc:80` exported.
#[cfg(any(test, feature = "fixtures"))]
pub fn sample_private() -> PrivateMetadata {
    PrivateMetadata {
        ingress_gateways: vec![IngressGateway { address: "127.0.2.1".into(), port: 15443 }],
        api_host: "api.b.example:443".into(),
        network_name: "network-b".into(),
        services: vec![ExportedService {
            hostname: "foo.abc.svc.cluster.local".into(),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: None }],
            ready_endpoints: 2,
        }],
        mesh_mode: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_mode_absent_is_passthrough_and_unknown_is_refused() {
        let doc = |m: Option<&str>| PrivateMetadata {
            ingress_gateways: vec![],
            api_host: String::new(),
            network_name: "n".into(),
            services: vec![],
            mesh_mode: m.map(String::from),
        };
        assert_eq!(doc(None).mesh_mode(), Ok(MeshMode::Passthrough));
        assert_eq!(doc(Some("IdentityEnforcing")).mesh_mode(), Ok(MeshMode::IdentityEnforcing));
        let err = doc(Some("Open")).validate().unwrap_err();
        assert_eq!(err.field, "meshMode", "{err}");
    }

    #[test]
    fn uuids_hosts_and_host_ports_are_told_from_what_is_not() {
        assert!(is_uuid("6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0001"));
        assert!(!is_uuid("6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000"));
        assert!(!is_uuid("6f9c1c1e+3b7a-4d6e-9a51-1f1f7c1a0001"));
        assert!(is_host("127.0.2.1") && is_host("::1") && is_host("gw.example.com"));
        assert!(!is_host("") && !is_host("a..b") && !is_host("-a.b") && !is_host("a b"));
        assert!(is_host_port("api.example.com:6443") && is_host_port("[::1]:443") && !is_host_port("a:0"));
    }

    #[test]
    fn private_document_fields_are_checked_by_name() {
        let mut doc = sample_private();
        doc.validate().unwrap();
        doc.ingress_gateways[0].address = "".into();
        assert_eq!(doc.validate().unwrap_err().field, "ingressGateways[0].address");
        doc.ingress_gateways[0].address = "gw".into();
        doc.network_name = "".into();
        assert_eq!(doc.validate().unwrap_err().field, "networkName");
    }

    #[test]
    fn deckhouse_documents_parse_without_services() {
        // Deckhouse's multicluster.json has no `services`: it must still parse.
        let doc: PrivateMetadata = serde_json::from_str(
            r#"{"ingressGateways":[{"address":"1.2.3.4","port":15443}],"apiHost":"istio-api-proxy.example.com","networkName":"n1","unknown":1}"#,
        )
        .unwrap();
        doc.validate().unwrap();
        assert!(doc.services.is_empty());
    }
}
