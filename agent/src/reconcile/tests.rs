//! The reconciler against a fake remote (no network): conditions, the UUID
//! pin, last-good caching and the peers handed to the edge filter.

use super::*;
use crate::crd::IstioMulticloudSpec;
use crate::sources::DesiredPeer;
use crate::BoxFuture;
use ed25519_dalek::SigningKey;
use multicloud_core::metadata::{IngressGateway, PublicMetadata, ValidPublic};
use std::sync::Mutex;
use std::time::Duration;

const LOCAL: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
const REMOTE: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b";

fn root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

fn public_doc(uuid: &str) -> ValidPublic {
    let key = SigningKey::from_bytes(&[5; 32]);
    PublicMetadata {
        cluster_uuid: uuid.into(),
        root_ca: root_pem(),
        authn_key_pub: multicloud_core::pem::ed25519_public_key_to_pem(&key.verifying_key()),
        additional_authn_keys_pub: Vec::new(),
    }
    .validate()
    .unwrap()
}

fn private_doc() -> PrivateMetadata {
    PrivateMetadata {
        ingress_gateways: vec![IngressGateway { address: "127.0.2.1".into(), port: 15443 }],
        api_host: String::new(),
        network_name: "net-b".into(),
        services: vec![],
        mesh_mode: None,
    }
}

/// What the fake remote answers next.
#[derive(Clone)]
enum Remote {
    Up(Box<ValidPublic>),
    /// Up, but it does not know this cluster yet: 401 to the private document.
    NotLinked(Box<ValidPublic>),
    Down,
}

struct Fake(Arc<Mutex<Remote>>, Arc<Mutex<Vec<String>>>);

fn down() -> FetchError {
    FetchError::ConnectFailed { url: "https://b.example/metadata/public/public.json".into(), why: "connection refused".into() }
}

impl MetadataClient for Fake {
    fn fetch_public(&self) -> BoxFuture<'_, Result<ValidPublic, FetchError>> {
        let r = self.0.lock().unwrap().clone();
        Box::pin(async move {
            match r {
                Remote::Up(p) | Remote::NotLinked(p) => Ok(*p),
                Remote::Down => Err(down()),
            }
        })
    }
    fn fetch_private<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<PrivateMetadata, FetchError>> {
        self.1.lock().unwrap().push(token.to_string());
        let r = self.0.lock().unwrap().clone();
        Box::pin(async move {
            match r {
                Remote::Up(_) => Ok(private_doc()),
                Remote::NotLinked(_) => Err(FetchError::Unauthorized {
                    url: "https://b.example/metadata/private/multicluster.json".into(),
                    status: 401,
                    remote_reason: Some("TokenUnknownPeer".into()),
                    remote_error: None,
                }),
                Remote::Down => Err(down()),
            }
        })
    }
}

#[derive(Default)]
struct Recorder {
    statuses: Mutex<Vec<(String, IstioMulticloudStatus)>>,
    edges: Mutex<Vec<EdgeConfig>>,
}

impl StatusSink for Recorder {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, anyhow::Result<()>> {
        self.statuses.lock().unwrap().push((name.into(), status.clone()));
        Box::pin(async { Ok(()) })
    }
}

impl DataPlaneSink for Recorder {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        self.edges.lock().unwrap().push(dp.edge.clone());
        Box::pin(async { Ok(()) })
    }
}

fn desired(names: &[&str]) -> Desired {
    Desired {
        peers: names
            .iter()
            .map(|n| {
                let spec = IstioMulticloudSpec {
                    metadata_endpoint: format!("https://{n}.example/metadata"),
                    metadata: None,
                    enable_ingress_gateway: true,
                    api_proxy: None,
                };
                (n.to_string(), DesiredPeer { spec, generation: Some(3), status: None })
            })
            .collect(),
        facts: crate::data_plane::test_facts(LOCAL, root_pem()),
    }
}

