//! The xDS type URLs the project serves, taken at compile time from the
//! generated types' `prost::Name` (`PACKAGE` and `NAME`), so no URL is
//! spelled out twice. Constants, because the agent keys its caches and its
//! push order by them; at run time `T::type_url()` is the same string
//! (checked below).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, UpstreamTlsContext};

const PREFIX: &str = "type.googleapis.com/";

/// `prefix`, `package`, `.` and `name` as one byte array of length `N`.
/// Only evaluated at compile time (for the constants below), where an index
/// out of bounds is a build error, not a panic.
#[allow(clippy::indexing_slicing)]
const fn join<const N: usize>(package: &str, name: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let parts = [PREFIX.as_bytes(), package.as_bytes(), b".", name.as_bytes()];
    let (mut i, mut at) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() && at < N {
            out[at] = parts[i][j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// The type URL of a generated message type, as a `&'static str` constant.
macro_rules! type_url_of {
    ($t:ty) => {{
        const PACKAGE: &str = <$t as prost::Name>::PACKAGE;
        const NAME: &str = <$t as prost::Name>::NAME;
        const LEN: usize = PREFIX.len() + PACKAGE.len() + 1 + NAME.len();
        const BYTES: [u8; LEN] = join::<LEN>(PACKAGE, NAME);
        // Always Ok: every part is a `&str`, and whole characters are copied.
        match std::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => "",
        }
    }};
}

pub const SECRET: &str = type_url_of!(Secret);
pub const EXTENSION_CONFIG: &str = type_url_of!(TypedExtensionConfig);
pub const CLUSTER: &str = type_url_of!(Cluster);
pub const ENDPOINT: &str = type_url_of!(ClusterLoadAssignment);
pub const LISTENER: &str = type_url_of!(Listener);
pub const ROUTE: &str = type_url_of!(RouteConfiguration);
/// The proxy-wasm HTTP filter (what ECDS resources carry).
pub const WASM_FILTER: &str = type_url_of!(Wasm);
pub const UPSTREAM_TLS: &str = type_url_of!(UpstreamTlsContext);

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;

    #[test]
    fn each_constant_is_the_generated_types_type_url() {
        assert_eq!(SECRET, Secret::type_url());
        assert_eq!(EXTENSION_CONFIG, TypedExtensionConfig::type_url());
        assert_eq!(CLUSTER, Cluster::type_url());
        assert_eq!(ENDPOINT, ClusterLoadAssignment::type_url());
        assert_eq!(LISTENER, Listener::type_url());
        assert_eq!(ROUTE, RouteConfiguration::type_url());
        assert_eq!(WASM_FILTER, Wasm::type_url());
        assert_eq!(UPSTREAM_TLS, UpstreamTlsContext::type_url());
        assert_eq!(SECRET, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    }
}
