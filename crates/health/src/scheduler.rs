//! The scheduler: runs every check on time, turns results into statuses,
//! and writes status changes (only those) to the registry.
//!
//! One dispatcher task keeps a min-heap of due jobs (probes, ttl deadlines,
//! flap settling, `deregister_critical_after` deadlines) and sleeps until the
//! earliest; a fixed pool of worker tasks takes due jobs from a bounded
//! queue and runs them. No task or timer exists per check: 10k checks are
//! 10k heap entries. A check's first probe is offset within its interval by
//! a hash of its id, so checks registered together do not probe in lockstep.
//! Every job carries the generation of the check it was planned for; a check
//! removed or changed gets a new generation, so its stale jobs are dropped
//! the moment they come due and the change takes effect at once.
//!
//! The check set follows the registry (informer style): a full load at
//! start, then every applied change reconciles the instance it touches.
//! Probe results are kept in the probe history and exported; they never
//! touch the store unless the check's status (or flapping) changes.

use crate::history::ProbeHistory;
use crate::influx::{InfluxExporter, ProbePoint};
use crate::metrics::HealthMetrics;
use crate::probe::{ProbeOutcome, Prober};
use muster_core::health::{CheckState, FlapRule, Thresholds, Transition};
use muster_core::{CheckKind, CheckRecord, InstanceRecord, Millis, Status};
use muster_registry::{Registry, RegistryError};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Probes running at once (the worker pool).
    pub concurrency: usize,
    pub flap: FlapRule,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            concurrency: 256,
            flap: FlapRule::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum JobKind {
    Probe,
    TtlDeadline,
    Settle,
    DeregisterCritical,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    at: Instant,
    kind: JobKind,
    /// A check id, or `service/instance` for `DeregisterCritical`.
    key: Arc<str>,
    generation: u64,
}

struct Scheduled {
    service: Arc<str>,
    instance: Arc<str>,
    check: CheckRecord,
    state: CheckState,
    generation: u64,
    ttl_deadline: Option<Instant>,
}

struct InstanceWatch {
    critical_since: Option<Instant>,
    generation: u64,
}

#[derive(Default)]
struct State {
    checks: HashMap<Arc<str>, Scheduled>,
    by_instance: HashMap<String, Vec<Arc<str>>>,
    instances: HashMap<String, InstanceWatch>,
    queue: BinaryHeap<Reverse<Job>>,
    next_generation: u64,
}

impl State {
    /// After a change that started flapping: look again when its window ends.
    fn schedule_settle(
        &mut self,
        id: &Arc<str>,
        tr: Option<Transition>,
        origin: Instant,
        flap: &FlapRule,
    ) {
        let Some(tr) = tr else { return };
        if tr.flap != muster_core::health::Flap::Started {
            return;
        }
        let Some(s) = self.checks.get(id) else { return };
        if let Some(ms) = s.state.settles_at(flap) {
            let generation = s.generation;
            self.push(
                origin + Duration::from_millis(ms),
                JobKind::Settle,
                id.clone(),
                generation,
            );
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn push(&mut self, at: Instant, kind: JobKind, key: Arc<str>, generation: u64) {
        self.queue.push(Reverse(Job {
            at,
            kind,
            key,
            generation,
        }));
    }

    /// The check a job was planned for, unless it was changed or removed since.
    fn current_mut(&mut self, job: &Job) -> Option<&mut Scheduled> {
        self.checks
            .get_mut(&job.key)
            .filter(|s| s.generation == job.generation)
    }

    fn is_current(&self, job: &Job) -> bool {
        match job.kind {
            JobKind::DeregisterCritical => self
                .instances
                .get(&*job.key)
                .is_some_and(|w| w.generation == job.generation),
            JobKind::TtlDeadline => self
                .checks
                .get(&job.key)
                .is_some_and(|s| s.generation == job.generation && s.ttl_deadline == Some(job.at)),
            _ => self
                .checks
                .get(&job.key)
                .is_some_and(|s| s.generation == job.generation),
        }
    }
}

/// What the engine works with.
pub struct HealthParts {
    pub registry: Arc<Registry>,
    pub prober: Prober,
    pub history: Arc<ProbeHistory>,
    pub exporter: Option<InfluxExporter>,
    pub metrics: Arc<HealthMetrics>,
    pub cfg: HealthConfig,
}

/// The health engine of one server.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    prober: Prober,
    history: Arc<ProbeHistory>,
    exporter: Option<InfluxExporter>,
    metrics: Arc<HealthMetrics>,
    cfg: HealthConfig,
    /// Never held across an `.await`.
    state: Mutex<State>,
    /// Wakes the dispatcher when a job earlier than its sleep may exist.
    wake: Notify,
    cancel: CancellationToken,
    /// Zero of the flap clock (tokio time, so paused-time tests drive it).
    origin: Instant,
}

fn key_of(service: &str, instance: &str) -> String {
    format!("{service}/{instance}")
}

/// Where in its interval a check first runs: a hash of its id, so a burst of
/// registrations spreads out evenly and the same check always lands alike.
fn first_offset(id: &str, interval: Millis) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(h % interval.0.max(1))
}

