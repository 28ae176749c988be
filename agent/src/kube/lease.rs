//! The coordination.k8s.io Lease that elects the one replica writing shared
//! state.

use super::{is_status, KubeOptions};
use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use std::time::Duration;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION_SECS: i32 = 15;
/// How often the holder renews (a third of the duration, as client-go does).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);

/// One replica's hold on the coordination.k8s.io Lease that elects the
/// writer of shared state. Updates use the Lease's resourceVersion, so two
/// replicas racing for it cannot both win.
pub struct LeaseGuard {
    api: Api<Lease>,
    name: String,
    holder: String,
    /// Until when this replica may act as leader: its last successful renewal
    /// plus the lease duration, less a margin for clock skew.
    held_until: Mutex<Option<Timestamp>>,
    /// Set by [`LeaseGuard::release`]: a replica that is shutting down
    /// neither renews nor competes any more.
    released: std::sync::atomic::AtomicBool,
    /// The Lease as this replica last wrote it: a renewal updates it
    /// directly (one request), reading the Lease only after a conflict.
    last: Mutex<Option<Lease>>,
}

/// Renewals are trusted for the lease duration less this margin.
const LEASE_SKEW_MARGIN: SignedDuration = SignedDuration::from_secs(5);

impl LeaseGuard {
    pub fn new(client: kube::Client, opts: &KubeOptions) -> Self {
        Self {
            api: Api::namespaced(client, &opts.namespace),
            name: opts.lease_name.clone(),
            holder: opts.holder_identity.clone(),
            held_until: Mutex::new(None),
            released: false.into(),
            last: Mutex::new(None),
        }
    }

    /// Gives the Lease up, if this replica holds it, so another replica takes
    /// over at its next attempt instead of waiting for the Lease to expire
    /// (as client-go's ReleaseOnCancel does: empty holder, duration 1 s).
    /// From then on this replica never acquires it again.
    pub async fn release(&self) -> Result<()> {
        self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        self.step_down().await
    }

