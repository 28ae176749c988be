//! The gateway filter's ECDS resource: a `TypedExtensionConfig` holding an
//! `envoy.extensions.filters.http.wasm.v3.Wasm` whose plugin configuration is
//! the edge configuration JSON (`multicloud_core::edge::EdgeConfig`).
//!
//! The filter fails closed: `failure_policy: FAIL_CLOSED`, so a VM that
//! cannot start or crashes answers 503 rather than letting requests pass.

use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source, AsyncDataSource, DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{plugin_config, FailurePolicy, PluginConfig, VmConfig};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::util::pack_any;

/// The filter's name in the HTTP filter chain and in ECDS.
pub const FILTER_NAME: &str = "multicloud-edge";
/// The type URL Envoy's `config_discovery.type_urls` must list.
pub const WASM_FILTER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The type URL of ECDS resources.
pub const EXTENSION_CONFIG_TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// Builds the ECDS resource for the edge filter. `wasm_path` is the module's
/// path on the gateway's filesystem; `config_json` the edge configuration.
pub fn extension_config(wasm_path: &str, config_json: &str) -> TypedExtensionConfig {
    extension_config_with_root_id(wasm_path, config_json, FILTER_NAME)
}

/// The same module in another role: the filter picks its role from the
/// plugin's root id (`multicloud-edge` serves metadata, `multicloud-api`
/// guards the API proxy route). The resource and plugin are named after the
/// root id; both share one VM (same `vm_id` and code).
pub fn extension_config_with_root_id(wasm_path: &str, config_json: &str, root_id: &str) -> TypedExtensionConfig {
    let vm = VmConfig {
        vm_id: FILTER_NAME.into(),
        runtime: "envoy.wasm.runtime.v8".into(),
        code: Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(wasm_path.into())),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let plugin = PluginConfig {
        name: root_id.into(),
        root_id: root_id.into(),
        configuration: Some(pack_any(StringValue { value: config_json.into() })),
        failure_policy: FailurePolicy::FailClosed as i32,
        vm: Some(plugin_config::Vm::VmConfig(vm)),
        ..Default::default()
    };
    TypedExtensionConfig { name: root_id.into(), typed_config: Some(pack_any(Wasm { config: Some(plugin) })) }
}

/// The same, packed for a `DiscoveryResponse`.
pub fn resource(wasm_path: &str, config_json: &str) -> Any {
    pack_any(extension_config(wasm_path, config_json))
}

/// [`extension_config_with_root_id`], packed.
pub fn resource_with_root_id(wasm_path: &str, config_json: &str, root_id: &str) -> Any {
    pack_any(extension_config_with_root_id(wasm_path, config_json, root_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_plugin_configuration_carries_the_json_verbatim() {
        let r = resource("/f.wasm", "{\"a\":1}");
        assert_eq!(r.type_url, EXTENSION_CONFIG_TYPE_URL);
        let tec = TypedExtensionConfig::decode(r.value.as_slice()).unwrap();
        let any = tec.typed_config.unwrap();
        assert_eq!(any.type_url, WASM_FILTER_TYPE_URL);
        let wasm = Wasm::decode(any.value.as_slice()).unwrap();
        let cfg = wasm.config.unwrap();
        assert_eq!(cfg.failure_policy, FailurePolicy::FailClosed as i32);
        let sv = StringValue::decode(cfg.configuration.unwrap().value.as_slice()).unwrap();
        assert_eq!(sv.value, "{\"a\":1}");
    }
}
