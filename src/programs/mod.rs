//! Coaching programs and the proactive engine: enrol people, reach them at the right local
//! hour, nudge them when they go quiet, stop the moment they say STOP — exactly once.
//!
//! Where it sits: beside the router. A program's messages are stored in the contact's
//! conversation and sent through the same outbox as every reply.
//!
//! - **Definitions** ([`definition`]) are validated as a whole graph when saved; publishing makes
//!   a version, and an enrolment keeps the version it started on.
//! - **The fire table** holds everything the engine will do at a time: a wait ending, an ask's
//!   timeout, an inactivity nudge, an enrolment's start. The engine claims due fires
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the single writer on SQLite) and, in the same
//!   transaction, re-checks that the fire still holds (the enrolment's epoch, opt-out, an open
//!   hand-off, quiet hours, the daily cap), queues the messages with their outbox rows, moves
//!   the enrolment and adds its next fire. A fire is keyed by (enrolment, kind, step, version,
//!   epoch), and the enrolment's update is guarded by the epoch it was read at: exactly once
//!   across crashes, restarts and several gateway processes.
//! - **No hot polling**: the engine sleeps until the next due fire (at most a minute) and is
//!   woken when an earlier one may have been added.
//! - **Replies** to an `ask` are matched in the router's turn ([`Programs::handle_turn`]); the
//!   answer, the next messages and the enrolment's move commit with the turn.
//! - **Time** ([`time`]) is each contact's own zone (the tenant's default otherwise), with
//!   DST-correct arithmetic; quiet hours and the daily cap defer, never drop.

pub mod definition;
pub mod flow;
pub mod time;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use metrics::counter;
use serde_json::{Map, Value, json};
use sqlx::Executor;
use switchboard_channel::Content;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::fire_batch::{self, Writes};
use crate::store::messages::PendingTurn;
use crate::store::programs::{self as sql, ContactRow, EnrollmentRow, FireRow, Thread};
use crate::store::{Store, WriteTx, new_id, now_ms};
use definition::{CatchUp, Program, Step};
use flow::{Generated, Outcome, State, Waiting};
use time::QuietHours;

/// A fire this much past due counts as late (it fell due while the gateway was down or busy).
const LATE_AFTER_MS: i64 = 5 * 60_000;
/// A contact whose conversation is with a person: program messages wait this long, then look again.
const HANDOFF_RECHECK_MS: i64 = 30 * 60_000;
/// WhatsApp sends free-form messages only within this long after the contact last wrote.
const WHATSAPP_WINDOW_MS: i64 = 24 * 3_600_000;
/// Fires claimed per transaction.
const CLAIM_BATCH: i64 = 64;
/// Claimers at once in one process on PostgreSQL.
const PG_CLAIMERS: usize = 8;
/// Longest the engine sleeps without looking at the table.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Default quiet hours and daily cap of a tenant that set none (SPEC §5).
pub const DEFAULT_QUIET_HOURS: &str = "21:00-08:00";
pub const DEFAULT_DAILY_CAP: i64 = 3;

/// The engine's clock: real time, or (tests, previews) a time set by hand.
#[derive(Debug, Default)]
pub struct Clock {
    /// 0: real time; otherwise the frozen time in ms.
    frozen: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> i64 {
        match self.frozen.load(Ordering::SeqCst) {
            0 => now_ms(),
            t => t,
        }
    }

    /// Freezes the clock at `ms`. The background loop stops acting on its own: tests drive it
    /// with [`Programs::run_due`].
    pub fn set(&self, ms: i64) {
        self.frozen.store(ms.max(1), Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        let now = self.now();
        self.set(now + ms);
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst) != 0
    }
}

/// Writes a `generate` step's text with the tenant's model.
#[async_trait]
pub trait Generator: Send + Sync {
    /// The text, or `None` when the model is down, slow or wrote nothing (the step's fallback
    /// is sent).
    async fn generate(&self, tenant_id: &str, contact_id: &str, prompt: &str) -> Option<String>;

    /// The longest the engine waits for one text before sending the fallback.
    fn time_limit(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Why an enrolment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the program is not published yet: POST /v1/programs/{{id}}/publish first")]
    NotPublished,
    #[error("no such program")]
    NoProgram,
    #[error("the contact has no channel to be reached on")]
    NoChannel,
    #[error("no such contact")]
    NoContact,
    #[error("the contact has opted out of proactive messages")]
    OptedOut,
    #[error("the program does not run on {0} (its `channels` leave it out)")]
    WrongChannel(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Other(e.into())
    }
}

/// An enrolment made (or found: enrolling is idempotent).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrolled {
    pub enrollment_id: String,
    pub status: String,
    pub created: bool,
}

/// What `/join` (or a keyword) leads to.
enum Joined {
    /// Enrol in this program; its first steps are the reply.
    Start {
        program_id: String,
        version: i64,
        program: Arc<Program>,
        contact_id: String,
    },
    /// A text reply (no such program, opted out).
    Text(String),
}

/// One entry of a preview.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreviewFire {
    pub step: String,
    pub at_utc: String,
    pub at_local: String,
    pub timezone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shifted_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_change: Option<String>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Programs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Clock,
    default_timezone: String,
    /// Parsed published versions: (program id, version) → program. Versions never change.
    cache: Mutex<HashMap<(String, i64), Arc<Program>>>,
    wake: Notify,
    outbox_wake: Arc<Notify>,
    generator: Option<Arc<dyn Generator>>,
    /// Texts written for `generate` steps of fires waiting to run again: fire id → texts.
    generated: Mutex<HashMap<String, Generated>>,
    /// The tenants' moderation policies, applied to every program message before it is sent.
    moderation: std::sync::OnceLock<Arc<crate::moderation::Moderation>>,
    /// What moderation found in texts the model wrote, until their message is written:
    /// (contact, step) → the finding.
    screened: Mutex<HashMap<(String, String), Screened>>,
    shutdown: CancellationToken,
}

/// Moderation's finding on a `generate` step's text.
struct Screened {
    at: std::time::Instant,
    /// What the model wrote.
    text: String,
    hits: Vec<crate::moderation::Hit>,
    classifier: Option<crate::moderation::classifier::Classification>,
    /// The step's fallback was sent instead (the text was held or blocked).
    replaced: bool,
}

/// What processing one fire did.
#[derive(Debug)]
enum Processed {
    Done { sent: usize },
    Deferred,
    Dropped,
    NeedsGeneration(flow::GenerateRequest),
}

/// What a batch of fires read, to decide each fire from.
struct Batch {
    loaded: fire_batch::Loaded,
    /// (program, version) → the program, or why it could not be read.
    programs: HashMap<(String, i64), Result<Arc<Program>, String>>,
    /// Contact → its time rules.
    rules: HashMap<String, Rules>,
    /// Contact → proactive messages sent on its local day so far.
    sent_today: HashMap<String, i64>,
    /// Tenant → its moderation policy (none without moderation).
    policies: HashMap<String, Arc<crate::moderation::Active>>,
}

/// The fire counter's name.
const FIRES: &str = "switchboard_fires_total";

