//! The filter's adapter against a fake host: what it asks the host, what it
//! sends back, what it counts, for each role and for host failures.

use super::*;
use ed25519_dalek::SigningKey;
use multicloud_core::edge::{EdgeConfig, PeerKey, PUBLIC_JSON_PATH};
use multicloud_core::metadata::{PrivateMetadata, PublicMetadata};
use multicloud_core::token::{Audience, Claims};
use proxy_wasm::types::Status;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const A: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
const B: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b";
const NOW: u64 = 1_800_000_000;

/// A reply the filter sent: status, headers, body.
type Sent = (u32, Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct FakeHost {
    config: Option<Vec<u8>>,
    properties: BTreeMap<String, Vec<u8>>,
    headers: Vec<(String, String)>,
    /// Host calls that fail with this status.
    refuse_headers: bool,
    refuse_replies: Cell<u32>,
    counters: RefCell<Vec<String>>,
    counted: RefCell<Vec<String>>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    header_writes: RefCell<Vec<(String, Option<String>)>>,
    sent: RefCell<Vec<Sent>>,
}

impl Host for FakeHost {
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status> {
        Ok(self.config.clone())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }

    fn define_counter(&self, name: &str) -> Result<u32, Status> {
        let mut c = self.counters.borrow_mut();
        c.push(name.to_string());
        u32::try_from(c.len() - 1).map_err(|_| Status::InternalFailure)
    }

    fn increment(&self, counter: u32) {
        let name = self.counters.borrow().get(counter as usize).cloned().unwrap_or_else(|| format!("undefined counter {counter}"));
        self.counted.borrow_mut().push(name);
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn now(&self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(NOW))
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.headers.clone()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        if self.refuse_headers {
            return Err(Status::InternalFailure);
        }
        self.header_writes.borrow_mut().push((name.to_string(), value.map(String::from)));
        Ok(())
    }

    fn send_response(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Status> {
        if self.refuse_replies.get() > 0 {
            self.refuse_replies.set(self.refuse_replies.get() - 1);
            return Err(Status::InternalFailure);
        }
        let headers = headers.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.sent.borrow_mut().push((status, headers, body.unwrap_or_default().to_vec()));
        Ok(())
    }
}

fn root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn peer_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// Cluster B's edge configuration, federating with A.
fn config_json() -> Vec<u8> {
    let b_key = SigningKey::from_bytes(&[2; 32]);
    let config = EdgeConfig {
        public: PublicMetadata {
            cluster_uuid: B.into(),
            root_ca: root_pem(),
            authn_key_pub: multicloud_core::pem::ed25519_public_key_to_pem(&b_key.verifying_key()),
            additional_authn_keys_pub: Vec::new(),
        },
        private: PrivateMetadata {
            ingress_gateways: vec![],
            api_host: "api.b.example:443".into(),
            network_name: "network-b".into(),
            services: vec![],
            mesh_mode: None,
        },
        peers: vec![PeerKey {
            cluster_uuid: A.into(),
            authn_key_pub: multicloud_core::pem::ed25519_public_key_to_pem(&peer_key().verifying_key()),
            max_api_token_lifetime_seconds: None,
            additional_authn_keys_pub: Vec::new(),
        }],
        spiffe: Default::default(),
        max_token_lifetime_seconds: 600,
        public_max_age_seconds: 60,
        api: Default::default(),
        mesh: Default::default(),
    };
    serde_json::to_vec(&config).unwrap()
}

fn host(root_id: &str, headers: &[(&str, &str)]) -> FakeHost {
    FakeHost {
        config: Some(config_json()),
        properties: BTreeMap::from([("plugin_root_id".to_string(), root_id.as_bytes().to_vec())]),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..FakeHost::default()
    }
}

fn api_token() -> String {
    multicloud_core::token::sign(
        &peer_key(),
        &Claims {
            iss: "t".into(),
            sub: A.into(),
            aud: Audience::One(B.into()),
            scope: "api".into(),
            nbf: NOW as i64,
            exp: NOW as i64 + 60,
        },
    )
}

/// The three roles have one shape.
const _ROLES: [Handler<FakeHost>; 3] = [metadata, api, mesh];

/// The compiled configuration, if the host's compiles.
fn ready(h: &FakeHost) -> Option<Rc<Shared>> {
    match configure(h, Role::of(h)) {
        Configured::Ready(shared) => Some(shared),
        Configured::NotYet | Configured::Refused => None,
    }
}

/// Configures, then runs one request through the filter.
fn run(h: &FakeHost) -> (Option<Rc<Shared>>, Action) {
    let shared = ready(h);
    let mut state = RequestState::default();
    let action = on_request_headers(shared.as_deref(), Role::of(h), h, &mut state);
    on_request_end(shared.as_deref(), &mut state);
    (shared, action)
}

#[test]
fn the_root_id_chooses_the_role_and_its_counters() {
    for (id, role, counter) in [
        ("multicloud-edge", Role::Metadata, "multicloud_edge."),
        (API_ROOT_ID, Role::Api, "multicloud_api.allowed.get"),
        (MESH_ROOT_ID, Role::Mesh, "multicloud_mesh."),
    ] {
        let h = host(id, &[]);
        assert_eq!(Role::of(&h), role);
        assert!(ready(&h).is_some());
        assert!(h.counters.borrow().iter().any(|c| c.starts_with(counter)), "{id}: {:?}", h.counters.borrow());
        let logs = h.logs.borrow();
        assert!(
            logs.iter().any(|(l, m)| *l == LogLevel::Info && m.contains(&format!("configured: cluster {B} with 1 peer(s)"))),
            "{logs:?}"
        );
    }
}

#[test]
fn a_configuration_that_does_not_compile_is_refused_with_one_error_line() {
    for config in [Some(b"{".to_vec()), Some(br#"{"public":{}}"#.to_vec())] {
        let h = FakeHost { config, ..host("multicloud-edge", &[]) };
        assert!(matches!(configure(&h, Role::Metadata), Configured::Refused));
        let logs = h.logs.borrow();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, LogLevel::Error);
        assert!(h.counters.borrow().is_empty(), "no counter defined for a refused configuration");
    }
}

#[test]
fn the_public_document_is_served_and_counted() {
    let h = host("multicloud-edge", &[(":method", "GET"), (":path", PUBLIC_JSON_PATH)]);
    let (_, action) = run(&h);
    assert_eq!(action, Action::Pause);
    let sent = h.sent.borrow();
    let (status, headers, body) = &sent[0];
    assert_eq!(*status, 200);
    assert!(headers.iter().any(|(k, _)| k == "etag"), "{headers:?}");
    let doc: PublicMetadata = serde_json::from_slice(body).unwrap();
    assert_eq!(doc.cluster_uuid, B);
    assert_eq!(h.counted.borrow().len(), 1, "one event counted");
}

#[test]
fn requests_outside_the_metadata_paths_continue_untouched() {
    let h = host("multicloud-edge", &[(":method", "GET"), (":path", "/healthz")]);
    assert_eq!(run(&h).1, Action::Continue);
    assert!(h.sent.borrow().is_empty() && h.header_writes.borrow().is_empty() && h.counted.borrow().is_empty());
}

/// An empty configuration (none, or `{}`) is accepted as "not yet", with
/// one info line and no counter.
#[test]
fn an_empty_configuration_is_taken_as_not_configured_yet() {
    for config in [None, Some(b" { } ".to_vec())] {
        let h = FakeHost { config, ..host("multicloud-edge", &[]) };
        assert!(matches!(configure(&h, Role::Metadata), Configured::NotYet));
        let logs = h.logs.borrow();
        assert!(logs.len() == 1 && logs[0].0 == LogLevel::Info && logs[0].1.contains("no configuration yet"), "{logs:?}");
        assert!(h.counters.borrow().is_empty());
    }
}

/// Without a configuration the API and mesh roles refuse every request
/// 503, and the metadata role refuses its own documents and lets the
/// gateway's other routes through.
#[test]
fn without_a_configuration_what_the_filter_answers_is_refused_503() {
    for (role, path, refused) in [
        (Role::Api, "/healthz", true),
        (Role::Mesh, "/healthz", true),
        (Role::Metadata, PUBLIC_JSON_PATH, true),
        (Role::Metadata, "/healthz", false),
    ] {
        let h = FakeHost { headers: vec![(":path".into(), path.into())], ..FakeHost::default() };
        let mut state = RequestState::default();
        let action = on_request_headers(None, role, &h, &mut state);
        if refused {
            assert_eq!(action, Action::Pause, "{role:?} {path}");
            assert_eq!(h.sent.borrow()[0].0, 503);
            assert_eq!(h.sent.borrow()[0].2, UNAVAILABLE);
        } else {
            assert_eq!(action, Action::Continue, "{role:?} {path}");
            assert!(h.sent.borrow().is_empty());
        }
    }
}

#[test]
fn a_reply_the_host_refuses_becomes_the_fail_closed_503() {
    let h = host("multicloud-edge", &[(":method", "GET"), (":path", PUBLIC_JSON_PATH)]);
    h.refuse_replies.set(1);
    assert_eq!(run(&h).1, Action::Pause);
    let sent = h.sent.borrow();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].2.as_slice()), (503, UNAVAILABLE));
}

