//! Small message parts every builder uses (and the test bed's bootstraps):
//! socket addresses, metadata structs, wrapped integers and durations, TLS
//! transport sockets, SDS references.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, transport_socket, Address, ConfigSource, Metadata, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
use envoy_types::pb::google::protobuf::{value, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;

pub fn string_value(s: &str) -> Value {
    Value { kind: Some(value::Kind::StringValue(s.into())) }
}

/// A struct of string fields (built in key order).
pub fn struct_of(fields: &[(&str, &str)]) -> Struct {
    Struct { fields: fields.iter().map(|(k, v)| ((*k).to_string(), string_value(v))).collect::<BTreeMap<_, _>>().into_iter().collect() }
}

/// Filter metadata with one namespace.
pub fn metadata(namespace: &str, fields: &[(&str, &str)]) -> Metadata {
    Metadata { filter_metadata: HashMap::from([(namespace.to_string(), struct_of(fields))]), ..Default::default() }
}

pub fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

pub fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// A socket address of an IP literal (EDS and listeners do not resolve names).
pub fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The TLS transport socket around an upstream or downstream context.
pub fn tls_socket<T: prost::Name>(ctx: T) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// An SDS reference to `name` from `source`.
pub fn sds(name: &str, source: ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig { name: name.into(), sds_config: Some(source) }
}
