//! The mesh guard: who may reach which local service through the gateway's
//! identity-enforcing mesh port (15443).
//!
//! The mesh listener has one filter chain per peer, selected by exact SNI,
//! each requiring a client certificate that chains to that peer's root CA
//! only. After the handshake the SNI therefore names the peer soundly, and
//! the certificate's URI SAN is the calling workload's SPIFFE ID. The filter
//! instance with root id `multicloud-mesh` runs in each chain's HTTP
//! connection manager and, per request:
//!
//! 1. finds the peer by SNI (else [`MeshRefusal::UnknownPeer`]);
//! 2. requires a `spiffe://` peer identity (else [`MeshRefusal::NoPeerIdentity`]);
//! 3. requires `:authority` (port and trailing dot stripped, any case) to be
//!    a service this cluster exports to that peer (else
//!    [`MeshRefusal::ServiceNotExported`]);
//! 4. removes every `x-multicloud-caller*` header the request brought and
//!    sets [`CALLER_CLUSTER`], [`CALLER_CLUSTER_UUID`] and [`CALLER_SPIFFE`].
//!
//! [`MeshGuard::compile`] validates the configuration and precomputes the
//! refusal replies, the normalized lookup tables and the counter names;
//! [`MeshGuard::decide`] allocates nothing but the list of headers to strip.
//! Lookups are linear scans comparing without case: peers and exported
//! services are tens, and (like sorting) a hash table would cost the
//! size-bound Wasm module more code than it saves time.

use serde::Serialize;

use crate::reply::{json_refusal, ConfigError, GuardRefusal, RefusalReplies, Reply};

/// Set on allowed requests: the peer's name (the local IstioMulticloud object).
pub const CALLER_CLUSTER: &str = "x-multicloud-caller-cluster";
/// Set on allowed requests: the peer's cluster UUID (lower case).
pub const CALLER_CLUSTER_UUID: &str = "x-multicloud-caller-cluster-uuid";
/// Set on allowed requests: the calling workload's SPIFFE ID.
pub const CALLER_SPIFFE: &str = "x-multicloud-caller-spiffe";
/// Every request header starting with this (any case) is removed first.
pub const CALLER_PREFIX: &str = "x-multicloud-caller";

/// The longest SPIFFE ID passed on (the SPIFFE spec's limit).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// The mesh guard's configuration (`mesh` in the edge configuration).
///
/// Deserialized by hand (see [`de`]), as a JSON object only: the derived
/// code costs the size-bound Wasm module twice as much. Unknown keys are
/// ignored and missing ones left empty, which [`MeshGuard::compile`] then
/// refuses naming the field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    pub peers: Vec<MeshPeer>,
}

impl MeshSettings {
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// One peer on the mesh port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshPeer {
    /// The local IstioMulticloud object's name for this peer (also in the
    /// counter names, so DNS-subdomain characters only).
    pub name: String,
    #[serde(rename = "clusterUUID")]
    pub cluster_uuid: String,
    /// The SNI of this peer's filter chain on the mesh port.
    pub sni: String,
    /// Host names this cluster exports to this peer.
    pub services: Vec<String>,
}

mod de {
    use super::{MeshPeer, MeshSettings};
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    /// A struct read from a JSON object key by key.
    trait FromKeys: Default {
        const EXPECTING: &'static str;
        /// Reads the value of `key` if it is one of ours; `Ok(false)` if not.
        fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, m: &mut A) -> Result<bool, A::Error>;
    }

    struct KeysVisitor<T>(PhantomData<T>);

    impl<'de, T: FromKeys> Visitor<'de> for KeysVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<T, A::Error> {
            let mut v = T::default();
            while let Some(key) = m.next_key::<String>()? {
                if !v.read(&key, &mut m)? {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(v)
        }
    }

    impl FromKeys for MeshSettings {
        const EXPECTING: &'static str = "the mesh settings, an object {\"peers\": [...]}";
        fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, m: &mut A) -> Result<bool, A::Error> {
            match key {
                "peers" => self.peers = m.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        }
    }

    impl FromKeys for MeshPeer {
        const EXPECTING: &'static str = "a mesh peer, an object {\"name\", \"clusterUUID\", \"sni\", \"services\"}";
        fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, m: &mut A) -> Result<bool, A::Error> {
            match key {
                "name" => self.name = m.next_value()?,
                "clusterUUID" => self.cluster_uuid = m.next_value()?,
                "sni" => self.sni = m.next_value()?,
                "services" => self.services = m.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        }
    }

    impl<'de> Deserialize<'de> for MeshSettings {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(KeysVisitor(PhantomData))
        }
    }

    impl<'de> Deserialize<'de> for MeshPeer {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(KeysVisitor(PhantomData))
        }
    }
}