    /// Gives the Lease up, if held, but may compete for it again later (a
    /// holder that cannot do its job steps aside for another replica).
    pub async fn step_down(&self) -> Result<()> {
        self.set_held(None);
        *self.last.lock() = None;
        let ns = self.api.namespace().unwrap_or_default().to_string();
        let what = format!("Lease {ns}/{}", self.name);
        let Some(mut lease) = self.api.get_opt(&self.name).await.with_context(|| format!("cannot read {what}"))? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %what, holder = %self.holder, "released the Lease; another replica takes over");
                Ok(())
            }
            // Someone else changed it in between: it is not ours to release any more.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot release {what}")),
        }
    }

    /// Whether this replica holds the Lease, as of its last successful
    /// acquisition or renewal (no API call).
    pub fn is_leader(&self) -> bool {
        self.held_until.lock().as_ref().is_some_and(|t| *t > Timestamp::now())
    }

    fn set_held(&self, held: Option<Timestamp>) {
        *self.held_until.lock() = held;
    }

    /// Creates the Lease if absent, renews it if this replica holds it, takes
    /// it over if its holder let it expire. `Ok(false)`: another replica holds it.
    /// Whether this replica may write shared state now: it holds the Lease,
    /// or takes it (a sink's write between terms). A replica that may not
    /// leaves the write to the holder.
    pub async fn may_write(&self) -> Result<bool> {
        Ok(self.is_leader() || self.try_acquire().await?)
    }

    pub async fn try_acquire(&self) -> Result<bool> {
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let now = Timestamp::now();
        let held = self.acquire_at(now).await;
        match &held {
            Ok(true) => self.set_held(Some(now + SignedDuration::from_secs(i64::from(LEASE_DURATION_SECS)) - LEASE_SKEW_MARGIN)),
            Ok(false) => self.set_held(None),
            Err(_) => {}
        }
        held
    }

    async fn acquire_at(&self, now: Timestamp) -> Result<bool> {
        let ns = self.api.namespace().unwrap_or_default().to_string();
        let what = format!("Lease {ns}/{}", self.name);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("cannot read {what}; grant the agent get/create/update on leases"))?;
        let Some(lease) = current else {
            let fresh = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECS),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(written) => {
                    *self.last.lock() = Some(written);
                    tracing::info!(lease = %what, holder = %self.holder, "created the Lease; this replica writes status");
                    Ok(true)
                }
                // Another replica created it first, or this one did: the
                // renewal task and a sink (WasmPluginSink) race at start.
                Err(e) if is_status(&e, 409) => self.held_by_us(&what).await,
                Err(e) => Err(e).with_context(|| format!("cannot create {what}")),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        if !ours && !lease_expired(&spec, now) {
            return Ok(false);
        }
        let mut next = lease;
        let s = next.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            s.holder_identity = Some(self.holder.clone());
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.lease_duration_seconds = Some(LEASE_DURATION_SECS);
        s.renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(written) => {
                *self.last.lock() = Some(written);
                if !ours {
                    tracing::info!(lease = %what, holder = %self.holder, "took over the expired Lease; this replica writes status");
                }
                Ok(true)
            }
            // Someone else renewed or took it in between (or this replica's
            // other task renewed it).
            Err(e) if is_status(&e, 409) => self.held_by_us(&what).await,
            Err(e) => Err(e).with_context(|| format!("cannot update {what}")),
        }
    }

    /// After a conflict: whether the Lease, as it is now, names this replica.
    async fn held_by_us(&self, what: &str) -> Result<bool> {
        let lease = self.api.get_opt(&self.name).await.with_context(|| format!("cannot read {what}"))?;
        let holder = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok(holder.as_deref() == Some(self.holder.as_str()))
    }

    /// Renews the Lease this replica holds with one request (the Lease as it
    /// last wrote it, its resourceVersion guarding the update); after a
    /// conflict, or with nothing cached, the full [`LeaseGuard::try_acquire`].
    pub async fn renew(&self) -> Result<bool> {
        let cached = self.last.lock().clone();
        let Some(mut lease) = cached.filter(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.holder.as_str()))
        else {
            return self.try_acquire().await;
        };
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let now = Timestamp::now();
        lease.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                *self.last.lock() = Some(written);
                self.set_held(Some(now + SignedDuration::from_secs(i64::from(LEASE_DURATION_SECS)) - LEASE_SKEW_MARGIN));
                Ok(true)
            }
            Err(e) if is_status(&e, 409) => {
                *self.last.lock() = None;
                self.try_acquire().await
            }
            Err(e) => Err(e).with_context(|| format!("cannot renew Lease {}", self.name)),
        }
    }

    /// The holder's side: renews every [`LEASE_RENEW_EVERY`] and returns
    /// once this replica no longer holds the Lease (another replica took
    /// it, or renewals failed until it lapsed).
    pub async fn hold(&self) {
        let mut tick = tokio::time::interval(LEASE_RENEW_EVERY);
        tick.tick().await; // the first tick is immediate: just acquired
        loop {
            tick.tick().await;
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(holder = %self.holder, "another replica holds the Lease now");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "leader lease renewal failed");
                    if !self.is_leader() {
                        return;
                    }
                }
            }
        }
    }

    /// A follower's side: watches the Lease (no polling) until it is free to
    /// take, released (no holder) or lapsed (not renewed within its
    /// duration), then returns after a random pause of up to a second, so
    /// that many replicas do not all compete at the same instant.
    pub async fn wait_until_vacant(&self) {
        use futures::StreamExt as _;
        use kube::runtime::{watcher, WatchStreamExt as _};
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut stream = watcher(self.api.clone(), config).default_backoff().boxed();
        let mut current: Option<LeaseSpec> = None;
        let mut listed = false;
        let mut failing = false;
        loop {
            // Vacant now?
            let now = Timestamp::now();
            let vacant = match &current {
                Some(spec) => lease_expired(spec, now),
                None => listed,
            };
            if vacant {
                let pause = Duration::from_millis(u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % 1000);
                tokio::time::sleep(pause).await;
                return;
            }
            // Else until the next change or the lapse, whichever is first.
            let lapse = current.as_ref().and_then(lapses_at).map(|at| {
                let left = at.duration_since(now).as_millis().max(0);
                tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0) + 50)
            });
            let next = tokio::select! {
                e = stream.next() => e,
                () = async { match lapse { Some(at) => tokio::time::sleep_until(at).await, None => futures::future::pending().await } } => continue,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "watching the Lease failed; retrying (grant list/watch on leases)");
                    }
                    failing = true;
                }
                Some(Ok(ev)) => {
                    failing = false;
                    match ev {
                        watcher::Event::Init => current = None,
                        watcher::Event::InitApply(l) | watcher::Event::Apply(l) => current = Some(l.spec.unwrap_or_default()),
                        watcher::Event::InitDone => listed = true,
                        watcher::Event::Delete(_) => {
                            current = None;
                            listed = true;
                        }
                    }
                }
            }
        }
    }
}

/// When a Lease held by someone lapses: renewTime + leaseDurationSeconds.
fn lapses_at(spec: &LeaseSpec) -> Option<Timestamp> {
    let MicroTime(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    Some(*renewed + SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS))))
}

/// Expired: no holder, or renewTime + leaseDurationSeconds is in the past.
pub(crate) fn lease_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS)));
    *renewed + duration < now
}
