//! What the builders are given, and the checks every input passes before a
//! resource is built from it. Errors name the peer and the field as the
//! peer's metadata document names it.

use std::collections::{BTreeMap, HashSet};

use multicloud_core::metadata::{is_host, is_uuid, MeshMode};

pub use multicloud_core::metadata::{ExportedService, IngressGateway};

use crate::error::{local_err, malformed, name_err, BuildError, LOCAL};

/// One established peer as the data plane needs it.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    /// The `IstioMulticloud` object's name.
    pub name: &'a str,
    pub cluster_uuid: &'a str,
    pub root_ca_pem: &'a str,
    pub network: &'a str,
    pub gateways: &'a [IngressGateway],
    pub services: &'a [ExportedService],
}

/// A peer as the traffic builders see it.
#[derive(Debug, Clone, Copy)]
pub struct TrafficPeer<'a> {
    pub view: PeerView<'a>,
    pub mode: MeshMode,
}

/// One local service port and its ready endpoints (`ip:port`).
#[derive(Debug, Clone, Copy)]
pub struct LocalPort<'a> {
    pub hostname: &'a str,
    pub port: u16,
    pub addresses: &'a [String],
}

/// Every (host, port) some peer exports, with the peers exporting it (in
/// the given order) and that peer's service entry.
pub type ExportsByPort<'a> = BTreeMap<(&'a str, u16), Vec<(&'a TrafficPeer<'a>, &'a ExportedService)>>;

/// Groups peers' exports by service port: (host, port) → exporters.
pub fn exports_by_port<'a>(peers: &'a [TrafficPeer<'a>]) -> ExportsByPort<'a> {
    let mut out: ExportsByPort<'a> = BTreeMap::new();
    for p in peers {
        for s in p.view.services {
            for port in &s.ports {
                out.entry((s.hostname.as_str(), port.port)).or_default().push((p, s));
            }
        }
    }
    out
}

pub(crate) fn check_peer_names(p: &PeerView) -> Result<(), BuildError> {
    if !is_host(p.name) || p.name.parse::<std::net::IpAddr>().is_ok() {
        return Err(name_err(if p.name.is_empty() { "?" } else { p.name }, "name", "must be a DNS-1123 object name"));
    }
    if !is_uuid(p.cluster_uuid) {
        return Err(name_err(p.name, "clusterUUID", "is not a UUID"));
    }
    Ok(())
}

pub(crate) fn check_services(p: &PeerView) -> Result<(), BuildError> {
    check_peer_names(p)?;
    if p.network.is_empty() {
        return Err(name_err(p.name, "networkName", "is empty"));
    }
    let mut names = HashSet::new();
    for (i, s) in p.services.iter().enumerate() {
        if !is_host(&s.hostname) || s.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(name_err(p.name, format!("services[{i}].hostname"), format!("{:?} is not a DNS name", s.hostname)));
        }
        for (j, port) in s.ports.iter().enumerate() {
            if port.port == 0 {
                return Err(BuildError::Port { peer: p.name.into(), field: format!("services[{i}].ports[{j}].port") });
            }
            if !names.insert((s.hostname.as_str(), port.port)) {
                return Err(malformed(
                    p.name,
                    format!("services[{i}].ports[{j}]"),
                    format!("{}:{} is exported twice", s.hostname, port.port),
                ));
            }
        }
    }
    Ok(())
}

/// The peer's gateways (duplicates once), each an IP literal with a port.
pub(crate) fn check_gateways<'a>(p: &PeerView<'a>) -> Result<Vec<&'a IngressGateway>, BuildError> {
    if p.gateways.is_empty() {
        return Err(BuildError::Address { peer: p.name.into(), field: "ingressGateways".into(), cause: "lists no gateway".into() });
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, g) in p.gateways.iter().enumerate() {
        let field = format!("ingressGateways[{i}].address");
        if g.address.is_empty() {
            return Err(BuildError::Address { peer: p.name.into(), field, cause: "is empty".into() });
        }
        if g.address.parse::<std::net::IpAddr>().is_err() {
            let cause = if is_host(&g.address) {
                format!("{:?} is a DNS name; EDS endpoints must be IP addresses (resolve it before building)", g.address)
            } else {
                format!("{:?} is not an IP address", g.address)
            };
            return Err(BuildError::Address { peer: p.name.into(), field, cause });
        }
        if g.port == 0 {
            return Err(BuildError::Port { peer: p.name.into(), field: format!("ingressGateways[{i}].port") });
        }
        if seen.insert((g.address.as_str(), g.port)) {
            out.push(g);
        }
    }
    Ok(out)
}

/// `ip:port` with an IP literal and a non-zero port.
fn parse_endpoint(field: &str, s: &str) -> Result<std::net::SocketAddr, BuildError> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(sa),
        Ok(_) => Err(BuildError::Port { peer: LOCAL.into(), field: field.into() }),
        Err(_) => Err(local_err(field, format!("{s:?} is not ip:port"))),
    }
}

pub(crate) fn check_local(ports: &[LocalPort]) -> Result<(), BuildError> {
    for (i, p) in ports.iter().enumerate() {
        if !is_host(p.hostname) || p.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(local_err(format!("localEndpoints[{i}].hostname"), format!("{:?} is not a DNS name", p.hostname)));
        }
        if p.port == 0 {
            return Err(BuildError::Port { peer: LOCAL.into(), field: format!("localEndpoints[{i}].port") });
        }
        for (j, a) in p.addresses.iter().enumerate() {
            parse_endpoint(&format!("localEndpoints[{i}].addresses[{j}]"), a)?;
        }
    }
    Ok(())
}

/// The distinct service ports this cluster exports, in order.
pub(crate) fn exported_ports(exported: &[ExportedService]) -> Result<Vec<(&str, u16)>, BuildError> {
    let mut ports: Vec<(&str, u16)> = Vec::new();
    for (i, s) in exported.iter().enumerate() {
        if !is_host(&s.hostname) || s.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(local_err(format!("services[{i}].hostname"), format!("{:?} is not a DNS name", s.hostname)));
        }
        for p in &s.ports {
            if p.port == 0 {
                return Err(BuildError::Port { peer: LOCAL.into(), field: format!("services[{i}].ports") });
            }
            if !ports.contains(&(s.hostname.as_str(), p.port)) {
                ports.push((s.hostname.as_str(), p.port));
            }
        }
    }
    Ok(ports)
}