/// Why a mesh request was refused (all 403, never reaching the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshRefusal {
    /// No SNI, or an SNI that names no configured peer.
    UnknownPeer,
    /// No client certificate URI SAN, or not a `spiffe://` one.
    NoPeerIdentity,
    /// `:authority` is not a service exported to this peer.
    ServiceNotExported,
}

impl MeshRefusal {
    pub const ALL: [MeshRefusal; 3] = [MeshRefusal::UnknownPeer, MeshRefusal::NoPeerIdentity, MeshRefusal::ServiceNotExported];
}

impl GuardRefusal for MeshRefusal {
    const COUNT: usize = MeshRefusal::ALL.len();

    fn status(self) -> u32 {
        403
    }

    fn reason(self) -> &'static str {
        match self {
            MeshRefusal::UnknownPeer => "UnknownPeer",
            MeshRefusal::NoPeerIdentity => "NoPeerIdentity",
            MeshRefusal::ServiceNotExported => "ServiceNotExported",
        }
    }

    fn message(self) -> &'static str {
        match self {
            MeshRefusal::UnknownPeer => "the TLS server name does not name a federated peer of this cluster's mesh port",
            MeshRefusal::NoPeerIdentity => "the client certificate carries no spiffe:// URI SAN",
            MeshRefusal::ServiceNotExported => "this cluster does not export the requested host to your cluster",
        }
    }

    /// The counter suffix (`...refused.<suffix>`).
    fn stat_suffix(self) -> &'static str {
        match self {
            MeshRefusal::UnknownPeer => "unknown_peer",
            MeshRefusal::NoPeerIdentity => "no_peer_identity",
            MeshRefusal::ServiceNotExported => "service_not_exported",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn every() -> impl Iterator<Item = MeshRefusal> {
        MeshRefusal::ALL.into_iter()
    }

    fn reply(self) -> Reply {
        json_refusal(self.status(), self.message(), self.reason())
    }
}

/// The request facts the mesh guard needs, as the host gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshRequest<'a> {
    /// `connection.requested_server_name`.
    pub sni: Option<&'a str>,
    /// `connection.uri_san_peer_certificate` (the first URI SAN).
    pub peer_uri_san: Option<&'a str>,
    /// `:authority`.
    pub authority: &'a str,
}

/// The mesh guard's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshOutcome<'a, 'h> {
    /// Remove every header in `strip`, then set [`MeshOutcome::caller_headers`]; continue.
    Allow { peer: &'a CompiledPeer, spiffe: &'h str, strip: Vec<&'h str> },
    Refuse {
        reply: &'a Reply,
        refusal: MeshRefusal,
        /// The counter to count it in.
        counter: usize,
    },
}

impl<'a, 'h> MeshOutcome<'a, 'h> {
    /// The index into [`MeshGuard::counter_names`].
    pub fn counter(&self) -> usize {
        match self {
            MeshOutcome::Allow { peer, .. } => peer.counters,
            MeshOutcome::Refuse { counter, .. } => *counter,
        }
    }
}

impl<'a> MeshOutcome<'a, '_> {
    /// The headers to set on an allowed request (none on a refusal).
    pub fn caller_headers(&self) -> Option<[(&'static str, &str); 3]> {
        match self {
            MeshOutcome::Allow { peer, spiffe, .. } => {
                Some([(CALLER_CLUSTER, &peer.name), (CALLER_CLUSTER_UUID, &peer.uuid), (CALLER_SPIFFE, spiffe)])
            }
            MeshOutcome::Refuse { .. } => None,
        }
    }
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPeer {
    pub name: String,
    /// Lower case.
    pub uuid: String,
    /// Lower case, no trailing dot.
    sni: String,
    /// Lower case, no trailing dot.
    services: Vec<String>,
    /// Index of this peer's `allowed` counter; its refusals follow.
    counters: usize,
}

/// A validated mesh configuration.
#[derive(Debug, Default)]
pub struct MeshGuard {
    /// In configuration order.
    peers: Vec<CompiledPeer>,
    refusals: RefusalReplies<MeshRefusal>,
    counter_names: Vec<String>,
}

/// Counters per peer: `allowed`, then the refusals a known peer can get.
const PER_PEER: [Option<MeshRefusal>; 3] = [None, Some(MeshRefusal::NoPeerIdentity), Some(MeshRefusal::ServiceNotExported)];

/// A name usable in a Kubernetes object name and an Envoy stat name.
fn is_stat_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
        && !s.contains("..")
}