#[test]
fn an_allowed_api_read_loses_the_peers_token_and_names_the_peer() {
    let auth = format!("Bearer {}", api_token());
    let h = host(API_ROOT_ID, &[(":method", "GET"), (":path", "/api/v1/namespaces/abc/services"), ("authorization", &auth)]);
    assert_eq!(run(&h).1, Action::Continue);
    let writes = h.header_writes.borrow();
    assert_eq!(writes[0], ("authorization".to_string(), None), "the peer's token is removed");
    assert_eq!(writes[1].0, "x-multicloud-peer");
    assert_eq!(h.counted.borrow().as_slice(), ["multicloud_api.allowed.list"]);
}

#[test]
fn an_api_request_without_a_token_is_refused_and_counted() {
    let h = host(API_ROOT_ID, &[(":method", "GET"), (":path", "/api/v1/services")]);
    assert_eq!(run(&h).1, Action::Pause);
    assert_eq!(h.sent.borrow()[0].0, 401);
    assert!(h.counted.borrow()[0].starts_with("multicloud_api.refused."), "{:?}", h.counted.borrow());
    assert!(h.header_writes.borrow().is_empty());
}

#[test]
fn an_api_read_whose_token_the_host_cannot_strip_is_refused_503() {
    let auth = format!("Bearer {}", api_token());
    let h = FakeHost {
        refuse_headers: true,
        ..host(API_ROOT_ID, &[(":method", "GET"), (":path", "/api/v1/services"), ("authorization", &auth)])
    };
    assert_eq!(run(&h).1, Action::Pause, "never continues with the peer's token");
    assert_eq!(h.sent.borrow()[0].0, 503);
}