struct Bed {
    remote: Arc<Mutex<Remote>>,
    tokens: Arc<Mutex<Vec<String>>>,
    rec: Arc<Recorder>,
    tx: watch::Sender<Option<Desired>>,
    metrics: Arc<Metrics>,
}

fn start() -> Bed {
    start_with(Timing {
        refresh: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        join_retry: Duration::from_millis(50),
        token_ttl_secs: 60,
    })
}

fn start_with(timing: Timing) -> Bed {
    let remote = Arc::new(Mutex::new(Remote::Up(Box::new(public_doc(REMOTE)))));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::new(Recorder::default());
    let (r2, t2) = (remote.clone(), tokens.clone());
    let factory: ClientFactory =
        Arc::new(move |_spec: &IstioMulticloudSpec| Ok(Arc::new(Fake(r2.clone(), t2.clone())) as Arc<dyn MetadataClient>));
    let (tx, rx) = watch::channel(Some(desired(&["cluster-b"])));
    let metrics = Arc::new(Metrics::default());
    let r = Reconciler {
        keys: crate::keys::fixed(SigningKey::from_bytes(&[1; 32])),
        factory,
        status: rec.clone(),
        sinks: vec![rec.clone()],
        metrics: metrics.clone(),
        timing,
        spiffe: SpiffeSettings::default(),
        api: Default::default(),
    };
    tokio::spawn(r.run(rx));
    Bed { remote, tokens, rec, tx, metrics }
}

impl Bed {
    async fn wait_status(&self, what: &str, f: impl Fn(&IstioMulticloudStatus) -> bool) -> IstioMulticloudStatus {
        self.wait_status_of("cluster-b", what, f).await
    }