/// The time rules for one contact.
struct Rules {
    tz: jiff::tz::TimeZone,
    timezone: String,
    quiet: Option<QuietHours>,
    cap: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Programs {
    pub fn new(
        store: Store,
        outbox_wake: Arc<Notify>,
        default_timezone: &str,
        generator: Option<Arc<dyn Generator>>,
    ) -> Programs {
        Programs {
            inner: Arc::new(Inner {
                store,
                clock: Clock::default(),
                default_timezone: default_timezone.to_owned(),
                cache: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                outbox_wake,
                generator,
                generated: Mutex::new(HashMap::new()),
                moderation: std::sync::OnceLock::new(),
                screened: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Moderates program messages with the tenants' policies from now on.
    pub fn set_moderation(&self, moderation: Arc<crate::moderation::Moderation>) {
        let _ = self.inner.moderation.set(moderation);
    }

    /// The tenant's moderation policy (none without moderation).
    async fn policy(
        &self,
        tenant_id: &str,
    ) -> anyhow::Result<Option<Arc<crate::moderation::Active>>> {
        match self.inner.moderation.get() {
            Some(m) => Ok(Some(m.active(tenant_id).await?)),
            None => Ok(None),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Wakes the engine (a fire earlier than it sleeps until may have been added).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The published version `version` of a program, parsed (cached).
    pub async fn version(&self, program_id: &str, version: i64) -> anyhow::Result<Arc<Program>> {
        let key = (program_id.to_owned(), version);
        if let Some(p) = lock(&self.inner.cache).get(&key) {
            return Ok(p.clone());
        }
        let text = self
            .inner
            .store
            .program_version(program_id, version)
            .await?
            .with_context(|| format!("program {program_id} has no version {version}"))?;
        let program = Arc::new(Program::from_stored(&text)?);
        lock(&self.inner.cache).insert(key, program.clone());
        Ok(program)
    }

    /// The rules for a contact: zone, quiet hours, daily cap (contact → tenant → defaults).
    async fn rules(&self, contact: &ContactRow) -> anyhow::Result<Rules> {
        let settings = sql::tenant_settings(&self.inner.store, &contact.tenant_id).await?;
        Ok(self.rules_from(contact, &settings))
    }

    fn rules_from(&self, contact: &ContactRow, settings: &Value) -> Rules {
        let tenant = settings.get("programs").cloned().unwrap_or(Value::Null);
        let timezone = contact
            .timezone
            .clone()
            .filter(|t| time::zone(t).is_some())
            .or_else(|| {
                tenant
                    .get("timezone")
                    .and_then(Value::as_str)
                    .filter(|t| time::zone(t).is_some())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.inner.default_timezone.clone());
        let tz = time::zone(&timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        let quiet_text = contact
            .quiet_hours
            .clone()
            .or_else(|| match tenant.get("quiet_hours") {
                Some(Value::String(q)) => Some(q.clone()),
                Some(Value::Null) => Some("00:00-00:00".into()),
                _ => None,
            });
        let quiet = quiet_text
            .unwrap_or_else(|| DEFAULT_QUIET_HOURS.to_owned())
            .parse::<QuietHours>()
            .ok();
        let cap = tenant
            .get("max_proactive_per_day")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_DAILY_CAP);
        Rules {
            tz,
            timezone,
            quiet,
            cap,
        }
    }

    fn state(e: &EnrollmentRow, contact: &ContactRow, rules: &Rules) -> State {
        State {
            step: e.step.clone(),
            waiting: Waiting::parse(&e.waiting),
            steps_done: e.steps_done,
            reprompts: e.reprompts,
            answers: e.answers.clone(),
            fields: contact.fields.clone(),
            tags: contact.tags.clone(),
            fields_read: contact.fields.clone(),
            tags_read: contact.tags.clone(),
            contact_name: contact.display_name.clone().unwrap_or_default(),
            timezone: rules.timezone.clone(),
            tz: rules.tz.clone(),
            streak: e.streak,
        }
    }

    // ------------------------------------------------------------------ enrolment

    /// Enrols a contact in a program's current version (idempotent: a running enrolment is
    /// returned as it is). Its first steps run as a fire due now, under the proactive rules.
    pub async fn enroll(
        &self,
        tenant_id: &str,
        program_id: &str,
        contact_id: &str,
        channel_id: Option<&str>,
        source: &str,
    ) -> Result<Enrolled, EnrollError> {
        let store = &self.inner.store;
        let program = store
            .program(tenant_id, program_id)
            .await?
            .ok_or(EnrollError::NoProgram)?;
        if program.current_version == 0 {
            return Err(EnrollError::NotPublished);
        }
        let contact = store
            .contact_row(contact_id)
            .await?
            .filter(|c| c.tenant_id == tenant_id)
            .ok_or(EnrollError::NoContact)?;
        if contact.opted_out_at.is_some() {
            return Err(EnrollError::OptedOut);
        }
        let channel_id = match channel_id {
            Some(c) => c.to_owned(),
            None => store
                .contact_last_channel(contact_id)
                .await?
                .ok_or(EnrollError::NoChannel)?,
        };
        let parsed = self.version(program_id, program.current_version).await?;
        let kind = store.channel_by_id(&channel_id).await?.kind;
        if !parsed.runs_on(kind.as_str()) {
            return Err(EnrollError::WrongChannel(kind.as_str().to_owned()));
        }
        let now = self.inner.clock.now();
        let mut w = store.begin_write().await?;
        if let Some(existing) = sql::running_enrollment(&mut w, program_id, contact_id).await? {
            return Ok(Enrolled {
                enrollment_id: existing.id,
                status: existing.status,
                created: false,
            });
        }
        let e = new_enrollment(
            tenant_id,
            program_id,
            program.current_version,
            contact_id,
            &channel_id,
            parsed.start(),
            now,
        );
        sql::insert_enrollment(&mut w, &e).await?;
        sql::add_fire(&mut w, &e, "start", parsed.start(), 0, now, now).await?;
        let rules = self.rules(&contact).await?;
        first_fires(&mut w, &e, &parsed, &rules, now).await?;
        sql::audit(
            &mut w,
            tenant_id,
            "program.enrolled",
            &e.id,
            json!({ "program_id": program_id, "version": e.version, "contact_id": contact_id, "source": source }),
        )
        .await?;
        w.commit().await?;
        counter!("switchboard_enrollments_total", "source" => source.to_owned()).increment(1);
        self.wake();
        Ok(Enrolled {
            enrollment_id: e.id,
            status: "active".into(),
            created: true,
        })
    }

    /// Pauses, resumes or stops an enrolment. `None`: no such enrolment.
    pub async fn set_status(
        &self,
        tenant_id: &str,
        enrollment_id: &str,
        status: &str,
    ) -> anyhow::Result<Option<EnrollmentRow>> {
        let now = self.inner.clock.now();
        let mut w = self.inner.store.begin_write().await?;
        let Some(mut e) =
            sql::enrollment_for_update(&mut w, self.inner.store.backend(), enrollment_id).await?
        else {
            return Ok(None);
        };
        if e.tenant_id != tenant_id {
            return Ok(None);
        }
        let from = e.status.clone();
        match (from.as_str(), status) {
            ("active", "paused") => {
                sql::cancel_enrollment_fires(&mut w, &e.id, false, "paused", now).await?;
                e.status = "paused".into();
            }
            ("paused", "active") => {
                e.status = "active".into();
                let resumed = sql::resume_fires(&mut w, &e.id, e.epoch, now).await?;
                if resumed == 0 && e.waiting == "wait" {
                    // Nothing to put back (paused before its first fire was written): go on now.
                    sql::add_fire(&mut w, &e, "step", &e.step.clone(), e.epoch, now, now).await?;
                }
                let program = self.version(&e.program_id, e.version).await?;
                if !program.definition.checkins.is_empty()
                    && let Some(contact) = sql::contact_row(&mut *w.tx, &e.contact_id).await?
                {
                    let rules = self.rules(&contact).await?;
                    schedule_checkins(&mut w, &e, &program, &rules, now).await?;
                }
            }
            ("active" | "paused", "stopped") => {
                sql::cancel_enrollment_fires(&mut w, &e.id, false, "stopped", now).await?;
                e.status = "stopped".into();
                e.stopped_reason = Some("stopped by an admin".into());
            }
            (a, b) if a == b => return Ok(Some(e)),
            _ => anyhow::bail!("an enrolment that is {from} cannot become {status}"),
        }
        let epoch = e.epoch;
        sql::save_enrollment(&mut w, &e, epoch, now).await?;
        sql::audit(
            &mut w,
            tenant_id,
            "program.enrollment_status",
            &e.id,
            json!({ "from": from, "to": status }),
        )
        .await?;
        w.commit().await?;
        self.wake();
        Ok(Some(e))
    }

    /// An event for a contact: every published program that starts on it enrols them, and each
    /// of their enrolments waiting on it goes on (its step's fire falls due now, under the
    /// proactive rules). The enrolments made, and the ids of those moved on.
    pub async fn on_event(
        &self,
        tenant_id: &str,
        contact_id: &str,
        event: &str,
    ) -> anyhow::Result<(Vec<(String, Enrolled)>, Vec<String>)> {
        let advanced = self.advance_on_event(contact_id, event).await?;
        let enrolled = self.enroll_on_event(tenant_id, contact_id, event).await?;
        Ok((enrolled, advanced))
    }

    async fn advance_on_event(&self, contact_id: &str, event: &str) -> anyhow::Result<Vec<String>> {
        let now = self.inner.clock.now();
        let mut w = self.inner.store.begin_write().await?;
        let mut advanced = Vec::new();
        for e in sql::active_enrollments(&mut w, contact_id).await? {
            if e.waiting != "wait" {
                continue;
            }
            let program = self.version(&e.program_id, e.version).await?;
            let waits_on_it = matches!(
                program.step(&e.step),
                Some(Step::Wait(wait)) if wait.event.as_deref() == Some(event)
            );
            if waits_on_it {
                sql::fire_step_now(&mut w, &e, now).await?;
                sql::audit(
                    &mut w,
                    &e.tenant_id,
                    "program.event",
                    &e.id,
                    json!({ "event": event, "step": e.step }),
                )
                .await?;
                advanced.push(e.id.clone());
            }
        }
        w.commit().await?;
        if !advanced.is_empty() {
            self.wake();
        }
        Ok(advanced)
    }

    async fn enroll_on_event(
        &self,
        tenant_id: &str,
        contact_id: &str,
        event: &str,
    ) -> anyhow::Result<Vec<(String, Enrolled)>> {
        let mut enrolled = Vec::new();
        for (program_id, version) in self.inner.store.published_programs(tenant_id).await? {
            let program = self.version(&program_id, version).await?;
            if program.definition.events.iter().any(|e| e == event) {
                match self
                    .enroll(tenant_id, &program_id, contact_id, None, "event")
                    .await
                {
                    Ok(e) => enrolled.push((program_id, e)),
                    Err(EnrollError::OptedOut) => {}
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
        }
        Ok(enrolled)
    }

    // ------------------------------------------------------------------ the engine loop

    /// Runs the engine until shutdown: sleeps until the next due fire, runs what is due.
    pub fn spawn(&self, tracker: &tokio_util::task::TaskTracker) {
        let this = self.clone();
        tracker.spawn(async move { this.run().await });
    }

    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    async fn run(self) {
        let mut failures = 0u32;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            let mut sleep = MAX_SLEEP;
            if !self.inner.clock.is_frozen() {
                match self.run_due().await {
                    Ok(_) => {
                        failures = 0;
                        match self.inner.store.next_fire_due().await {
                            Ok(Some(due)) => {
                                let wait = (due - self.inner.clock.now()).max(0) as u64;
                                sleep = sleep.min(Duration::from_millis(wait));
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "reading the next fire failed"),
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        sleep = Duration::from_millis(250 * 2u64.pow(failures.min(7)));
                        tracing::warn!(error = %format!("{e:#}"), ?sleep, "the program engine failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Runs every fire due now (by the engine's clock); how many were processed. On PostgreSQL
    /// several claimers work at once (`SKIP LOCKED` gives each its own fires): a batch waits on
    /// round trips, not on the CPU.
    pub async fn run_due(&self) -> anyhow::Result<usize> {
        if self.inner.store.backend() == crate::store::Backend::Postgres {
            let claimers = (0..PG_CLAIMERS).map(|_| self.run_due_alone());
            let done = futures::future::try_join_all(claimers).await?;
            return Ok(done.into_iter().sum());
        }
        self.run_due_alone().await
    }

    async fn run_due_alone(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let (processed, later, generate) = self.run_batch().await?;
            total += processed;
            if !generate.is_empty() {
                for (fire_id, tenant_id, contact_id, request) in generate {
                    let text = self.generate(&tenant_id, &contact_id, &request).await;
                    lock(&self.inner.generated)
                        .entry(fire_id)
                        .or_default()
                        .insert(request.step, text);
                }
                continue;
            }
            // A full batch may leave more due; a contact's second fire waited for the next one.
            if later == 0 && processed < CLAIM_BATCH as usize {
                return Ok(total);
            }
        }
    }

    async fn generate(
        &self,
        tenant_id: &str,
        contact_id: &str,
        request: &flow::GenerateRequest,
    ) -> String {
        let written = match &self.inner.generator {
            Some(g) => tokio::time::timeout(
                g.time_limit(),
                g.generate(tenant_id, contact_id, &request.prompt),
            )
            .await
            .ok()
            .flatten()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
            None => None,
        };
        let outcome = if written.is_some() {
            "model"
        } else {
            "fallback"
        };
        counter!("switchboard_program_generated_total", "outcome" => outcome).increment(1);
        let Some(text) = written else {
            return request.fallback.clone();
        };
        // The model's text passes the tenant's policy (the rules, and the classifier when it
        // checks answers) before anyone sees it: held or blocked, the step's fallback is sent
        // instead, and the flag on that message keeps what the model wrote.
        let Some(moderation) = self.inner.moderation.get() else {
            return text;
        };
        let active = match moderation.active(tenant_id).await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no moderation policy for a generated text; sending the step's fallback");
                return request.fallback.clone();
            }
        };
        let (verdict, classifier) = moderation.judge(&active, &text, false).await;
        if !verdict.flagged() {
            return text;
        }
        let replaced = matches!(
            verdict.action,
            crate::moderation::Action::Hold | crate::moderation::Action::Block
        );
        let mut screened = lock(&self.inner.screened);
        // Findings whose message was never written (its fire went stale) do not pile up.
        screened.retain(|_, s| s.at.elapsed() < Duration::from_secs(3600));
        screened.insert(
            (contact_id.to_owned(), request.step.clone()),
            Screened {
                at: std::time::Instant::now(),
                text: text.clone(),
                hits: verdict
                    .hits
                    .into_iter()
                    .filter(|h| replaced || h.rule.starts_with("classifier:"))
                    .collect(),
                classifier,
                replaced,
            },
        );
        if replaced {
            counter!("switchboard_program_generated_total", "outcome" => "moderated").increment(1);
            request.fallback.clone()
        } else {
            text
        }
    }

    /// One transaction: claim due fires, read what they need in a few statements, decide each
    /// in memory, write all their decisions in a few more (see `store::fire_batch`). A fire that
    /// cannot be decided fails alone; a combined write that fails is written again fire by fire,
    /// each in its own savepoint. Returns how many fires were done, how many wait for the next
    /// batch (a contact's second fire in one batch waits: each batch moves a contact once), and
    /// the texts to generate first.
    #[allow(clippy::type_complexity)]
    async fn run_batch(
        &self,
    ) -> anyhow::Result<(
        usize,
        usize,
        Vec<(String, String, String, flow::GenerateRequest)>,
    )> {
        let store = &self.inner.store;
        let backend = store.backend();
        let now = self.inner.clock.now();
        let mut w = store.begin_write().await?;
        let claimed = sql::claim_due_fires(&mut w, backend, now, CLAIM_BATCH).await?;
        if claimed.is_empty() {
            return Ok((0, 0, Vec::new()));
        }
        let mut contacts = std::collections::HashSet::new();
        let (fires, later): (Vec<FireRow>, Vec<FireRow>) = claimed
            .into_iter()
            .partition(|f| contacts.insert(f.contact_id.clone()));
        let ids: Vec<String> = fires.iter().map(|f| f.enrollment_id.clone()).collect();
        let loaded = fire_batch::load(&mut w, backend, &ids).await?;
        let batch = self.prepare(&mut w, loaded, now).await?;

        let mut failed: Vec<(String, String)> = Vec::new();
        let mut generate = Vec::new();
        let mut decided: Vec<(&FireRow, Writes, usize)> = Vec::new();
        for fire in &fires {
            let generated = lock(&self.inner.generated)
                .get(&fire.id)
                .cloned()
                .unwrap_or_default();
            let mut fx = Writes::default();
            match self.decide(fire, &batch, now, &generated, &mut fx) {
                Ok(Processed::NeedsGeneration(request)) => generate.push((
                    fire.id.clone(),
                    fire.tenant_id.clone(),
                    fire.contact_id.clone(),
                    request,
                )),
                Ok(done) => {
                    let sent = match done {
                        Processed::Done { sent } => sent,
                        _ => 0,
                    };
                    decided.push((fire, fx, sent));
                }
                Err(e) => {
                    tracing::warn!(fire = %fire.id, error = %format!("{e:#}"), "a fire failed; it will be retried");
                    failed.push((fire.id.clone(), format!("{e:#}")));
                }
            }
        }

        // All at once; if that fails, fire by fire.
        (&mut *w.tx).execute("SAVEPOINT batch").await?;
        let mut all = Writes::default();
        let mut written: Vec<(Vec<_>, usize)> = Vec::new();
        for (_, fx, sent) in &mut decided {
            let fx = std::mem::take(fx);
            written.push((fx.counts().to_vec(), *sent));
            all.merge(fx);
        }
        if let Err(e) = all.write(&mut w, backend, now).await {
            tracing::warn!(error = %format!("{e:#}"), "a batch of fires failed to write; writing them one by one");
            (&mut *w.tx).execute("ROLLBACK TO SAVEPOINT batch").await?;
            written.clear();
            for (fire, _, sent) in &decided {
                // Decided again: the first decision's writes were consumed by the failed write.
                let generated = lock(&self.inner.generated)
                    .get(&fire.id)
                    .cloned()
                    .unwrap_or_default();
                let mut fx = Writes::default();
                if let Err(e) = self.decide(fire, &batch, now, &generated, &mut fx) {
                    failed.push((fire.id.clone(), format!("{e:#}")));
                    continue;
                }
                let counts = fx.counts().to_vec();
                (&mut *w.tx).execute("SAVEPOINT fire").await?;
                match fx.write(&mut w, backend, now).await {
                    Ok(()) => {
                        (&mut *w.tx).execute("RELEASE SAVEPOINT fire").await?;
                        written.push((counts, *sent));
                    }
                    Err(e) => {
                        (&mut *w.tx).execute("ROLLBACK TO SAVEPOINT fire").await?;
                        tracing::warn!(fire = %fire.id, error = %format!("{e:#}"), "a fire failed; it will be retried");
                        failed.push((fire.id.clone(), format!("{e:#}")));
                    }
                }
            }
        }
        (&mut *w.tx).execute("RELEASE SAVEPOINT batch").await?;
        for (id, error) in &failed {
            let error: String = error.chars().take(500).collect();
            sql::fail_fire(&mut w, id, &error, now).await?;
        }
        w.commit().await?;

        let mut sent = 0;
        for (counts, n) in &written {
            sent += n;
            for (name, label) in counts {
                match label {
                    Some((key, value)) => counter!(*name, *key => *value).increment(1),
                    None => counter!(*name).increment(1),
                }
            }
        }
        {
            let mut generated = lock(&self.inner.generated);
            for fire in &fires {
                if !generate.iter().any(|(id, ..)| id == &fire.id) {
                    generated.remove(&fire.id);
                }
            }
        }
        for _ in &failed {
            counter!(FIRES, "outcome" => "error").increment(1);
        }
        if sent > 0 {
            self.inner.outbox_wake.notify_one();
        }
        Ok((fires.len() - generate.len(), later.len(), generate))
    }

    /// What deciding a batch needs besides the rows: the programs' versions, each tenant's
    /// settings, each contact's rules and how many proactive messages it got on its local day.
    async fn prepare(
        &self,
        w: &mut WriteTx,
        loaded: fire_batch::Loaded,
        now: i64,
    ) -> anyhow::Result<Batch> {
        let mut programs = HashMap::new();
        for e in loaded.enrollments.values() {
            let key = (e.program_id.clone(), e.version);
            if let std::collections::hash_map::Entry::Vacant(slot) = programs.entry(key) {
                let program = self
                    .version(&e.program_id, e.version)
                    .await
                    .map_err(|e| format!("{e:#}"));
                slot.insert(program);
            }
        }
        let mut settings: HashMap<String, Value> = HashMap::new();
        let mut rules = HashMap::new();
        let mut windows = Vec::new();
        for contact in loaded.contacts.values() {
            if !settings.contains_key(&contact.tenant_id) {
                let s = sql::tenant_settings(&self.inner.store, &contact.tenant_id).await?;
                settings.insert(contact.tenant_id.clone(), s);
            }
            let r = self.rules_from(contact, &settings[&contact.tenant_id]);
            let (_, day_start, next_day) = time::local_day(now, &r.tz);
            windows.push((contact.id.clone(), day_start, next_day));
            rules.insert(contact.id.clone(), r);
        }
        let sent_today = fire_batch::sent_between(w, &windows).await?;
        let mut policies = HashMap::new();
        for tenant in settings.keys() {
            if let Some(policy) = self.policy(tenant).await? {
                policies.insert(tenant.clone(), policy);
            }
        }
        Ok(Batch {
            loaded,
            programs,
            rules,
            sent_today,
            policies,
        })
    }

    /// Decides one fire from what the batch read: its writes go to `fx`, nothing is written.
    fn decide(
        &self,
        fire: &FireRow,
        batch: &Batch,
        now: i64,
        generated: &Generated,
        fx: &mut Writes,
    ) -> anyhow::Result<Processed> {
        let Some(e) = batch.loaded.enrollments.get(&fire.enrollment_id) else {
            return Ok(dropped(fx, fire, "stale", "no_enrollment"));
        };
        let mut e = e.clone();
        let nudge = fire.kind == "nudge";
        let checkin = fire.kind == "checkin";
        // Check-ins recur beside the steps: keyed by their occurrence, not the enrolment's place.
        if e.status != "active"
            || e.version != fire.version
            || (!nudge && !checkin && e.epoch != fire.epoch)
            || (nudge && fire.step != format!("nudge-{}", e.nudges))
        {
            return Ok(dropped(fx, fire, "stale", "moved_on"));
        }
        let (Some(contact), Some(rules)) = (
            batch.loaded.contacts.get(&e.contact_id),
            batch.rules.get(&e.contact_id),
        ) else {
            return Ok(dropped(fx, fire, "stale", "no_contact"));
        };
        if contact.opted_out_at.is_some() {
            fx.stop_contact(&contact.id, "opted_out");
            return Ok(dropped(fx, fire, "cancelled", "opted_out"));
        }
        let Some(thread) = batch.loaded.thread(&e.contact_id, &e.channel_id) else {
            stop(
                fx,
                &mut e,
                "the contact has no identity on the enrolment's channel",
            );
            return Ok(dropped(fx, fire, "skipped", "no_identity"));
        };
        if let Some(why) = &thread.unreachable {
            stop(fx, &mut e, &format!("unreachable: {why}"));
            return Ok(dropped(fx, fire, "skipped", "unreachable"));
        }
        if nudge && thread.last_inbound_at.is_some_and(|t| t > fire.created_at) {
            return Ok(dropped(fx, fire, "cancelled", "replied"));
        }
        let program = match batch.programs.get(&(e.program_id.clone(), e.version)) {
            Some(Ok(p)) => p.clone(),
            Some(Err(why)) => anyhow::bail!("{why}"),
            None => anyhow::bail!("program {} version {} not read", e.program_id, e.version),
        };
        if nudge
            && fire.step == "nudge-0"
            && let Some(inactivity) = &program.definition.inactivity
            && held_back(&e.id, fire.epoch, inactivity.holdout)
        {
            // The control group of the nudge lift: this quiet episode gets no nudge.
            return Ok(dropped(fx, fire, "skipped", "holdout"));
        }
        if thread.status == "human" {
            fx.defer(&fire.id, now + HANDOFF_RECHECK_MS, "human_handoff");
            fx.count(FIRES, Some(("outcome", "deferred_handoff")));
            return Ok(Processed::Deferred);
        }
        // Catch-up after downtime.
        let late = now - fire.due_at > LATE_AFTER_MS;
        let wait_step = match program.step(&fire.step) {
            Some(Step::Wait(w)) if fire.kind == "step" => Some(w.clone()),
            _ => None,
        };
        let policy = wait_step
            .as_ref()
            .and_then(|w| w.catch_up)
            .or_else(|| {
                checkin
                    .then(|| program.checkin(&fire.step).and_then(|c| c.catch_up))
                    .flatten()
            })
            .unwrap_or(program.definition.catch_up);
        let mut silent = false;
        // A missed check-in is not sent late: the next occurrence is the next window.
        if late && checkin && policy != CatchUp::SendLate {
            if let Some(c) = program.checkin(&fire.step)
                && let Some(at) = c.schedule.next_after(now, &rules.tz)
            {
                fx.schedule_checkin(&e, &c.id, at);
            }
            fx.audit(
                &e.tenant_id,
                "program.fire_skipped",
                &fire.id,
                json!({ "due_at": fire.due_at, "at": now, "policy": policy, "checkin": fire.step }),
            );
            return Ok(dropped(fx, fire, "skipped", "late"));
        }
        if late {
            match policy {
                CatchUp::SendLate => {
                    fx.count(FIRES, Some(("outcome", "late")));
                    fx.audit(
                        &e.tenant_id,
                        "program.fire_late",
                        &fire.id,
                        json!({ "due_at": fire.due_at, "sent_at": now, "policy": "send_late" }),
                    );
                }
                CatchUp::Skip => {
                    if nudge {
                        return Ok(dropped(fx, fire, "skipped", "late"));
                    }
                    silent = true;
                    fx.audit(
                        &e.tenant_id,
                        "program.fire_skipped",
                        &fire.id,
                        json!({ "due_at": fire.due_at, "at": now, "policy": "skip" }),
                    );
                }
                CatchUp::NextWindow => {
                    if let Some(next) = wait_step
                        .as_ref()
                        .and_then(|w| w.until)
                        .and_then(|u| u.next_after(now, &rules.tz))
                    {
                        fx.defer(&fire.id, next, "late: next window");
                        fx.audit(
                            &e.tenant_id,
                            "program.fire_rescheduled",
                            &fire.id,
                            json!({ "due_at": fire.due_at, "next": next, "policy": "next_window" }),
                        );
                        fx.count(FIRES, Some(("outcome", "rescheduled")));
                        return Ok(Processed::Deferred);
                    }
                }
            }
        }
        if !silent {
            // Quiet hours, then the daily cap: deferred, never dropped.
            if let Some(quiet) = &rules.quiet {
                let release = quiet.release(now, &rules.tz);
                if release > now {
                    fx.defer(&fire.id, release, "quiet_hours");
                    fx.count(FIRES, Some(("outcome", "deferred_quiet")));
                    return Ok(Processed::Deferred);
                }
            }
            let sent_today = batch.sent_today.get(&contact.id).copied().unwrap_or(0);
            if sent_today >= rules.cap {
                let (_, _, next_day) = time::local_day(now, &rules.tz);
                let release = rules
                    .quiet
                    .map(|q| q.release(next_day, &rules.tz))
                    .unwrap_or(next_day);
                fx.defer(&fire.id, release, "daily_cap");
                fx.count(FIRES, Some(("outcome", "deferred_cap")));
                return Ok(Processed::Deferred);
            }
        }
        let mut state = Self::state(&e, contact, rules);
        let read_epoch = e.epoch;
        let mut outcome = match fire.kind.as_str() {
            "start" => flow::run(&program, &mut state, Some(program.start()), now, generated),
            "step" => {
                let next = program.next_of(&fire.step).map(str::to_owned);
                flow::run(&program, &mut state, next.as_deref(), now, generated)
            }
            "timeout" => {
                let next = match program.step(&fire.step) {
                    Some(Step::Ask(a)) => a.timeout.as_ref().map(|t| t.next.clone()),
                    _ => None,
                };
                fx.audit(
                    &e.tenant_id,
                    "program.ask_timeout",
                    &e.id,
                    json!({ "step": fire.step }),
                );
                flow::run(&program, &mut state, next.as_deref(), now, generated)
            }
            "nudge" => self.nudge(&program, &mut e, &state, rules, fire.epoch, now),
            "checkin" => {
                let Some(c) = program.checkin(&fire.step) else {
                    return Ok(dropped(fx, fire, "stale", "no_checkin"));
                };
                e.checkin_open = Some(fire.id.clone());
                let mut out = Outcome::default();
                out.messages
                    .push(flow::checkin_message(&program, &state, c));
                if let Some(at) = c.schedule.next_after(now.max(fire.intended_at), &rules.tz) {
                    out.schedule.push(flow::FireSpec {
                        kind: "checkin",
                        step: c.id.clone(),
                        due_at: at,
                        epoch: Some(at),
                    });
                }
                out
            }
            other => anyhow::bail!("unknown fire kind {other:?}"),
        };
        if let Some(request) = outcome.needs_generation.take() {
            // Nothing of this run is written: it runs again with the model's text.
            *fx = Writes::default();
            return Ok(Processed::NeedsGeneration(request));
        }
        if silent {
            outcome.messages.clear();
        }
        // Nudges and check-ins leave the enrolment where it is (its step's fire stays current).
        let bump = !nudge && !checkin;
        let policy = batch.policies.get(&e.tenant_id).map(Arc::as_ref);
        let sent = self.plan(
            fx, &mut e, read_epoch, &program, &state, &outcome, &thread, None, now, bump, policy,
        );
        let reason = if silent {
            Some("late: messages skipped")
        } else {
            None
        };
        fx.close(&fire.id, "done", reason, sent > 0);
        fx.count(
            FIRES,
            Some(("outcome", if late { "sent_late" } else { "sent" })),
        );
        Ok(Processed::Done { sent })
    }

    /// The next inactivity nudge (and the one after it, or "at risk" when they run out).
    #[allow(clippy::too_many_arguments)]
    fn nudge(
        &self,
        program: &Program,
        e: &mut EnrollmentRow,
        state: &State,
        rules: &Rules,
        episode: i64,
        now: i64,
    ) -> Outcome {
        let mut out = Outcome::default();
        let Some(inactivity) = &program.definition.inactivity else {
            return out;
        };
        let n = e.nudges as usize;
        if let Some(text) = inactivity.nudges.get(n) {
            out.messages.push(flow::Outgoing {
                step: format!("nudge-{n}"),
                text: flow::render(program, state, text),
                content: None,
                template: inactivity
                    .template
                    .as_ref()
                    .map(|t| switchboard_channel::Template {
                        name: t.name.clone(),
                        language: t.language.clone(),
                        parameters: t
                            .parameters
                            .iter()
                            .map(|p| flow::render(program, state, p))
                            .collect(),
                    }),
            });
        }
        e.nudges += 1;
        if (e.nudges as usize) < inactivity.nudges.len() {
            if let Some(due) = inactivity.after.after(now, &rules.tz) {
                out.schedule.push(flow::FireSpec {
                    kind: "nudge",
                    step: format!("nudge-{}", e.nudges),
                    due_at: due,
                    epoch: Some(episode),
                });
            }
        } else {
            e.at_risk = true;
        }
        out
    }

    /// Writes a run's outcome now (a turn's reply; the engine writes its fires' together).
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        w: &mut WriteTx,
        e: &mut EnrollmentRow,
        read_epoch: i64,
        program: &Program,
        state: &State,
        outcome: &Outcome,
        thread: &Thread,
        reply_to: Option<&str>,
        now: i64,
        bump_epoch: bool,
    ) -> anyhow::Result<usize> {
        let mut fx = Writes::default();
        let policy = self.policy(&e.tenant_id).await?;
        let queued = self.plan(
            &mut fx,
            e,
            read_epoch,
            program,
            state,
            outcome,
            thread,
            reply_to,
            now,
            bump_epoch,
            policy.as_deref(),
        );
        let counts = fx.counts().to_vec();
        fx.write(w, self.inner.store.backend(), now).await?;
        for (name, label) in counts {
            match label {
                Some((key, value)) => counter!(name, key => value).increment(1),
                None => counter!(name).increment(1),
            }
        }
        Ok(queued)
    }

    /// Moderation of one program message as it is about to be queued: the outbound rules on its
    /// text, and what was found in the model's text of a `generate` step (see
    /// [`Programs::generate`]). `None`: nothing found. A message the rules `hold` or `block` is
    /// withheld (stored, not sent) until a moderator releases it; `flag` and shadow hits are
    /// sent and recorded.
    fn screen(
        &self,
        policy: Option<&crate::moderation::Active>,
        e: &EnrollmentRow,
        m: &flow::Outgoing,
    ) -> Option<fire_batch::QueuedFlag> {
        use crate::moderation::Action;
        let generated = lock(&self.inner.screened).remove(&(e.contact_id.clone(), m.step.clone()));
        let policy = policy?;
        let verdict = policy.check(&m.text, false);
        if verdict.hits.is_empty() && generated.is_none() {
            return None;
        }
        let withheld = match verdict.action {
            Action::Hold => Some("held"),
            Action::Block => Some("blocked"),
            Action::Allow | Action::Flag => None,
        };
        let mut hits = verdict.hits.clone();
        let mut evidence = json!({
            "source": "program",
            "program": e.program_id,
            "version": e.version,
            "enrollment": e.id,
            "step": m.step,
            "text": m.text,
            "policy_version": verdict.policy_version,
            "withheld": withheld,
            "classifier": null,
        });
        if let Some(g) = generated {
            hits.extend(g.hits.iter().cloned());
            evidence["generated"] = json!({
                "text": g.text,
                "hits": g.hits,
                "replaced": g.replaced,
            });
            evidence["classifier"] = json!(g.classifier);
        }
        if hits.is_empty() {
            return None;
        }
        let shadow = hits.iter().all(|h| h.shadow);
        let action = hits
            .iter()
            .filter(|h| shadow || !h.shadow)
            .map(|h| h.action)
            .max()
            .unwrap_or(Action::Allow);
        evidence["hits"] = json!(hits);
        Some(fire_batch::QueuedFlag {
            contact_id: e.contact_id.clone(),
            action: action.as_str(),
            shadow,
            withheld,
            policy_version: verdict.policy_version,
            evidence,
        })
    }

    /// A run's outcome as writes: messages with their outbox rows, the hand-off, the enrolment's
    /// new place (guarded by the epoch it was read at), the contact's fields, the next fires.
    /// How many messages are queued.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        fx: &mut Writes,
        e: &mut EnrollmentRow,
        read_epoch: i64,
        program: &Program,
        state: &State,
        outcome: &Outcome,
        thread: &Thread,
        reply_to: Option<&str>,
        now: i64,
        bump_epoch: bool,
        policy: Option<&crate::moderation::Active>,
    ) -> usize {
        let mut queued = 0;
        // WhatsApp takes free-form messages only within 24 hours of the contact's last message.
        let window_closed = thread.channel_kind == "whatsapp"
            && thread
                .last_inbound_at
                .is_none_or(|t| now - t > WHATSAPP_WINDOW_MS);
        for m in &outcome.messages {
            if m.text.trim().is_empty() && m.content.is_none() {
                tracing::warn!(enrollment = %e.id, step = %m.step, "a program message rendered empty; not sent");
                continue;
            }
            let content = if window_closed {
                match &m.template {
                    Some(t) => Some(Content {
                        template: Some(t.clone()),
                        ..Content::default()
                    }),
                    None => {
                        fx.count(
                            "switchboard_program_messages_skipped_total",
                            Some(("reason", "whatsapp_window")),
                        );
                        fx.audit(
                            &e.tenant_id,
                            "program.message_skipped",
                            &e.id,
                            json!({ "step": m.step, "reason": "whatsapp_window_closed_no_template" }),
                        );
                        continue;
                    }
                }
            } else {
                m.content.clone()
            };
            let content_json = content.as_ref().and_then(|c| serde_json::to_string(c).ok());
            let flag = self.screen(policy, e, m);
            let withheld = flag.as_ref().is_some_and(|f| f.withheld.is_some());
            if let Some(flag) = &flag {
                fx.count(
                    "switchboard_program_messages_flagged_total",
                    Some(("action", flag.action)),
                );
            }
            fx.use_thread(&e.tenant_id, &e.contact_id, &e.channel_id, thread);
            fx.queue_message(
                &e.tenant_id,
                &e.channel_id,
                thread,
                &m.text,
                content_json,
                reply_to,
                flag,
            );
            if !withheld {
                queued += 1;
            }
        }
        if let Some(note) = &outcome.handoff {
            fx.use_thread(&e.tenant_id, &e.contact_id, &e.channel_id, thread);
            fx.handoff(&e.tenant_id, &thread.conversation_id, note);
        }
        if let Some((step, waiting)) = &outcome.rest {
            e.step = step.clone();
            e.waiting = waiting.as_str().into();
        }
        e.steps_done = state.steps_done;
        e.reprompts = state.reprompts;
        e.answers = state.answers.clone();
        if outcome.completed {
            e.status = "completed".into();
            e.completed_at = Some(now);
            e.checkin_open = None;
            // Its check-ins and nudges end with it (the fire being run, a step's, closes as done).
            fx.cancel_enrollment_fires(&e.id, true, "completed");
            fx.audit(&e.tenant_id, "program.completed", &e.id, json!({}));
            fx.count("switchboard_enrollments_completed_total", None);
        }
        for badge in &program.definition.badges {
            let earned = badge.streak.is_some_and(|n| e.streak >= i64::from(n))
                || badge.steps.is_some_and(|n| e.steps_done >= i64::from(n));
            if earned && !e.badges.contains(&badge.id) {
                e.badges.push(badge.id.clone());
                fx.audit(
                    &e.tenant_id,
                    "program.badge",
                    &e.id,
                    json!({ "badge": badge.id }),
                );
            }
        }
        if bump_epoch {
            e.epoch += 1;
        }
        fx.save_enrollment(e, read_epoch);
        if state.fields != state.fields_read || state.tags != state.tags_read {
            fx.contact_fields(&e.contact_id, &state.fields, &state.tags);
        }
        for spec in &outcome.schedule {
            let epoch = spec.epoch.unwrap_or(e.epoch);
            fx.add_fire(e, spec.kind, &spec.step, epoch, spec.due_at);
        }
        fx.visits(e, &outcome.reached);
        for note in &outcome.notes {
            tracing::info!(enrollment = %e.id, "{note}");
        }
        queued
    }

    // ------------------------------------------------------------------ turns

    /// A contact's message, before the bot answers it: `/join`, `/progress`, a program keyword,
    /// or an answer to an `ask`. Returns whether the turn was handled here (completed, with its
    /// replies, in one transaction). Every message also restarts the inactivity clock of the
    /// contact's enrolments (their pending nudges are cancelled).
    pub async fn handle_turn(&self, turn: &PendingTurn) -> anyhow::Result<bool> {
        let store = &self.inner.store;
        let now = self.inner.clock.now();
        let text = turn.text.trim();
        let lower = text.to_lowercase();
        // Reactions, edits, notices and group chatter are not answers (nor commands).
        let said = matches!(
            turn.kind.as_str(),
            "text" | "command" | "email" | "button_reply" | "list_reply" | "interactive"
        );
        if turn.conversation_status == "closed" || !said {
            return Ok(false);
        }
        let contact_id = turn.contact_id.clone();
        if let Some(rest) = lower.strip_prefix("/join")
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            let slug = rest.trim().to_owned();
            let joined = self.join(turn, &contact_id, &slug).await?;
            return self.reply(turn, joined).await;
        }
        if lower == "/progress" {
            let reply = self.progress_text(&turn.tenant_id, &contact_id).await?;
            return self.reply(turn, Joined::Text(reply)).await;
        }
        if crate::commands::parse(&turn.kind, text).is_some() {
            return Ok(false);
        }
        // Most messages come from people in no program: the turn's read said so.
        if turn.enrolled {
            let mut w = store.begin_write().await?;
            let mut enrollments = sql::active_enrollments(&mut w, &contact_id).await?;
            // Any message restarts the inactivity clock: the episode's pending nudges are cancelled
            // and the first nudge of a new one is scheduled (keyed by this message's time).
            let mut rescheduled = false;
            for e in &mut enrollments {
                let program = self.version(&e.program_id, e.version).await?;
                if let Some(inactivity) = &program.definition.inactivity {
                    sql::cancel_enrollment_nudges(&mut w, &e.id, turn.created_at, now).await?;
                    sql::nudges_answered(&mut w, &e.id, now).await?;
                    let contact = sql::contact_row(&mut *w.tx, &contact_id).await?;
                    let tz = match &contact {
                        Some(c) => self.rules(c).await?.tz,
                        None => jiff::tz::TimeZone::UTC,
                    };
                    if let Some(due) = inactivity.after.after(now, &tz) {
                        e.nudges = 0;
                        e.at_risk = false;
                        sql::reset_nudges(&mut w, &e.id).await?;
                        sql::add_fire(&mut w, e, "nudge", "nudge-0", turn.created_at, due, now)
                            .await?;
                        rescheduled = true;
                    }
                }
            }
            if turn.conversation_status == "bot" {
                let asking = enrollments.iter().find(|e| e.waiting == "ask").cloned();
                let asked = match asking {
                    Some(e) => self.answer(&mut w, turn, e, now).await? == Some(true),
                    None => false,
                };
                if asked {
                    w.commit().await?;
                    self.after_reply(turn);
                    return Ok(true);
                }
                let open = enrollments
                    .iter()
                    .find(|e| e.checkin_open.is_some())
                    .cloned();
                if let Some(e) = open
                    && self.checkin_answer(&mut w, turn, e, now).await?
                {
                    w.commit().await?;
                    self.after_reply(turn);
                    return Ok(true);
                }
            }
            w.commit().await?;
            if rescheduled {
                self.wake();
            }
        }
        // A program keyword enrols.
        if text.len() <= 64 && turn.conversation_status == "bot" && turn.programs_published {
            for (program_id, version) in store.published_programs(&turn.tenant_id).await? {
                let program = self.version(&program_id, version).await?;
                if program
                    .definition
                    .keywords
                    .iter()
                    .any(|k| k.trim().eq_ignore_ascii_case(text))
                {
                    let joined = self.join(turn, &contact_id, &program.slug()).await?;
                    return self.reply(turn, joined).await;
                }
            }
        }
        Ok(false)
    }

    /// The turn's message answers the ask its enrolment waits on: `Some(true)` handled (the
    /// answer saved and the program moved on, or asked again), `None` not an answer (the bot
    /// answers it as a question).
    async fn answer(
        &self,
        w: &mut WriteTx,
        turn: &PendingTurn,
        e: EnrollmentRow,
        now: i64,
    ) -> anyhow::Result<Option<bool>> {
        let program = self.version(&e.program_id, e.version).await?;
        let Some(Step::Ask(ask)) = program.step(&e.step).cloned() else {
            return Ok(None);
        };
        let Some(contact) = sql::contact_row(&mut *w.tx, &e.contact_id).await? else {
            return Ok(None);
        };
        let rules = self.rules(&contact).await?;
        let said = said_values(turn);
        let said_refs: Vec<&str> = said.iter().map(String::as_str).collect();
        let matched = flow::match_answer(&ask, &said_refs);
        // Program messages go to the enrolment's channel; an answer from another channel is
        // still an answer (one contact), and the replies go where the enrolment lives.
        let Some(thread) = sql::thread(w, &e.tenant_id, &e.contact_id, &e.channel_id, now).await?
        else {
            return Ok(None);
        };
        let reply_to =
            (thread.conversation_id == turn.conversation_id).then_some(turn.message_id.as_str());
        let mut e = e;
        let read_epoch = e.epoch;
        let mut state = Self::state(&e, &contact, &rules);
        let Some(value) = matched else {
            let can_reprompt = ask
                .reprompt
                .as_ref()
                .is_some_and(|r| e.reprompts < i64::from(r.times));
            if ask.unmatched == definition::Unmatched::Answer || !can_reprompt {
                return Ok(None);
            }
            if !sql::mark_turn_processed(w, &turn.conversation_id, &turn.message_id, now).await? {
                return Ok(Some(true));
            }
            let text = ask
                .reprompt
                .as_ref()
                .map(|r| r.text.clone())
                .unwrap_or_default();
            state.reprompts += 1;
            let outcome = Outcome {
                messages: vec![flow::question(&program, &state, &ask, &text)],
                ..Outcome::default()
            };
            self.apply(
                w, &mut e, read_epoch, &program, &state, &outcome, &thread, reply_to, now, false,
            )
            .await?;
            counter!("switchboard_program_answers_total", "outcome" => "reprompt").increment(1);
            return Ok(Some(true));
        };
        if !sql::mark_turn_processed(w, &turn.conversation_id, &turn.message_id, now).await? {
            return Ok(Some(true));
        }
        state.answers.insert(ask.id.clone(), value.clone());
        if let Some(field) = &ask.field {
            state.fields.insert(field.clone(), value.clone());
        }
        sql::record_answer(w, &e, &ask.id, now).await?;
        if ask.checkin {
            count_checkin(&mut e, &rules.tz, now);
            state.streak = e.streak;
        }
        let next = program.next_of(&ask.id).map(str::to_owned);
        let (state, outcome) = self
            .run_generating(&program, state, next.as_deref(), &e, now)
            .await;
        self.apply(
            w, &mut e, read_epoch, &program, &state, &outcome, &thread, reply_to, now, true,
        )
        .await?;
        counter!("switchboard_program_answers_total", "outcome" => "matched").increment(1);
        Ok(Some(true))
    }

    /// The turn's message answers the check-in its enrolment sent last: the streak counts it,
    /// the fire is marked answered, the value saved to the check-in's field and its `reply`
    /// sent. Whether the turn was taken here (`false`: the bot answers it as usual too).
    async fn checkin_answer(
        &self,
        w: &mut WriteTx,
        turn: &PendingTurn,
        mut e: EnrollmentRow,
        now: i64,
    ) -> anyhow::Result<bool> {
        let Some(fire_id) = e.checkin_open.take() else {
            return Ok(false);
        };
        let program = self.version(&e.program_id, e.version).await?;
        let Some(contact) = sql::contact_row(&mut *w.tx, &e.contact_id).await? else {
            return Ok(false);
        };
        let Some(fire) = sql::fire(w, &fire_id).await? else {
            return Ok(false);
        };
        let Some(checkin) = program.checkin(&fire.step).cloned() else {
            return Ok(false);
        };
        let Some(thread) = sql::thread(w, &e.tenant_id, &e.contact_id, &e.channel_id, now).await?
        else {
            return Ok(false);
        };
        let takes = checkin.takes_answer();
        if takes
            && !sql::mark_turn_processed(w, &turn.conversation_id, &turn.message_id, now).await?
        {
            return Ok(true);
        }
        let rules = self.rules(&contact).await?;
        let read_epoch = e.epoch;
        count_checkin(&mut e, &rules.tz, now);
        let mut state = Self::state(&e, &contact, &rules);
        let said = said_values(turn);
        let said_refs: Vec<&str> = said.iter().map(String::as_str).collect();
        if let (Some(field), Some(value)) =
            (&checkin.field, flow::checkin_value(&checkin, &said_refs))
        {
            state.fields.insert(field.clone(), value);
        }
        sql::fire_answered(w, &fire_id, now).await?;
        let mut outcome = Outcome::default();
        if let Some(reply) = &checkin.reply {
            outcome.messages.push(flow::Outgoing {
                step: format!("checkin:{}", checkin.id),
                text: flow::render(&program, &state, reply),
                content: None,
                template: None,
            });
        }
        let reply_to =
            (thread.conversation_id == turn.conversation_id).then_some(turn.message_id.as_str());
        self.apply(
            w, &mut e, read_epoch, &program, &state, &outcome, &thread, reply_to, now, false,
        )
        .await?;
        counter!("switchboard_program_answers_total", "outcome" => "checkin").increment(1);
        Ok(takes)
    }

    /// `/join <slug>`: which program (or a text reply: no such program, opted out).
    async fn join(
        &self,
        turn: &PendingTurn,
        contact_id: &str,
        slug: &str,
    ) -> anyhow::Result<Joined> {
        let store = &self.inner.store;
        let mut found = None;
        let mut names = Vec::new();
        for (program_id, version) in store.published_programs(&turn.tenant_id).await? {
            let program = self.version(&program_id, version).await?;
            names.push(program.slug());
            // The one named, or (for a bare `/join`) the first, used when it is the only one.
            if program.slug() == slug || (slug.is_empty() && found.is_none()) {
                found = Some((program_id, version, program));
            }
        }
        names.sort();
        let found = found.filter(|_| !slug.is_empty() || names.len() == 1);
        let Some((program_id, version, program)) = found else {
            return Ok(Joined::Text(if names.is_empty() {
                "There are no programs to join yet.".to_owned()
            } else {
                format!(
                    "Which one? Send /join followed by one of: {}",
                    names.join(", ")
                )
            }));
        };
        if !program.runs_on(&turn.channel_kind) {
            return Ok(Joined::Text(format!(
                "\"{}\" doesn't run on {}, sorry.",
                program.definition.name, turn.channel_kind
            )));
        }
        let opted_out = store
            .contact_row(contact_id)
            .await?
            .is_some_and(|c| c.opted_out_at.is_some());
        if opted_out {
            return Ok(Joined::Text(
                "You've unsubscribed from reminders, so I can't start a program. Send /start to subscribe again, then /join."
                    .to_owned(),
            ));
        }
        Ok(Joined::Start {
            program_id,
            version,
            program,
            contact_id: contact_id.to_owned(),
        })
    }

    /// Completes the turn with a text reply, or enrols the sender and runs the program's first
    /// steps as the reply (the contact just wrote: no quiet hours, WhatsApp's window is open) —
    /// the turn, the enrolment and its messages in one transaction.
    async fn reply(&self, turn: &PendingTurn, joined: Joined) -> anyhow::Result<bool> {
        let store = &self.inner.store;
        let now = self.inner.clock.now();
        let mut w = store.begin_write().await?;
        if !sql::mark_turn_processed(&mut w, &turn.conversation_id, &turn.message_id, now).await? {
            return Ok(true);
        }
        let text = match joined {
            Joined::Text(text) => Some(text),
            Joined::Start {
                program_id,
                version,
                program,
                contact_id,
            } => {
                if sql::running_enrollment(&mut w, &program_id, &contact_id)
                    .await?
                    .is_some()
                {
                    Some(format!(
                        "You're already in \"{}\". Send /progress to see how you're doing.",
                        program.definition.name
                    ))
                } else {
                    self.start_here(
                        &mut w,
                        turn,
                        &program_id,
                        version,
                        &program,
                        &contact_id,
                        now,
                    )
                    .await?;
                    None
                }
            }
        };
        if let Some(text) = text {
            let thread = Thread {
                conversation_id: turn.conversation_id.clone(),
                status: turn.conversation_status.clone(),
                last_inbound_at: Some(turn.created_at),
                channel_kind: turn.channel_kind.clone(),
                recipient: turn.recipient.clone(),
                unreachable: None,
                create: false,
            };
            sql::queue_message(
                &mut w,
                &turn.tenant_id,
                &turn.channel_id,
                &thread,
                &text,
                None,
                Some(&turn.message_id),
                now,
            )
            .await?;
        }
        w.commit().await?;
        self.after_reply(turn);
        Ok(true)
    }

    /// Enrols the turn's contact on the turn's channel and runs the first steps as the reply.
    #[allow(clippy::too_many_arguments)]
    async fn start_here(
        &self,
        w: &mut WriteTx,
        turn: &PendingTurn,
        program_id: &str,
        version: i64,
        program: &Program,
        contact_id: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let mut e = new_enrollment(
            &turn.tenant_id,
            program_id,
            version,
            contact_id,
            &turn.channel_id,
            program.start(),
            now,
        );
        sql::insert_enrollment(w, &e).await?;
        sql::audit(
            w,
            &turn.tenant_id,
            "program.enrolled",
            &e.id,
            json!({ "program_id": program_id, "version": version, "contact_id": contact_id, "source": "join" }),
        )
        .await?;
        counter!("switchboard_enrollments_total", "source" => "join").increment(1);
        let Some(contact) = sql::contact_row(&mut *w.tx, contact_id).await? else {
            anyhow::bail!("the contact is gone");
        };
        let rules = self.rules(&contact).await?;
        first_fires(w, &e, program, &rules, now).await?;
        let Some(thread) = sql::thread(w, &e.tenant_id, contact_id, &e.channel_id, now).await?
        else {
            anyhow::bail!("the contact has no identity on this channel");
        };
        let state = Self::state(&e, &contact, &rules);
        let (state, outcome) = self
            .run_generating(program, state, Some(program.start()), &e, now)
            .await;
        self.apply(
            w,
            &mut e,
            0,
            program,
            &state,
            &outcome,
            &thread,
            Some(&turn.message_id),
            now,
            true,
        )
        .await?;
        Ok(())
    }

    /// Runs from `from`, asking the model for `generate` steps as they come (their fallback
    /// when it does not answer).
    async fn run_generating(
        &self,
        program: &Program,
        state: State,
        from: Option<&str>,
        e: &EnrollmentRow,
        now: i64,
    ) -> (State, Outcome) {
        let mut generated = Generated::new();
        loop {
            let mut trial = state.clone();
            let outcome = flow::run(program, &mut trial, from, now, &generated);
            match outcome.needs_generation {
                Some(request) => {
                    let text = self.generate(&e.tenant_id, &e.contact_id, &request).await;
                    generated.insert(request.step, text);
                }
                None => return (trial, outcome),
            }
        }
    }

    fn after_reply(&self, _turn: &PendingTurn) {
        self.inner.outbox_wake.notify_one();
        self.wake();
    }

    /// `/progress`: each running or finished enrolment's steps, streak and badges.
    pub async fn progress_text(&self, tenant_id: &str, contact_id: &str) -> anyhow::Result<String> {
        let enrollments = self
            .inner
            .store
            .contact_enrollments(tenant_id, contact_id)
            .await?;
        if enrollments.is_empty() {
            return Ok("You're not in a program yet. Send /join to start one.".into());
        }
        let mut lines = Vec::new();
        for e in enrollments.iter().take(5) {
            let program = self.version(&e.program_id, e.version).await?;
            let mut line = format!(
                "{}: {} of {} steps done, {}",
                program.definition.name,
                e.steps_done.min(program.total_steps() as i64),
                program.total_steps(),
                e.status
            );
            if e.streak > 0 || e.best_streak > 0 {
                line.push_str(&format!(
                    "; streak {} day{} (best {})",
                    e.streak,
                    if e.streak == 1 { "" } else { "s" },
                    e.best_streak
                ));
            }
            let badges: Vec<&str> = program
                .definition
                .badges
                .iter()
                .filter(|b| e.badges.contains(&b.id))
                .map(|b| b.title.as_str())
                .collect();
            if !badges.is_empty() {
                line.push_str(&format!("; badges: {}", badges.join(", ")));
            }
            lines.push(line);
        }
        Ok(lines.join("\n"))
    }

    // ------------------------------------------------------------------ preview

    /// The next 10 messages the contact would get from the program (its running enrolment's
    /// version and place, or the current version from the start), in local time and UTC, with
    /// quiet-hour shifts and DST changes marked. Asks are taken as answered at once.
    pub async fn preview(
        &self,
        tenant_id: &str,
        program_id: &str,
        contact_id: &str,
    ) -> anyhow::Result<Vec<PreviewFire>> {
        let store = &self.inner.store;
        let row = store
            .program(tenant_id, program_id)
            .await?
            .context("no such program")?;
        let contact = store
            .contact_row(contact_id)
            .await?
            .filter(|c| c.tenant_id == tenant_id)
            .context("no such contact")?;
        let rules = self.rules(&contact).await?;
        let running = store
            .contact_enrollments(tenant_id, contact_id)
            .await?
            .into_iter()
            .find(|e| e.program_id == program_id && e.status == "active");
        let (program, mut from, mut at) = match &running {
            Some(e) => {
                let program = self.version(&e.program_id, e.version).await?;
                let pending = store
                    .fires_of(&e.id)
                    .await?
                    .into_iter()
                    .filter(|f| f.status == "pending" && f.kind != "nudge")
                    .min_by_key(|f| f.due_at);
                match pending {
                    Some(f) if f.kind == "start" => {
                        (program.clone(), Some(program.start().to_owned()), f.due_at)
                    }
                    Some(f) if f.kind == "step" => {
                        let next = program.next_of(&f.step).map(str::to_owned);
                        (program, next, f.due_at)
                    }
                    _ => {
                        let next = program.next_of(&e.step).map(str::to_owned);
                        (program, next, self.inner.clock.now())
                    }
                }
            }
            None => {
                let version = row.current_version.max(1);
                let program = match self.version(program_id, version).await {
                    Ok(p) => p,
                    Err(_) => Arc::new(
                        Program::from_stored(&row.definition)
                            .context("the draft is not a valid program")?,
                    ),
                };
                let start = program.start().to_owned();
                (program, Some(start), self.inner.clock.now())
            }
        };
        let e = running.unwrap_or_else(|| {
            new_enrollment(
                tenant_id,
                program_id,
                1,
                contact_id,
                "",
                program.start(),
                at,
            )
        });
        let mut state = Self::state(&e, &contact, &rules);
        // (when, what, how far quiet hours moved it)
        let mut fires: Vec<(i64, String, i64)> = Vec::new();
        let mut ends: Option<i64> = None;
        let begin = at.min(self.inner.clock.now());
        for _ in 0..200 {
            if fires.len() >= 10 {
                break;
            }
            let Some(step) = from.take() else { break };
            // Quiet hours move the whole run.
            let release = rules.quiet.map(|q| q.release(at, &rules.tz)).unwrap_or(at);
            let shifted = release - at;
            at = release;
            let mut generated = Generated::new();
            let outcome = loop {
                let mut trial = state.clone();
                let outcome = flow::run(&program, &mut trial, Some(&step), at, &generated);
                match outcome.needs_generation {
                    Some(r) => {
                        generated.insert(r.step, r.fallback);
                    }
                    None => {
                        state = trial;
                        break outcome;
                    }
                }
            };
            for m in &outcome.messages {
                if fires.len() >= 10 {
                    break;
                }
                fires.push((at, m.step.clone(), shifted));
            }
            if outcome.completed {
                ends = Some(at);
                break;
            }
            match outcome.rest {
                Some((rest, Waiting::Ask)) => {
                    from = program.next_of(&rest).map(str::to_owned);
                }
                Some((rest, Waiting::Wait)) => {
                    let Some(spec) = outcome.schedule.iter().find(|s| s.kind == "step") else {
                        break;
                    };
                    at = spec.due_at;
                    from = program.next_of(&rest).map(str::to_owned);
                }
                _ => break,
            }
        }
        // Check-ins recur beside the steps until the program completes.
        for c in &program.definition.checkins {
            let mut t = begin;
            for _ in 0..10 {
                let Some(next) = c.schedule.next_after(t, &rules.tz) else {
                    break;
                };
                if ends.is_some_and(|end| next > end) {
                    break;
                }
                let release = rules
                    .quiet
                    .map(|q| q.release(next, &rules.tz))
                    .unwrap_or(next);
                fires.push((release, format!("checkin:{}", c.id), release - next));
                t = next;
            }
        }
        fires.sort_by_key(|f| f.0);
        fires.truncate(10);
        let mut last_offset: Option<i32> = None;
        Ok(fires
            .into_iter()
            .map(|(at, step, shifted)| {
                let offset = time::offset_seconds(at, &rules.tz);
                let dst_change = last_offset
                    .filter(|&o| o != offset)
                    .map(|o| format!("UTC offset {} → {}", fmt_offset(o), fmt_offset(offset)));
                last_offset = Some(offset);
                PreviewFire {
                    step,
                    at_utc: crate::store::messages::rfc3339(at),
                    at_local: time::local_rfc3339(at, &rules.tz),
                    timezone: rules.timezone.clone(),
                    shifted_by: (shifted > 0)
                        .then(|| format!("{} min (quiet hours)", shifted / 60_000)),
                    dst_change,
                }
            })
            .collect())
    }
}

/// Whether a quiet episode is in the nudge-lift control group: a stable hash (FNV-1a) of the
/// enrolment and the episode, below `share`.
fn held_back(enrollment_id: &str, episode: i64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in enrollment_id.bytes().chain(episode.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// What a turn says: its text, and the ids of buttons pressed (attachment references).
fn said_values(turn: &PendingTurn) -> Vec<String> {
    let mut said: Vec<String> = vec![turn.text.clone()];
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&turn.attachments) {
        said.extend(
            items
                .iter()
                .filter_map(|a| a.get("reference").and_then(Value::as_str))
                .map(str::to_owned),
        );
    }
    said
}

/// A check-in answered at `now`: the streak of consecutive local days grows (once a day), or
/// starts again after a missed day. The day is the contact's own, in their zone at the time.
fn count_checkin(e: &mut EnrollmentRow, tz: &jiff::tz::TimeZone, now: i64) {
    let (today, _, _) = time::local_day(now, tz);
    let today_s = today.to_string();
    let yesterday = today.yesterday().map(|d| d.to_string()).ok();
    if e.streak_day.as_deref() != Some(today_s.as_str()) {
        e.streak = if e.streak_day.is_some() && e.streak_day == yesterday {
            e.streak + 1
        } else {
            1
        };
        e.best_streak = e.best_streak.max(e.streak);
        e.streak_day = Some(today_s);
    }
}

/// Closes a fire that is not to run (stale, cancelled, skipped), counting why.
fn dropped(fx: &mut Writes, fire: &FireRow, status: &str, reason: &'static str) -> Processed {
    fx.count(FIRES, Some(("outcome", reason)));
    fx.close(&fire.id, status, Some(reason), false);
    Processed::Dropped
}

/// Stops an enrolment: its fires cancelled, its state saved, the reason audited.
fn stop(fx: &mut Writes, e: &mut EnrollmentRow, reason: &str) {
    let epoch = e.epoch;
    e.status = "stopped".into();
    e.stopped_reason = Some(reason.to_owned());
    e.epoch += 1;
    fx.cancel_enrollment_fires(&e.id, false, "stopped");
    fx.save_enrollment(e, epoch);
    fx.audit(
        &e.tenant_id,
        "program.stopped",
        &e.id,
        json!({ "reason": reason }),
    );
}

/// The fires a new enrolment starts with besides its first step: the first inactivity nudge
/// (its episode starts at enrolment) and each check-in's next occurrence.
async fn first_fires(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    program: &Program,
    rules: &Rules,
    now: i64,
) -> anyhow::Result<()> {
    if let Some(inactivity) = &program.definition.inactivity
        && let Some(due) = inactivity.after.after(now, &rules.tz)
    {
        sql::add_fire(w, e, "nudge", "nudge-0", now, due, now).await?;
    }
    schedule_checkins(w, e, program, rules, now).await
}

/// Each check-in's next occurrence after `now`.
async fn schedule_checkins(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    program: &Program,
    rules: &Rules,
    now: i64,
) -> anyhow::Result<()> {
    for c in &program.definition.checkins {
        if let Some(at) = c.schedule.next_after(now, &rules.tz) {
            sql::schedule_checkin(w, e, &c.id, at, now).await?;
        }
    }
    Ok(())
}

fn fmt_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.abs();
    format!("{sign}{:02}:{:02}", s / 3600, s % 3600 / 60)
}

fn new_enrollment(
    tenant_id: &str,
    program_id: &str,
    version: i64,
    contact_id: &str,
    channel_id: &str,
    start: &str,
    now: i64,
) -> EnrollmentRow {
    EnrollmentRow {
        id: new_id(),
        tenant_id: tenant_id.to_owned(),
        program_id: program_id.to_owned(),
        version,
        contact_id: contact_id.to_owned(),
        channel_id: channel_id.to_owned(),
        status: "active".into(),
        step: start.to_owned(),
        waiting: "wait".into(),
        epoch: 0,
        reprompts: 0,
        steps_done: 0,
        nudges: 0,
        at_risk: false,
        streak: 0,
        best_streak: 0,
        streak_day: None,
        badges: Vec::new(),
        answers: Map::new(),
        stopped_reason: None,
        started_at: now,
        completed_at: None,
        checkin_open: None,
    }
}

/// The demo program built into the binary (`programs/sleep-reset.json`).
pub const DEMO_PROGRAM: &str = include_str!("../../programs/sleep-reset.json");

/// Creates and publishes the demo program for a tenant (on a new data directory).
pub async fn load_demo(store: &Store, tenant_id: &str) -> anyhow::Result<String> {
    let json: Value = serde_json::from_str(DEMO_PROGRAM)?;
    let program = Program::parse(&json).map_err(|problems| {
        anyhow::anyhow!("the built-in demo program is invalid: {problems:?}")
    })?;
    let row = store
        .create_program(tenant_id, &program.definition.name, DEMO_PROGRAM)
        .await?;
    store.publish_program(tenant_id, &row.id).await?;
    Ok(program.definition.name)
}

/// `generate` steps written by the tenant's chat model: the step's prompt, with the passages of
/// the tenant's knowledge nearest to it, behind the same guard (time limits, breaker) as answers.
pub struct ModelGenerator {
    knowledge: crate::knowledge::Knowledge,
    model: Arc<crate::llm::guard::Guarded>,
    settings: crate::answer::generate::AnswerSettings,
}

impl ModelGenerator {
    pub fn new(
        knowledge: crate::knowledge::Knowledge,
        model: Arc<crate::llm::guard::Guarded>,
        settings: crate::answer::generate::AnswerSettings,
    ) -> ModelGenerator {
        ModelGenerator {
            knowledge,
            model,
            settings,
        }
    }
}

#[async_trait]
impl Generator for ModelGenerator {
    async fn generate(&self, tenant_id: &str, _contact_id: &str, prompt: &str) -> Option<String> {
        use crate::llm::{ChatMessage, ChatRequest, Role};
        let hits = self.knowledge.search(tenant_id, prompt, 3).await.ok()?;
        let mut system = String::from(
            "You are a friendly coach writing one short message (at most three sentences) to a person in a coaching program. Write only the message.",
        );
        if !hits.is_empty() {
            system.push_str("\nUse these notes from the coach:\n");
            for hit in &hits {
                let text: String = hit.text.chars().take(600).collect();
                system.push_str(&format!("- {}: {}\n", hit.title, text));
            }
        }
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, system),
                ChatMessage::new(Role::User, prompt),
            ],
            max_tokens: self.settings.max_answer_tokens.min(200),
            temperature: self.settings.temperature,
            format: None,
        };
        let generated = self.model.chat(&request, &mut |_: &str| {}).await.ok()?;
        let text = generated.text.replace('\0', "");
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    /// The model's own limit (its guard ends a slower answer), and a little for the search.
    fn time_limit(&self) -> Duration {
        self.model.limits().total + Duration::from_secs(5)
    }
}