#[test]
fn a_watch_holds_its_slot_until_the_request_ends() {
    let auth = format!("Bearer {}", api_token());
    let h = host(API_ROOT_ID, &[(":method", "GET"), (":path", "/api/v1/services?watch=true"), ("authorization", &auth)]);
    let shared = ready(&h).unwrap();
    let max = multicloud_core::apiguard::ApiSettings::default().max_watches;
    let mut open: Vec<RequestState> = Vec::new();
    for _ in 0..max {
        let mut state = RequestState::default();
        assert_eq!(on_request_headers(Some(&shared), Role::Api, &h, &mut state), Action::Continue);
        open.push(state);
    }
    let mut one_more = RequestState::default();
    assert_eq!(on_request_headers(Some(&shared), Role::Api, &h, &mut one_more), Action::Pause, "over the watch limit");
    assert_eq!(h.sent.borrow().last().unwrap().0, 429);
    for mut state in open.drain(..1) {
        on_request_end(Some(&shared), &mut state);
    }
    let mut again = RequestState::default();
    assert_eq!(on_request_headers(Some(&shared), Role::Api, &h, &mut again), Action::Continue, "an ended watch gives its slot back");
}

#[test]
fn a_new_configuration_keeps_each_peers_budget() {
    let auth = format!("Bearer {}", api_token());
    let h = host(API_ROOT_ID, &[(":method", "GET"), (":path", "/api/v1/services"), ("authorization", &auth)]);
    let burst = multicloud_core::apiguard::ApiSettings::default().burst;
    let first = ready(&h).unwrap();
    // The clock stands still (FakeHost): the burst is all there is.
    for i in 0..burst {
        assert_eq!(on_request_headers(Some(&first), Role::Api, &h, &mut RequestState::default()), Action::Continue, "request {i}");
    }
    assert_eq!(on_request_headers(Some(&first), Role::Api, &h, &mut RequestState::default()), Action::Pause, "over the burst");
    // The agent pushes a configuration (the same, or another): no fresh burst.
    let second = ready(&h).unwrap();
    assert_eq!(on_request_headers(Some(&second), Role::Api, &h, &mut RequestState::default()), Action::Pause, "still over the burst");
    assert_eq!(h.sent.borrow().last().unwrap().0, 429);
}

#[test]
fn the_mesh_role_refuses_an_unknown_peer_and_logs_why() {
    let mut h = host(MESH_ROOT_ID, &[(":method", "GET"), (":authority", "foo.abc.svc.cluster.local")]);
    h.properties.insert("connection.requested_server_name".into(), b"outbound_.80_._.foo.abc.svc.cluster.local".to_vec());
    assert_eq!(run(&h).1, Action::Pause);
    let status = h.sent.borrow()[0].0;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(h.counted.borrow().len(), 1);
    assert!(h.logs.borrow().iter().any(|(_, m)| m.starts_with("multicloud mesh refused")), "{:?}", h.logs.borrow());
}

#[test]
fn a_secret_list_is_sent_to_the_empty_namespace_or_not_at_all() {
    let auth = format!("Bearer {}", api_token());
    let headers = [(":method", "GET"), (":path", "/api/v1/namespaces/abc/secrets?limit=5"), ("authorization", auth.as_str())];
    let h = host(API_ROOT_ID, &headers);
    assert_eq!(run(&h).1, Action::Continue);
    let writes = h.header_writes.borrow();
    assert!(
        writes.contains(&(":path".to_string(), Some("/api/v1/namespaces/istio-multicloud-empty/secrets?limit=5".to_string()))),
        "{writes:?}"
    );
    let h = FakeHost { refuse_headers: true, ..host(API_ROOT_ID, &headers) };
    assert_eq!(run(&h).1, Action::Pause, "a path that cannot be rewritten does not pass");
    assert_eq!(h.sent.borrow()[0].0, 503);
}