/// `host[:port]` or `[v6]:port` → host, without a trailing dot.
pub fn authority_host(authority: &str) -> &str {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        match authority.split_once(':') {
            Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A SPIFFE ID as a certificate may carry it: `spiffe://`, then printable
/// ASCII without spaces (so it is safe as a header value), bounded.
fn is_spiffe_id(s: &str) -> bool {
    s.len() > "spiffe://".len()
        && s.len() <= MAX_SPIFFE_ID_BYTES
        && s.get(..9).is_some_and(|p| p.eq_ignore_ascii_case("spiffe://"))
        && s.bytes().all(|c| c.is_ascii_graphic())
}

impl MeshGuard {
    /// Validates `settings`; every error names the field. `local_uuid` is
    /// this cluster's (lower case), which no peer may claim.
    pub fn compile(settings: &MeshSettings, local_uuid: &str) -> Result<MeshGuard, ConfigError> {
        let mut peers: Vec<CompiledPeer> = Vec::with_capacity(settings.peers.len());
        for (i, p) in settings.peers.iter().enumerate() {
            let field = |f: &str, what: &str| ConfigError(format!("mesh.peers[{i}].{f}: {what}"));
            if !is_stat_name(&p.name) {
                return Err(field("name", "must be a DNS subdomain (a-z, 0-9, '-', '.'), as an IstioMulticloud name"));
            }
            if !crate::metadata::is_uuid(&p.cluster_uuid) {
                return Err(field("clusterUUID", "is not a UUID"));
            }
            let uuid = p.cluster_uuid.to_ascii_lowercase();
            if uuid == local_uuid {
                return Err(field("clusterUUID", "is this cluster's own UUID"));
            }
            let sni = p.sni.to_ascii_lowercase();
            let sni = sni.strip_suffix('.').unwrap_or(&sni).to_string();
            if sni.parse::<std::net::IpAddr>().is_ok() || !crate::metadata::is_host(&sni) {
                return Err(field("sni", "must be a DNS name"));
            }
            let mut services = Vec::with_capacity(p.services.len());
            for (j, s) in p.services.iter().enumerate() {
                let s = s.to_ascii_lowercase();
                let s = s.strip_suffix('.').unwrap_or(&s);
                if !crate::metadata::is_host(s) {
                    return Err(field(&format!("services[{j}]"), "is not a host name"));
                }
                services.push(s.to_string());
            }
            for q in &peers {
                if q.name == p.name {
                    return Err(field("name", "listed twice"));
                }
                if q.uuid == uuid {
                    return Err(field("clusterUUID", "listed twice"));
                }
                if q.sni == sni {
                    return Err(field("sni", "listed twice"));
                }
            }
            peers.push(CompiledPeer { name: p.name.clone(), uuid, sni, services, counters: 0 });
        }
        let mut counter_names = vec![format!("multicloud_mesh.refused.{}", MeshRefusal::UnknownPeer.stat_suffix())];
        for p in &mut peers {
            p.counters = counter_names.len();
            for r in PER_PEER {
                counter_names.push(match r {
                    None => format!("multicloud_mesh.peer.{}.allowed", p.name),
                    Some(r) => format!("multicloud_mesh.peer.{}.refused.{}", p.name, r.stat_suffix()),
                });
            }
        }
        Ok(MeshGuard { peers, refusals: RefusalReplies::compile(), counter_names })
    }

    /// The counters to define, in index order (Envoy adds `wasmcustom.`).
    pub fn counter_names(&self) -> &[String] {
        &self.counter_names
    }

    pub fn peers(&self) -> &[CompiledPeer] {
        &self.peers
    }

    fn refuse<'a, 'h>(&'a self, refusal: MeshRefusal, peer: Option<&CompiledPeer>) -> MeshOutcome<'a, 'h> {
        let counter = peer.map_or(0, |p| p.counters + PER_PEER.iter().position(|r| *r == Some(refusal)).unwrap_or(0));
        MeshOutcome::Refuse { reply: self.refusals.get(refusal), refusal, counter }
    }

    /// Decides a request; `header_names` are every request header's name.
    pub fn decide<'a, 'h>(&'a self, req: MeshRequest<'h>, header_names: impl Iterator<Item = &'h str>) -> MeshOutcome<'a, 'h> {
        let sni = req.sni.unwrap_or_default();
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        let Some(peer) = self.peers.iter().find(|p| p.sni.eq_ignore_ascii_case(sni)) else {
            return self.refuse(MeshRefusal::UnknownPeer, None);
        };
        let Some(spiffe) = req.peer_uri_san.filter(|s| is_spiffe_id(s)) else {
            return self.refuse(MeshRefusal::NoPeerIdentity, Some(peer));
        };
        let host = authority_host(req.authority);
        if !peer.services.iter().any(|s| s.eq_ignore_ascii_case(host)) {
            return self.refuse(MeshRefusal::ServiceNotExported, Some(peer));
        }
        let strip = header_names.filter(|n| n.get(..CALLER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(CALLER_PREFIX))).collect();
        MeshOutcome::Allow { peer, spiffe, strip }
    }
}

#[cfg(test)]
mod tests;
