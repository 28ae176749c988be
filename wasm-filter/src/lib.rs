//! The gateway filter: a thin proxy-wasm adapter around
//! [`multicloud_core::edge::Edge`].
//!
//! - [`host`] is the seam: the few host calls the filter makes, as one trait,
//!   implemented for Envoy with `proxy_wasm::hostcalls` (which return
//!   `Result`): a host error turns into a refusal, never a panic and never a
//!   pass-through of a request under `/metadata/`.
//! - [`filter`] decides on those calls: the root context's configuration (read,
//!   compiled with every reply precomputed, counters defined; an empty one
//!   is taken as "not configured yet" and its routes answer 503; one that
//!   does not compile is refused with one error log line, so Envoy keeps the
//!   one in force), and each request, by role. The same module
//!   runs in three roles, chosen by the plugin's root id, each one handler of
//!   the same shape: `multicloud-edge` serves the metadata documents (local
//!   replies only); `multicloud-api` guards the API proxy route (token with
//!   `scope: api`, read-only allow-list, per-peer rate and watch limits),
//!   strips the peer's token and lets allowed requests continue to the API
//!   server (Secret lists and watches rewritten into the empty namespace),
//!   where a later filter injects the proxy's own credential from SDS;
//!   `multicloud-mesh` guards the identity-enforcing mesh port (peer by
//!   SNI, caller by the client certificate's SPIFFE ID, host by the peer's
//!   exported services) and sets the `x-multicloud-caller-*` headers.
//! - This file holds only the proxy-wasm contexts that hand the host's calls
//!   to [`filter`]. Native unit tests drive [`filter`] against a fake host;
//!   the end-to-end tests run the built module in Envoy.

pub mod filter;
pub mod host;

use filter::{Configured, RequestState, Role, Shared};
use host::Envoy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

pub use filter::{API_ROOT_ID, MESH_ROOT_ID};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    /// Known even before a configuration arrives (it is the root id).
    role: Role,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.role = Role::of(&Envoy);
        match filter::configure(&Envoy, self.role) {
            Configured::Ready(shared) => {
                self.shared = Some(shared);
                true
            }
            Configured::NotYet => {
                self.shared = None;
                true
            }
            Configured::Refused => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeRequest { shared: self.shared.clone(), role: self.role, state: RequestState::default() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EdgeRequest {
    shared: Option<Rc<Shared>>,
    role: Role,
    state: RequestState,
}

impl Context for EdgeRequest {}

impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        filter::on_request_headers(self.shared.as_deref(), self.role, &Envoy, &mut self.state)
    }
}

impl Drop for EdgeRequest {
    fn drop(&mut self) {
        filter::on_request_end(self.shared.as_deref(), &mut self.state);
    }
}
