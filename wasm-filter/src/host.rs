//! The host seam: the few calls the filter makes into Envoy ([`Host`]), and
//! their proxy-wasm implementation ([`Envoy`]). Everything the filter
//! decides goes through this trait, so the adapter (`crate::filter`) is
//! tested natively against a fake host; only [`Envoy`] touches
//! `proxy_wasm::hostcalls` (which return `Result`, never panic).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::time::SystemTime;

/// What the filter asks of its host.
pub trait Host {
    /// The plugin configuration (`None`: empty).
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status>;
    /// A property (`plugin_root_id`, `connection.requested_server_name`, ...).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    fn define_counter(&self, name: &str) -> Result<u32, Status>;
    fn increment(&self, counter: u32);
    fn log(&self, level: LogLevel, message: &str);
    fn now(&self) -> Option<SystemTime>;
    /// Every request header, in one call.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (or, with `None`, removes every copy of) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status>;
    fn send_response(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Status>;
}

/// The host the filter runs in: Envoy, through proxy-wasm.
pub struct Envoy;

impl Host for Envoy {
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn define_counter(&self, name: &str) -> Result<u32, Status> {
        hostcalls::define_metric(MetricType::Counter, name)
    }

    fn increment(&self, counter: u32) {
        let _ = hostcalls::increment_metric(counter, 1);
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = hostcalls::log(level, message);
    }

    fn now(&self) -> Option<SystemTime> {
        hostcalls::get_current_time().ok()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value)
    }

    fn send_response(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Status> {
        hostcalls::send_http_response(status, headers, body)
    }
}
