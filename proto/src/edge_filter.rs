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
/// The API guard's ECDS resource name (and plugin root id): the same module
/// in the API proxy route's chain.
pub const API_FILTER_NAME: &str = "multicloud-api";
/// The type URL Envoy's `config_discovery.type_urls` must list.
pub const WASM_FILTER_TYPE_URL: &str = crate::type_url::WASM_FILTER;
/// The type URL of ECDS resources.
pub const EXTENSION_CONFIG_TYPE_URL: &str = crate::type_url::EXTENSION_CONFIG;

/// Where the gateway gets the filter module from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// A file on the gateway's filesystem (someone must put it there).
    Path(String),
    /// The module's bytes, in the resource itself: the gateway needs nothing
    /// but its xDS connection to the agent (Envoy caches the compiled VM by
    /// the code's hash, so a configuration-only change does not recompile).
    Inline(std::sync::Arc<Vec<u8>>),
}

impl From<&str> for Module {
    fn from(path: &str) -> Self {
        Module::Path(path.to_string())
    }
}

impl Module {
    /// The bytes of a file, checked to be a WebAssembly module (magic and
    /// version 1) of at most `MAX_MODULE_BYTES`.
    pub fn inline(bytes: Vec<u8>) -> Result<Module, String> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(format!("{} bytes is more than the {MAX_MODULE_BYTES} a filter module may have", bytes.len()));
        }
        if !bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err("not a WebAssembly module (no \\0asm version 1 header)".into());
        }
        Ok(Module::Inline(std::sync::Arc::new(bytes)))
    }

    fn data_source(&self) -> DataSource {
        let specifier = match self {
            Module::Path(p) => data_source::Specifier::Filename(p.clone()),
            Module::Inline(b) => data_source::Specifier::InlineBytes(b.as_ref().clone()),
        };
        DataSource { specifier: Some(specifier), ..Default::default() }
    }
}

/// The largest module the agent will send inline (the built filter is about
/// 0.3 MB; gRPC's default message limit is 4 MB).
pub const MAX_MODULE_BYTES: usize = 3 * 1024 * 1024;

/// Builds the ECDS resource for the edge filter: `module` is where the
/// gateway gets the code; `config_json` the edge configuration.
pub fn extension_config(module: &Module, config_json: &str) -> TypedExtensionConfig {
    extension_config_with_root_id(module, config_json, FILTER_NAME)
}

/// The same module in another role: the filter picks its role from the
/// plugin's root id (`multicloud-edge` serves metadata, `multicloud-api`
/// guards the API proxy route). The resource and plugin are named after the
/// root id; both share one VM (same `vm_id` and code).
pub fn extension_config_with_root_id(module: &Module, config_json: &str, root_id: &str) -> TypedExtensionConfig {
    let vm = VmConfig {
        vm_id: FILTER_NAME.into(),
        runtime: "envoy.wasm.runtime.v8".into(),
        code: Some(AsyncDataSource { specifier: Some(async_data_source::Specifier::Local(module.data_source())) }),
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
pub fn resource(module: &Module, config_json: &str) -> Any {
    pack_any(extension_config(module, config_json))
}

/// [`extension_config_with_root_id`], packed.
pub fn resource_with_root_id(module: &Module, config_json: &str, root_id: &str) -> Any {
    pack_any(extension_config_with_root_id(module, config_json, root_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_plugin_configuration_carries_the_json_verbatim() {
        let r = resource(&"/f.wasm".into(), "{\"a\":1}");
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

    #[test]
    fn an_inline_module_travels_in_the_resource_and_only_a_wasm_module_is_taken() {
        let code = b"\0asm\x01\0\0\0rest".to_vec();
        let m = Module::inline(code.clone()).unwrap();
        let tec = extension_config(&m, "{}");
        let wasm = Wasm::decode(tec.typed_config.unwrap().value.as_slice()).unwrap();
        let Some(plugin_config::Vm::VmConfig(vm)) = wasm.config.unwrap().vm else { panic!("a vm config") };
        let Some(async_data_source::Specifier::Local(ds)) = vm.code.unwrap().specifier else { panic!("local code") };
        assert_eq!(ds.specifier, Some(data_source::Specifier::InlineBytes(code)));
        assert!(Module::inline(b"#!/bin/sh\n".to_vec()).unwrap_err().contains("not a WebAssembly module"));
        assert!(Module::inline(vec![0; MAX_MODULE_BYTES + 1]).unwrap_err().contains("more than"));
    }
}