/// Time for flap windows: the tokio clock, so paused-time tests can drive it.
fn mono_ms(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

impl Health {
    /// Loads every check from the registry and starts the dispatcher, the
    /// workers and the follower. Tasks are tracked by `tracker` and stop on `cancel`.
    pub fn start(parts: HealthParts, tracker: &TaskTracker, cancel: CancellationToken) -> Health {
        let cfg = parts.cfg.clone();
        let origin = Instant::now();
        let health = Health {
            inner: Arc::new(Inner {
                registry: parts.registry,
                prober: parts.prober,
                history: parts.history,
                exporter: parts.exporter,
                metrics: parts.metrics,
                cfg: parts.cfg,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                cancel,
                origin,
            }),
        };
        // Subscribe before loading, so no change falls between the two.
        let changes = health.inner.registry.subscribe();
        let loaded = health.full_sync();
        let (tx, rx) = mpsc::channel::<Job>(cfg.concurrency * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        tracker.spawn(health.clone().dispatch(tx));
        for _ in 0..cfg.concurrency.max(1) {
            tracker.spawn(health.clone().work(rx.clone()));
        }
        tracker.spawn(health.clone().follow(changes, loaded));
        health
    }

    pub fn history(&self) -> &Arc<ProbeHistory> {
        &self.inner.history
    }

    /// Live state of a check: its current status and whether it flaps, as
    /// the engine sees it between writes.
    pub fn live(&self, check_id: &str) -> Option<(Status, bool)> {
        let st = self.inner.state.lock();
        st.checks
            .get(check_id)
            .map(|s| (s.state.status, s.state.flapping))
    }

    /// Loads every instance with checks; returns the revision it reflects.
    fn full_sync(&self) -> u64 {
        let (rev, recs) = self.inner.registry.instances_with_checks();
        let mut st = self.inner.state.lock();
        let present: std::collections::HashSet<String> =
            recs.iter().map(|r| key_of(&r.service, &r.id)).collect();
        let gone: Vec<String> = st
            .by_instance
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            Self::drop_instance(&mut st, &key, &self.inner.metrics);
        }
        for rec in &recs {
            Self::reconcile(&mut st, rec, &self.inner.metrics);
        }
        drop(st);
        self.inner.wake.notify_one();
        rev
    }

    fn drop_instance(st: &mut State, key: &str, metrics: &HealthMetrics) {
        if let Some(ids) = st.by_instance.remove(key) {
            for id in ids {
                if let Some(s) = st.checks.remove(&id) {
                    metrics.forget(&id, &s.service, &s.instance);
                }
            }
        }
        st.instances.remove(key);
    }

    /// Brings the scheduled checks of one instance in line with its record.
    /// A check whose definition did not change keeps its state and timers.
    fn reconcile(st: &mut State, rec: &InstanceRecord, metrics: &HealthMetrics) {
        let key = key_of(&rec.service, &rec.id);
        let now = Instant::now();
        let old_ids = st.by_instance.remove(&key).unwrap_or_default();
        for id in &old_ids {
            if !rec.checks.iter().any(|c| *c.id == **id)
                && let Some(s) = st.checks.remove(id)
            {
                metrics.forget(id, &s.service, &s.instance);
            }
        }
        let service: Arc<str> = rec.service.as_str().into();
        let instance: Arc<str> = rec.id.as_str().into();
        let mut ids = Vec::with_capacity(rec.checks.len());
        for c in &rec.checks {
            let id: Arc<str> = c.id.as_str().into();
            ids.push(id.clone());
            if let Some(s) = st.checks.get_mut(&id)
                && s.check.same_definition(c)
            {
                continue;
            }
            let generation = st.generation();
            let ttl_deadline = match c.kind {
                CheckKind::Ttl { ttl } => Some(now + ttl.as_duration()),
                _ => None,
            };
            st.checks.insert(
                id.clone(),
                Scheduled {
                    service: service.clone(),
                    instance: instance.clone(),
                    check: c.clone(),
                    state: CheckState::new(c.status, c.flapping),
                    generation,
                    ttl_deadline,
                },
            );
            match ttl_deadline {
                Some(at) => st.push(at, JobKind::TtlDeadline, id, generation),
                None => st.push(
                    now + first_offset(&id, c.interval),
                    JobKind::Probe,
                    id,
                    generation,
                ),
            }
        }
        if !ids.is_empty() {
            st.by_instance.insert(key.clone(), ids);
        }
        // deregister_critical_after: a deadline from the moment it turned critical.
        let critical = rec.status() == Status::Critical;
        match (critical, rec.deregister_critical_after) {
            (true, Some(after)) => {
                if st
                    .instances
                    .get(&key)
                    .is_none_or(|w| w.critical_since.is_none())
                {
                    let generation = st.generation();
                    st.instances.insert(
                        key.clone(),
                        InstanceWatch {
                            critical_since: Some(now),
                            generation,
                        },
                    );
                    st.push(
                        now + after.as_duration(),
                        JobKind::DeregisterCritical,
                        key.as_str().into(),
                        generation,
                    );
                }
            }
            _ => {
                st.instances.remove(&key);
            }
        }
    }

    /// Follows the registry: every change reconciles the instances it touches.
    async fn follow(
        self,
        mut changes: tokio::sync::broadcast::Receiver<Arc<muster_store::Change>>,
        mut synced: u64,
    ) {
        loop {
            let next = tokio::select! {
                c = changes.recv() => c,
                _ = self.inner.cancel.cancelled() => return,
            };
            match next {
                Ok(change) => {
                    if change.revision <= synced {
                        continue;
                    }
                    synced = change.revision;
                    for ev in &change.events {
                        if let Some((service, id)) = muster_registry::instance_of_key(&ev.kv.key) {
                            if self.nothing_to_do(service, id) {
                                continue;
                            }
                            let rec = self.inner.registry.instance_record(service, id);
                            let mut st = self.inner.state.lock();
                            match rec {
                                Some(rec) => Self::reconcile(&mut st, &rec, &self.inner.metrics),
                                None => Self::drop_instance(
                                    &mut st,
                                    &key_of(service, id),
                                    &self.inner.metrics,
                                ),
                            }
                        }
                    }
                    self.inner.wake.notify_one();
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tracing::warn!("health engine fell behind the registry; reloading every check");
                    synced = self.full_sync();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// An instance without checks that is not critical, and of which nothing
    /// is scheduled or watched: reconciling it would change nothing, so its
    /// record is not even decoded (most instances, most changes).
    fn nothing_to_do(&self, service: &str, id: &str) -> bool {
        let quiet = self
            .inner
            .registry
            .instance_checks_and_status(service, id)
            .is_none_or(|(checks, status)| !checks && status != Status::Critical);
        if !quiet {
            return false;
        }
        let key = key_of(service, id);
        let st = self.inner.state.lock();
        !st.by_instance.contains_key(&key) && !st.instances.contains_key(&key)
    }

    /// Pops due jobs and hands them to the workers.
    async fn dispatch(self, tx: mpsc::Sender<Job>) {
        loop {
            let (due, next) = {
                let now = Instant::now();
                let mut st = self.inner.state.lock();
                let mut due = Vec::new();
                while let Some(Reverse(job)) = st.queue.peek() {
                    if job.at > now || due.len() >= 1024 {
                        break;
                    }
                    let Some(Reverse(job)) = st.queue.pop() else {
                        break;
                    };
                    if st.is_current(&job) {
                        due.push(job);
                    }
                }
                (due, st.queue.peek().map(|Reverse(j)| j.at))
            };
            let more = due.len() >= 1024;
            for job in due {
                tokio::select! {
                    r = tx.send(job) => if r.is_err() { return },
                    _ = self.inner.cancel.cancelled() => return,
                }
            }
            if more {
                continue;
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.inner.wake.notified() => {}
                _ = self.inner.cancel.cancelled() => return,
            }
        }
    }

    async fn work(self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
        loop {
            let job = {
                let mut rx = rx.lock().await;
                tokio::select! {
                    j = rx.recv() => j,
                    _ = self.inner.cancel.cancelled() => None,
                }
            };
            let Some(job) = job else { return };
            match job.kind {
                JobKind::Probe => self.probe(job).await,
                JobKind::TtlDeadline => self.ttl_expired(job).await,
                JobKind::Settle => self.settle(job).await,
                JobKind::DeregisterCritical => self.deregister_critical(job).await,
            }
        }
    }

    async fn probe(&self, job: Job) {
        let origin = self.inner.origin;
        let Some((kind, timeout, interval)) = ({
            let st = self.inner.state.lock();
            st.checks
                .get(&job.key)
                .filter(|s| s.generation == job.generation)
                .map(|s| (s.check.kind.clone(), s.check.timeout, s.check.interval))
        }) else {
            return;
        };
        let started = Instant::now();
        self.inner
            .metrics
            .lag(started.saturating_duration_since(job.at));
        let requested_at = time::OffsetDateTime::now_utc();
        let outcome = tokio::select! {
            o = self.inner.prober.probe(&kind, timeout.as_duration()) => o,
            _ = self.inner.cancel.cancelled() => return,
        };
        let record =
            self.inner
                .history
                .record(&job.key, requested_at, timeout.as_duration(), &outcome);
        let write = {
            let mut st = self.inner.state.lock();
            let flap = self.inner.cfg.flap;
            let Some(s) = st.current_mut(&job) else {
                return;
            };
            self.inner
                .metrics
                .probed(&job.key, &s.service, &s.instance, kind.name(), &outcome);
            if let Some(exp) = &self.inner.exporter {
                exp.export(ProbePoint {
                    check: &job.key,
                    service: &s.service,
                    instance: &s.instance,
                    record: &record,
                });
            }
            let t = Thresholds::from(&s.check);
            let tr = s.state.observe(outcome.status, mono_ms(origin), &t, &flap);
            let write = self.decide_write(s, tr, &outcome);
            // Next run: on the planned grid, unless the probe overran it.
            let next = (job.at + interval.as_duration()).max(Instant::now());
            let generation = s.generation;
            st.push(next, JobKind::Probe, job.key.clone(), generation);
            st.schedule_settle(&job.key, tr, origin, &flap);
            write
        };
        self.inner.wake.notify_one();
        if let Some((tr, status, output, flapping)) = write {
            self.write(&job.key, tr, status, &output, flapping).await;
        }
    }

    /// What to store after a result: a transition, or the first output of a
    /// check whose stored output is still empty. Probes that change nothing
    /// write nothing.
    fn decide_write(
        &self,
        s: &mut Scheduled,
        tr: Option<Transition>,
        outcome: &ProbeOutcome,
    ) -> Option<(Option<Transition>, Status, String, bool)> {
        if tr.is_none() && s.check.status == s.state.status && s.check.flapping == s.state.flapping
        {
            return None;
        }
        s.check.status = s.state.status;
        s.check.flapping = s.state.flapping;
        s.check.output = outcome.output.clone();
        Some((tr, s.state.status, outcome.output.clone(), s.state.flapping))
    }

    async fn write(
        &self,
        check_id: &str,
        tr: Option<Transition>,
        status: Status,
        output: &str,
        flapping: bool,
    ) {
        match self
            .inner
            .registry
            .set_check_status(check_id, tr, status, output, flapping)
            .await
        {
            Ok(()) | Err(RegistryError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(check = check_id, error = %e, "cannot record a check's status")
            }
        }
    }

    async fn ttl_expired(&self, job: Job) {
        let origin = self.inner.origin;
        let write = {
            let mut st = self.inner.state.lock();
            let flap = self.inner.cfg.flap;
            let Some(s) = st.current_mut(&job) else {
                return;
            };
            let ttl = match s.check.kind {
                CheckKind::Ttl { ttl } => ttl,
                _ => return,
            };
            s.ttl_deadline = None;
            let tr = s.state.set(Status::Critical, mono_ms(origin), &flap);
            let output = format!("TTL expired: no update within {ttl}");
            let write = tr.map(|tr| {
                s.check.status = s.state.status;
                s.check.flapping = s.state.flapping;
                s.check.output = output.clone();
                (tr, s.state.flapping, output)
            });
            st.schedule_settle(&job.key, tr, origin, &flap);
            write
        };
        if let Some((tr, flapping, output)) = write {
            self.write(&job.key, Some(tr), Status::Critical, &output, flapping)
                .await;
        }
    }

    async fn settle(&self, job: Job) {
        let origin = self.inner.origin;
        let write = {
            let mut st = self.inner.state.lock();
            let flap = self.inner.cfg.flap;
            let Some(s) = st.current_mut(&job) else {
                return;
            };
            let now = mono_ms(origin);
            if s.state.settle(now, &flap) {
                s.check.flapping = false;
                let tr = Transition {
                    from: s.state.status,
                    to: s.state.status,
                    flap: muster_core::health::Flap::Settled,
                };
                Some((tr, s.state.status, s.check.output.clone()))
            } else {
                // Changed again meanwhile: look again when the new window ends.
                if let Some(ms) = s.state.settles_at(&flap) {
                    let generation = s.generation;
                    st.push(
                        origin + Duration::from_millis(ms),
                        JobKind::Settle,
                        job.key.clone(),
                        generation,
                    );
                }
                None
            }
        };
        self.inner.wake.notify_one();
        if let Some((tr, status, output)) = write {
            self.write(&job.key, Some(tr), status, &output, false).await;
        }
    }

    async fn deregister_critical(&self, job: Job) {
        let Some((service, instance)) = job.key.split_once('/') else {
            return;
        };
        let Some(rec) = self.inner.registry.instance_record(service, instance) else {
            return;
        };
        let Some(after) = rec.deregister_critical_after else {
            return;
        };
        if rec.status() != Status::Critical {
            return;
        }
        let body = muster_core::DeregisterBody {
            reason: Some(format!(
                "critical for longer than deregister_critical_after ({after})"
            )),
            error: None,
        };
        match self
            .inner
            .registry
            .deregister(service, instance, body)
            .await
        {
            Ok(_) => tracing::info!(
                service,
                instance,
                "deregistered after being critical for {after}"
            ),
            Err(RegistryError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(service, instance, error = %e, "cannot deregister a long-critical instance")
            }
        }
    }

    /// A passive update of a ttl check (`PUT /api/v1/checks/{id}/pass|warn|fail`):
    /// sets its status and restarts its ttl. `Err` when the check is not a ttl check.
    pub async fn ttl_update(
        &self,
        check_id: &str,
        status: Status,
        output: Option<String>,
    ) -> Result<(), RegistryError> {
        let now_ms = mono_ms(self.inner.origin);
        let write = {
            let mut st = self.inner.state.lock();
            let flap = self.inner.cfg.flap;
            let Some(s) = st.checks.get_mut(check_id) else {
                return Err(RegistryError::NotFound(format!(
                    "check {check_id:?} does not exist"
                )));
            };
            let CheckKind::Ttl { ttl } = s.check.kind else {
                return Err(RegistryError::Conflict(format!(
                    "check {check_id:?} is a {} check; only ttl checks take pass/warn/fail",
                    s.check.kind.name()
                )));
            };
            let deadline = Instant::now() + ttl.as_duration();
            s.ttl_deadline = Some(deadline);
            let tr = s.state.set(status, now_ms, &flap);
            // No output given: keep the last one.
            let output = output.unwrap_or_else(|| s.check.output.clone());
            let changed = tr.is_some() || s.check.output != output;
            s.check.status = s.state.status;
            s.check.flapping = s.state.flapping;
            s.check.output = output.clone();
            let generation = s.generation;
            let id: Arc<str> = check_id.into();
            st.push(deadline, JobKind::TtlDeadline, id.clone(), generation);
            st.schedule_settle(&id, tr, self.inner.origin, &flap);
            changed.then_some((tr, output))
        };
        self.inner.wake.notify_one();
        if let Some((tr, output)) = write {
            let flapping = self.live(check_id).is_some_and(|(_, f)| f);
            self.inner
                .registry
                .set_check_status(check_id, tr, status, &output, flapping)
                .await?;
        }
        Ok(())
    }

    /// An instance heartbeat passes its ttl checks.
    pub async fn heartbeat(
        &self,
        service: &str,
        instance: &str,
        status: Option<Status>,
        output: Option<String>,
    ) {
        let ids: Vec<Arc<str>> = {
            let st = self.inner.state.lock();
            st.by_instance
                .get(&key_of(service, instance))
                .map(|ids| {
                    ids.iter()
                        .filter(|id| {
                            st.checks
                                .get(*id)
                                .is_some_and(|s| matches!(s.check.kind, CheckKind::Ttl { .. }))
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        for id in ids {
            let _ = self
                .ttl_update(&id, status.unwrap_or(Status::Passing), output.clone())
                .await;
        }
    }
}