    async fn wait_status_of(&self, object: &str, what: &str, f: impl Fn(&IstioMulticloudStatus) -> bool) -> IstioMulticloudStatus {
        for _ in 0..400 {
            if let Some((_, s)) = self.rec.statuses.lock().unwrap().iter().rev().find(|(n, _)| n == object) {
                if f(s) {
                    return s.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("status never showed {what}: {:#?}", self.rec.statuses.lock().unwrap().last());
    }

    fn last_edge(&self) -> EdgeConfig {
        self.rec.edges.lock().unwrap().last().cloned().expect("an edge configuration")
    }
}

fn cond<'a>(s: &'a IstioMulticloudStatus, t: &str) -> &'a crate::crd::Condition {
    s.condition(t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[tokio::test]
async fn a_reachable_remote_becomes_ready_and_joins_the_edge() {
    let bed = start();
    let s = bed.wait_status("Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    assert_eq!(s.remote_cluster_uuid.as_deref(), Some(REMOTE));
    assert_eq!(s.observed_generation, Some(3));
    let cache = s.metadata_cache.unwrap();
    assert_eq!(cache.public.unwrap().document.cluster_uuid, REMOTE);
    assert_eq!(cache.private.unwrap().document.network_name, "net-b");
    assert_eq!(bed.last_edge().peers.len(), 1);
    assert_eq!(bed.last_edge().peers[0].cluster_uuid, REMOTE);
    // The token presented for the private document: ours, for that remote, that scope.
    let token = bed.tokens.lock().unwrap().last().cloned().unwrap();
    let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let v =
        multicloud_core::token::verify(&token, REMOTE, unix(SystemTime::now()), 60, |sub| (sub == LOCAL).then_some(((), [key]))).unwrap();
    assert_eq!(v.scope, Some(Scope::PrivateMulticluster));
}

#[tokio::test]
async fn a_failing_remote_keeps_its_last_good_metadata_and_says_why() {
    let bed = start();
    let ready = bed.wait_status("Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    let fetched_at = ready.metadata_cache.as_ref().unwrap().public.as_ref().unwrap().fetched_at.clone();
    *bed.remote.lock().unwrap() = Remote::Down;
    let s = bed.wait_status("Ready=False", |s| s.condition(condition::READY).is_some_and(|c| c.status == "False")).await;
    assert_eq!(cond(&s, condition::READY).reason, "ConnectFailed");
    assert!(cond(&s, condition::PUBLIC).message.contains("serving the last good copy"), "{:?}", cond(&s, condition::PUBLIC));
    let cache = s.metadata_cache.as_ref().unwrap();
    assert_eq!(cache.public.as_ref().unwrap().fetched_at, fetched_at, "last good copy kept as it was");
    assert!(cache.private.is_some());
    assert_eq!(bed.last_edge().peers.len(), 1, "the peer stays in the edge while its remote is down");
    // And it comes back by itself.
    *bed.remote.lock().unwrap() = Remote::Up(Box::new(public_doc(REMOTE)));
    bed.wait_status("Ready=True again", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
}

#[tokio::test]
async fn a_changed_remote_uuid_is_refused_and_reported() {
    let bed = start();
    bed.wait_status("Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    let impostor = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a00ff";
    *bed.remote.lock().unwrap() = Remote::Up(Box::new(public_doc(impostor)));
    let s = bed.wait_status("RemoteUUIDChanged", |s| s.condition(condition::PUBLIC).is_some_and(|c| c.reason == "RemoteUUIDChanged")).await;
    assert_eq!(s.remote_cluster_uuid.as_deref(), Some(REMOTE), "the pin stays");
    assert_eq!(s.metadata_cache.as_ref().unwrap().public.as_ref().unwrap().document.cluster_uuid, REMOTE);
    assert_eq!(cond(&s, condition::READY).status, "False");
    assert!(bed.last_edge().peers.iter().all(|p| p.cluster_uuid == REMOTE), "the impostor never joins the edge");
    // Counted under the label the MulticloudRemoteUUIDChanged alert watches (tests/tests/deploy.rs).
    let line = r#"multicloud_agent_fetch_total{peer="cluster-b",document="public",result="uuid_changed"}"#;
    assert!(bed.metrics.render().contains(line), "{}", bed.metrics.render());
}

#[tokio::test]
async fn a_removed_object_leaves_the_edge() {
    let bed = start();
    bed.wait_status("Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    bed.tx.send_replace(Some(desired(&[])));
    for _ in 0..200 {
        if bed.last_edge().peers.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the removed peer is still in the edge configuration");
}

#[test]
fn backoff_grows_with_failures_and_stays_under_the_cap() {
    let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
    for f in 1..40 {
        let d = backoff(base, cap, f);
        assert!(d <= cap);
        assert!(d >= base.saturating_mul(1 << (f - 1).min(20)).min(cap) / 2);
    }
}

/// The delay for each failure count, at both ends of the jitter and in
/// the middle: it doubles from the base, stops at the cap, and the jitter
/// spans half to all of it.
#[test]
fn backoff_doubles_from_the_base_to_the_cap_with_half_to_full_jitter() {
    let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
    let ms = |f: u32, r: f64| backoff_at(base, cap, f, r).as_millis();
    assert_eq!([ms(1, 0.0), ms(1, 0.5), ms(1, 1.0)], [500, 750, 1000]);
    assert_eq!([ms(2, 0.0), ms(2, 1.0)], [1000, 2000]);
    assert_eq!([ms(6, 0.0), ms(6, 1.0)], [16_000, 32_000]);
    assert_eq!([ms(9, 1.0), ms(10, 1.0), ms(40, 0.0)], [256_000, 300_000, 150_000], "capped at 300 s");
    assert_eq!(ms(0, 1.0), 1000, "no failure yet: the base");
}

/// The delays themselves grow: the mean of the 1st vs the 6th delay (full
/// jitter: half to all of 1 s vs of 32 s). Moved here from the unused
/// `exchange::Backoff` when it was removed.
#[test]
fn backoff_delays_grow_on_average() {
    let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
    let (mut first, mut sixth) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..200 {
        first += backoff(base, cap, 1);
        sixth += backoff(base, cap, 6);
    }
    assert!(sixth > first * 8, "first {first:?} sixth {sixth:?}");
}

/// The steady refresh of a healthy peer: 30 s give or take 10 %.
#[test]
fn refresh_is_thirty_seconds_give_or_take_ten_percent() {
    for _ in 0..100 {
        let d = jitter(Timing::default().refresh, 0.1);
        assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(33), "{d:?}");
    }
}

/// A remote publishing its UUID in upper case is pinned, addressed and
/// served under the lower-cased UUID (the form the edge compares).
#[tokio::test]
async fn an_upper_case_remote_uuid_is_lower_cased_once() {
    let bed = start();
    *bed.remote.lock().unwrap() = Remote::Up(Box::new(public_doc(&REMOTE.to_ascii_uppercase())));
    bed.tx.send_replace(Some(desired(&["cluster-c"])));
    let s = bed.wait_status_of("cluster-c", "Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    assert_eq!(s.remote_cluster_uuid.as_deref(), Some(REMOTE));
    let token = bed.tokens.lock().unwrap().last().cloned().unwrap();
    let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
    multicloud_core::token::verify(&token, REMOTE, unix(SystemTime::now()), 60, |sub| (sub == LOCAL).then_some(((), [key])))
        .expect("the token's aud is the lower-cased UUID");
}

/// A remote that is up but does not know this cluster yet (its operator
/// links back later) answers 401 to the private document. The agent keeps
/// asking every `join_retry` however long that lasts, instead of backing
/// off, so the join completes within that delay of the remote's own link.
/// (Tokio's paused clock: the delays are exact and cost no real time.)
#[tokio::test(start_paused = true)]
async fn a_remote_that_has_not_linked_us_yet_is_asked_again_without_backoff() {
    let join_retry = Duration::from_secs(2);
    let bed = start_with(Timing {
        refresh: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(300),
        join_retry,
        token_ttl_secs: 60,
    });
    *bed.remote.lock().unwrap() = Remote::NotLinked(Box::new(public_doc(REMOTE)));
    bed.tx.send_replace(Some(desired(&["cluster-c"])));
    let s = bed
        .wait_status_of("cluster-c", "Unauthorized", |s| s.condition(condition::PRIVATE).is_some_and(|c| c.reason == "Unauthorized"))
        .await;
    assert_eq!(cond(&s, condition::PUBLIC).status, "True", "the public exchange worked");
    // Two minutes of 401s: with backoff the next attempt would be minutes away.
    let before = bed.tokens.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let asked = bed.tokens.lock().unwrap().len() - before;
    assert!(asked >= 120 / 3, "asked {asked} times in 120 s; every ~2 s expected");
    // The remote links back: Ready within one join retry (plus its 20 % jitter).
    *bed.remote.lock().unwrap() = Remote::Up(Box::new(public_doc(REMOTE)));
    let t = tokio::time::Instant::now();
    bed.wait_status_of("cluster-c", "Ready=True", |s| s.condition(condition::READY).is_some_and(|c| c.status == "True")).await;
    assert!(t.elapsed() <= join_retry.mul_f64(1.25), "ready {:?} after the remote linked back", t.elapsed());
}

/// A remote that is down is still backed off (the short retry is for 401 only).
#[tokio::test(start_paused = true)]
async fn a_remote_that_is_down_is_backed_off() {
    let bed = start_with(Timing {
        refresh: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(300),
        join_retry: Duration::from_secs(2),
        token_ttl_secs: 60,
    });
    *bed.remote.lock().unwrap() = Remote::Down;
    bed.tx.send_replace(Some(desired(&["cluster-c"])));
    bed.wait_status_of("cluster-c", "ConnectFailed", |s| s.condition(condition::READY).is_some_and(|c| c.reason == "ConnectFailed")).await;
    let count = || bed.rec.statuses.lock().unwrap().iter().filter(|(n, _)| n == "cluster-c").count();
    let before = count();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let attempts = count() - before;
    // 1+2+4+...: at most 7 attempts fit in 120 s even at the low end of the jitter.
    assert!(attempts <= 8, "{attempts} attempts in 120 s: not backed off");
}
