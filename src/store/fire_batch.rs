//! The engine's batch of fires in a few statements.
//!
//! A claim of N due fires used to cost about fifteen statements per fire (the enrolment, the
//! contact, the identity, the conversation, the daily count, the message, its outbox row, the
//! enrolment's move, the next fire, the funnel, the close…), each a round trip on PostgreSQL and
//! a hop to SQLite's connection thread. Here the batch reads what every fire needs with five
//! statements ([`load`], [`sent_between`]), the engine decides each fire in memory, and
//! [`Writes::write`] applies what they decided with about ten multi-row statements — the same
//! writes, in the same order per fire, with the same guards (an enrolment is saved only at the
//! epoch it was read at; a fire is closed only while pending).
//!
//! Each fire's decisions are kept apart ([`Writes`] per fire) so that a batch whose combined
//! write fails can be written again fire by fire, each in its own savepoint: one bad fire fails
//! alone.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::Row;

use super::bulk::{Statement, lock_conversations};
use super::programs::{ContactRow, ENROLLMENT_COLUMNS, EnrollmentRow, Thread, enrollment_row};
use super::{Backend, WriteTx, new_id, now_ms};

/// Rows per multi-row statement (PostgreSQL takes at most 65,535 parameters, SQLite 32,766; an
/// enrolment row binds 18).
const CHUNK: usize = 200;

/// What a batch of fires reads, keyed for the engine.
#[derive(Debug, Default)]
pub struct Loaded {
    pub enrollments: HashMap<String, EnrollmentRow>,
    pub contacts: HashMap<String, ContactRow>,
    /// (contact, channel) → the contact's address there.
    identities: HashMap<(String, String), Identity>,
    /// (contact, channel) → the open conversation.
    conversations: HashMap<(String, String), OpenConversation>,
}

#[derive(Debug)]
struct Identity {
    recipient: String,
    channel_kind: String,
    unreachable: Option<String>,
}

#[derive(Debug)]
struct OpenConversation {
    id: String,
    status: String,
    last_inbound_at: Option<i64>,
}

impl Loaded {
    /// Where the enrolment's messages go: `None` when the contact has no identity on the
    /// channel. A conversation not open yet gets an id now and is opened if written to.
    pub fn thread(&self, contact_id: &str, channel_id: &str) -> Option<Thread> {
        let key = (contact_id.to_owned(), channel_id.to_owned());
        let identity = self.identities.get(&key)?;
        let (conversation_id, status, last_inbound_at, create) = match self.conversations.get(&key)
        {
            Some(c) => (c.id.clone(), c.status.clone(), c.last_inbound_at, false),
            None => (new_id(), "bot".to_owned(), None, true),
        };
        Some(Thread {
            conversation_id,
            status,
            last_inbound_at,
            channel_kind: identity.channel_kind.clone(),
            recipient: identity.recipient.clone(),
            unreachable: identity.unreachable.clone(),
            create,
        })
    }
}

/// Reads the enrolments (locked on PostgreSQL, in id order), contacts, identities and open
/// conversations of a batch of fires: four statements.
pub async fn load(
    w: &mut WriteTx,
    backend: Backend,
    enrollment_ids: &[String],
) -> Result<Loaded, sqlx::Error> {
    let mut loaded = Loaded::default();
    if enrollment_ids.is_empty() {
        return Ok(loaded);
    }
    let lock = match backend {
        Backend::Postgres => " ORDER BY id FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut s = Statement::new(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE id IN "
    ));
    s.bind_list(enrollment_ids.iter().cloned()).push(lock);
    for row in s.query().fetch_all(&mut *w.tx).await? {
        let e = enrollment_row(&row)?;
        loaded.enrollments.insert(e.id.clone(), e);
    }
    let contact_ids: Vec<String> = loaded
        .enrollments
        .values()
        .map(|e| e.contact_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if contact_ids.is_empty() {
        return Ok(loaded);
    }
    let mut s = Statement::new(&format!(
        "SELECT {} FROM contact WHERE id IN ",
        super::programs::CONTACT_COLUMNS
    ));
    s.bind_list(contact_ids.iter().cloned());
    for row in s.query().fetch_all(&mut *w.tx).await? {
        let c = super::programs::contact_from(&row)?;
        loaded.contacts.insert(c.id.clone(), c);
    }
    let mut s = Statement::new(
        "SELECT ci.contact_id, ci.channel_id, ci.external_id, ci.unreachable_reason,
                ci.unreachable_at, ch.kind
         FROM contact_identity ci JOIN channel ch ON ch.id = ci.channel_id
         WHERE ci.contact_id IN ",
    );
    s.bind_list(contact_ids.iter().cloned());
    for row in s.query().fetch_all(&mut *w.tx).await? {
        let unreachable = match row.try_get::<Option<i64>, _>("unreachable_at")? {
            Some(_) => Some(
                row.try_get::<Option<String>, _>("unreachable_reason")?
                    .unwrap_or_else(|| "unreachable".into()),
            ),
            None => None,
        };
        loaded.identities.insert(
            (row.try_get("contact_id")?, row.try_get("channel_id")?),
            Identity {
                recipient: row.try_get("external_id")?,
                channel_kind: row.try_get("kind")?,
                unreachable,
            },
        );
    }
    let mut s = Statement::new(
        "SELECT id, contact_id, channel_id, status, last_inbound_at FROM conversation
         WHERE status <> 'closed' AND thread = '' AND contact_id IN ",
    );
    s.bind_list(contact_ids.iter().cloned());
    for row in s.query().fetch_all(&mut *w.tx).await? {
        loaded.conversations.insert(
            (row.try_get("contact_id")?, row.try_get("channel_id")?),
            OpenConversation {
                id: row.try_get("id")?,
                status: row.try_get("status")?,
                last_inbound_at: row.try_get("last_inbound_at")?,
            },
        );
    }
    Ok(loaded)
}

/// Proactive messages sent to each contact within its own window `[from, to)` (its local day):
/// one statement for the batch.
pub async fn sent_between(
    w: &mut WriteTx,
    windows: &[(String, i64, i64)],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut counts = HashMap::new();
    for chunk in windows.chunks(CHUNK) {
        let mut s = Statement::new("WITH win(contact_id, lo, hi) AS (VALUES ");
        for (i, (contact, lo, hi)) in chunk.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.push("(")
                .bind(contact.clone())
                .push(", ")
                .bind(*lo)
                .push(", ")
                .bind(*hi)
                .push(")");
        }
        s.push(
            ") SELECT win.contact_id AS contact_id, COUNT(f.id) AS n FROM win
               LEFT JOIN fire f ON f.contact_id = win.contact_id AND f.status = 'done'
                AND f.sent = 1 AND f.done_at >= win.lo AND f.done_at < win.hi
             GROUP BY win.contact_id",
        );
        for row in s.query().fetch_all(&mut *w.tx).await? {
            counts.insert(row.try_get("contact_id")?, row.try_get("n")?);
        }
    }
    Ok(counts)
}

/// A message to queue (stored with its outbox row).
#[derive(Debug, Clone)]
struct Queued {
    tenant_id: String,
    channel_id: String,
    conversation_id: String,
    recipient: String,
    text: String,
    content: Option<String>,
    reply_to: Option<String>,
    /// What moderation found in it (a flag to record with it), if anything.
    flag: Option<QueuedFlag>,
}

/// A program message's flag: recorded with the message it is about. A `withheld` message is
/// stored (status `held` or `blocked`, outside the conversation's numbering: a negative `seq`)
/// and not sent until a moderator releases it.
#[derive(Debug, Clone)]
pub struct QueuedFlag {
    pub contact_id: String,
    pub action: &'static str,
    pub shadow: bool,
    pub withheld: Option<&'static str>,
    pub policy_version: i64,
    pub evidence: Value,
}

/// A fire to add; `checkin`: a check-in occurrence, which a pause's cancellation gives back.
#[derive(Debug, Clone)]
struct NewFire {
    tenant_id: String,
    enrollment_id: String,
    contact_id: String,
    kind: String,
    step: String,
    version: i64,
    epoch: i64,
    due_at: i64,
    checkin: bool,
}

/// A metric to count once the writes committed: name and `outcome`/`reason` label.
type Count = (&'static str, Option<(&'static str, &'static str)>);

/// What the engine decided for fires, to be written together. Empty by default.
#[derive(Debug, Default)]
pub struct Writes {
    /// Conversations to open: (id, tenant, contact, channel).
    open: Vec<(String, String, String, String)>,
    /// Contacts whose running enrolments stop (opt-out): (contact, reason).
    stop_contacts: Vec<(String, String)>,
    /// (enrolment, side fires only, reason).
    cancel: Vec<(String, bool, String)>,
    /// Enrolments' new state with the epoch each was read at.
    enrollments: Vec<(EnrollmentRow, i64)>,
    /// Contacts' fields and tags.
    fields: Vec<(String, Map<String, Value>, Vec<String>)>,
    messages: Vec<Queued>,
    /// (tenant, conversation, note).
    handoffs: Vec<(String, String, String)>,
    fires: Vec<NewFire>,
    /// (enrolment, program, step).
    visits: Vec<(String, String, String)>,
    /// (fire, status, reason, sent).
    closes: Vec<(String, String, Option<String>, bool)>,
    /// (fire, due at, reason).
    defers: Vec<(String, i64, String)>,
    /// (tenant, kind, subject, detail JSON).
    audits: Vec<(String, String, String, String)>,
    counts: Vec<Count>,
}

impl Writes {
    /// Opens the thread's conversation if it is not open yet (once).
    pub fn use_thread(&mut self, tenant_id: &str, contact_id: &str, channel_id: &str, t: &Thread) {
        if t.create && !self.open.iter().any(|o| o.0 == t.conversation_id) {
            self.open.push((
                t.conversation_id.clone(),
                tenant_id.to_owned(),
                contact_id.to_owned(),
                channel_id.to_owned(),
            ));
        }
    }

    pub fn stop_contact(&mut self, contact_id: &str, reason: &str) {
        self.stop_contacts
            .push((contact_id.to_owned(), reason.to_owned()));
    }

    /// Cancels an enrolment's pending fires: all, or (`side_only`) its check-ins and nudges.
    pub fn cancel_enrollment_fires(&mut self, enrollment_id: &str, side_only: bool, reason: &str) {
        self.cancel
            .push((enrollment_id.to_owned(), side_only, reason.to_owned()));
    }

    /// Saves the enrolment, guarded by the epoch it was read at.
    pub fn save_enrollment(&mut self, e: &EnrollmentRow, read_epoch: i64) {
        self.enrollments.push((e.clone(), read_epoch));
    }

    pub fn contact_fields(
        &mut self,
        contact_id: &str,
        fields: &Map<String, Value>,
        tags: &[String],
    ) {
        self.fields
            .push((contact_id.to_owned(), fields.clone(), tags.to_vec()));
    }

    #[allow(clippy::too_many_arguments)]
    pub fn queue_message(
        &mut self,
        tenant_id: &str,
        channel_id: &str,
        thread: &Thread,
        text: &str,
        content_json: Option<String>,
        reply_to: Option<&str>,
        flag: Option<QueuedFlag>,
    ) {
        self.messages.push(Queued {
            tenant_id: tenant_id.to_owned(),
            channel_id: channel_id.to_owned(),
            conversation_id: thread.conversation_id.clone(),
            recipient: thread.recipient.clone(),
            text: text.to_owned(),
            content: content_json,
            reply_to: reply_to.map(str::to_owned),
            flag,
        });
    }

    pub fn handoff(&mut self, tenant_id: &str, conversation_id: &str, note: &str) {
        self.handoffs.push((
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            note.to_owned(),
        ));
    }

    /// Adds a fire (nothing if the same one — enrolment, kind, step, version, epoch — exists).
    pub fn add_fire(&mut self, e: &EnrollmentRow, kind: &str, step: &str, epoch: i64, due_at: i64) {
        self.fires.push(NewFire {
            tenant_id: e.tenant_id.clone(),
            enrollment_id: e.id.clone(),
            contact_id: e.contact_id.clone(),
            kind: kind.to_owned(),
            step: step.to_owned(),
            version: e.version,
            epoch,
            due_at,
            checkin: false,
        });
    }

    /// Schedules a check-in's occurrence `at` (keyed by it); one a pause cancelled comes back.
    pub fn schedule_checkin(&mut self, e: &EnrollmentRow, checkin: &str, at: i64) {
        self.fires.push(NewFire {
            tenant_id: e.tenant_id.clone(),
            enrollment_id: e.id.clone(),
            contact_id: e.contact_id.clone(),
            kind: "checkin".into(),
            step: checkin.to_owned(),
            version: e.version,
            epoch: at,
            due_at: at,
            checkin: true,
        });
    }

    pub fn visits(&mut self, e: &EnrollmentRow, steps: &[String]) {
        for step in steps {
            self.visits
                .push((e.id.clone(), e.program_id.clone(), step.clone()));
        }
    }

    /// Closes a pending fire: `done` (`sent`: it sent a proactive message), `skipped`,
    /// `cancelled`, `stale`.
    pub fn close(&mut self, fire_id: &str, status: &str, reason: Option<&str>, sent: bool) {
        self.closes.push((
            fire_id.to_owned(),
            status.to_owned(),
            reason.map(str::to_owned),
            sent,
        ));
    }

    /// Moves a pending fire to a later time.
    pub fn defer(&mut self, fire_id: &str, due_at: i64, reason: &str) {
        self.defers
            .push((fire_id.to_owned(), due_at, reason.to_owned()));
    }

    pub fn audit(&mut self, tenant_id: &str, kind: &str, subject: &str, detail: Value) {
        self.audits.push((
            tenant_id.to_owned(),
            kind.to_owned(),
            subject.to_owned(),
            detail.to_string(),
        ));
    }

    /// Counts `name` (with a label) once the writes are committed.
    pub fn count(&mut self, name: &'static str, label: Option<(&'static str, &'static str)>) {
        self.counts.push((name, label));
    }

    /// Takes another fire's writes into this one.
    pub fn merge(&mut self, other: Writes) {
        self.open.extend(other.open);
        self.stop_contacts.extend(other.stop_contacts);
        self.cancel.extend(other.cancel);
        self.enrollments.extend(other.enrollments);
        self.fields.extend(other.fields);
        self.messages.extend(other.messages);
        self.handoffs.extend(other.handoffs);
        self.fires.extend(other.fires);
        self.visits.extend(other.visits);
        self.closes.extend(other.closes);
        self.defers.extend(other.defers);
        self.audits.extend(other.audits);
        self.counts.extend(other.counts);
    }

    /// The metrics to count after the commit.
    pub fn counts(&self) -> &[Count] {
        &self.counts
    }

    /// Writes everything, in the order one fire's writes have always had: conversations opened,
    /// enrolments stopped and their fires cancelled, enrolments saved (an error if one moved
    /// since it was read), fields, messages with their outbox rows, hand-offs, new fires, the
    /// funnel, the fires closed or deferred, the audit trail.
    pub async fn write(
        mut self,
        w: &mut WriteTx,
        backend: Backend,
        now: i64,
    ) -> anyhow::Result<()> {
        self.open_conversations(w).await?;
        for (contact, reason) in &self.stop_contacts {
            super::programs::stop_contact_enrollments(w, contact, reason, now).await?;
        }
        self.write_cancels(w, now).await?;
        self.write_enrollments(w, now).await?;
        self.write_fields(w).await?;
        self.write_messages(w, backend, now).await?;
        for (tenant, conversation, note) in &self.handoffs {
            super::programs::set_conversation_human(w, tenant, conversation, note).await?;
        }
        self.write_fires(w, now).await?;
        self.write_visits(w, now).await?;
        self.write_closes(w, now).await?;
        self.write_audits(w).await?;
        Ok(())
    }

    /// Opens the conversations written to; where one was opened meanwhile (another process, the
    /// router), its id replaces ours.
    async fn open_conversations(&mut self, w: &mut WriteTx) -> Result<(), sqlx::Error> {
        if self.open.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut opened: HashSet<String> = HashSet::new();
        for chunk in self.open.chunks(CHUNK) {
            let mut s = Statement::new(
                "INSERT INTO conversation (id, tenant_id, contact_id, channel_id, created_at, updated_at) VALUES ",
            );
            for (i, (id, tenant, contact, channel)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(id.clone())
                    .push(", ")
                    .bind(tenant.clone())
                    .push(", ")
                    .bind(contact.clone())
                    .push(", ")
                    .bind(channel.clone())
                    .push(", ")
                    .bind(now)
                    .push(", ")
                    .bind(now)
                    .push(")");
            }
            s.push(" ON CONFLICT DO NOTHING RETURNING id");
            for row in s.query().fetch_all(&mut *w.tx).await? {
                opened.insert(row.try_get("id")?);
            }
        }
        let mut renamed: HashMap<String, String> = HashMap::new();
        for (id, _, contact, channel) in self.open.iter().filter(|o| !opened.contains(&o.0)) {
            let row = sqlx::query(
                "SELECT id FROM conversation WHERE contact_id = $1 AND channel_id = $2 AND thread = '' AND status <> 'closed'",
            )
            .bind(contact)
            .bind(channel)
            .fetch_one(&mut *w.tx)
            .await?;
            renamed.insert(id.clone(), row.try_get("id")?);
        }
        for m in &mut self.messages {
            if let Some(id) = renamed.get(&m.conversation_id) {
                m.conversation_id = id.clone();
            }
        }
        for h in &mut self.handoffs {
            if let Some(id) = renamed.get(&h.1) {
                h.1 = id.clone();
            }
        }
        Ok(())
    }

    async fn write_cancels(&self, w: &mut WriteTx, now: i64) -> Result<(), sqlx::Error> {
        let mut groups: BTreeMap<(bool, &str), Vec<String>> = BTreeMap::new();
        for (enrollment, side_only, reason) in &self.cancel {
            groups
                .entry((*side_only, reason.as_str()))
                .or_default()
                .push(enrollment.clone());
        }
        for ((side_only, reason), ids) in groups {
            for chunk in ids.chunks(CHUNK) {
                let mut s = Statement::new("UPDATE fire SET status = 'cancelled', reason = ");
                s.bind(reason.to_owned())
                    .push(", done_at = ")
                    .bind(now)
                    .push(" WHERE status = 'pending'");
                if side_only {
                    s.push(" AND kind IN ('checkin', 'nudge')");
                }
                s.push(" AND enrollment_id IN ")
                    .bind_list(chunk.iter().cloned());
                s.query().execute(&mut *w.tx).await?;
            }
        }
        Ok(())
    }

    async fn write_enrollments(&self, w: &mut WriteTx, now: i64) -> anyhow::Result<()> {
        for chunk in self.enrollments.chunks(CHUNK) {
            let mut s = Statement::new(
                "WITH v(id, read_epoch, status, step, waiting, epoch, reprompts, steps_done, nudges,
                        at_risk, streak, best_streak, streak_day, badges, answers, stopped_reason,
                        completed_at, checkin_open) AS (VALUES ",
            );
            for (i, (e, read_epoch)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(e.id.clone())
                    .push(", ")
                    .bind(*read_epoch)
                    .push(", ")
                    .bind(e.status.clone())
                    .push(", ")
                    .bind(e.step.clone())
                    .push(", ")
                    .bind(e.waiting.clone())
                    .push(", ")
                    .bind(e.epoch)
                    .push(", ")
                    .bind(e.reprompts)
                    .push(", ")
                    .bind(e.steps_done)
                    .push(", ")
                    .bind(e.nudges)
                    .push(", ")
                    .bind(i64::from(e.at_risk))
                    .push(", ")
                    .bind(e.streak)
                    .push(", ")
                    .bind(e.best_streak)
                    .push(", ")
                    .bind(e.streak_day.clone())
                    .push(", ")
                    .bind(serde_json::to_string(&e.badges).unwrap_or_else(|_| "[]".into()))
                    .push(", ")
                    .bind(Value::Object(e.answers.clone()).to_string())
                    .push(", ")
                    .bind(e.stopped_reason.clone())
                    .push(", ")
                    .bind(e.completed_at)
                    .push(", ")
                    .bind(e.checkin_open.clone())
                    .push(")");
            }
            s.push(
                ") UPDATE enrollment SET status = v.status, step = v.step, waiting = v.waiting,
                        epoch = v.epoch, reprompts = v.reprompts, steps_done = v.steps_done,
                        nudges = v.nudges, at_risk = v.at_risk, streak = v.streak,
                        best_streak = v.best_streak, streak_day = v.streak_day, badges = v.badges,
                        answers = v.answers, stopped_reason = v.stopped_reason,
                        completed_at = v.completed_at, checkin_open = v.checkin_open,
                        updated_at = ",
            )
            .bind(now)
            .push(" FROM v WHERE enrollment.id = v.id AND enrollment.epoch = v.read_epoch");
            let saved = s.query().execute(&mut *w.tx).await?.rows_affected();
            anyhow::ensure!(
                saved == chunk.len() as u64,
                "an enrolment moved meanwhile ({saved} of {} saved)",
                chunk.len()
            );
        }
        Ok(())
    }

    async fn write_fields(&self, w: &mut WriteTx) -> Result<(), sqlx::Error> {
        for chunk in self.fields.chunks(CHUNK) {
            let mut s = Statement::new("WITH v(id, fields, tags) AS (VALUES ");
            for (i, (contact, fields, tags)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(contact.clone())
                    .push(", ")
                    .bind(Value::Object(fields.clone()).to_string())
                    .push(", ")
                    .bind(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
                    .push(")");
            }
            s.push(") UPDATE contact SET fields = v.fields, tags = v.tags FROM v WHERE contact.id = v.id");
            s.query().execute(&mut *w.tx).await?;
        }
        Ok(())
    }

    /// The messages numbered in their conversations (locked in id order on PostgreSQL, as the
    /// router does), then stored with their outbox rows.
    async fn write_messages(
        &self,
        w: &mut WriteTx,
        backend: Backend,
        now: i64,
    ) -> anyhow::Result<()> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let withheld = |m: &Queued| m.flag.as_ref().is_some_and(|f| f.withheld.is_some());
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.messages.iter().filter(|m| !withheld(m)) {
            *counts.entry(m.conversation_id.clone()).or_default() += 1;
        }
        // Only withheld messages: no conversation is numbered (an empty lock list is not SQL).
        if !counts.is_empty() {
            lock_conversations(w, backend, &counts).await?;
        }
        let mut by_count: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (id, k) in &counts {
            by_count.entry(*k).or_default().push(id.clone());
        }
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        for (k, ids) in by_count {
            for chunk in ids.chunks(CHUNK) {
                let mut s = Statement::new("UPDATE conversation SET last_seq = last_seq + ");
                s.bind(k as i64)
                    .push(", updated_at = ")
                    .bind(now)
                    .push(" WHERE id IN ")
                    .bind_list(chunk.iter().cloned())
                    .push(" RETURNING id, last_seq");
                for row in s.query().fetch_all(&mut *w.tx).await? {
                    let last: i64 = row.try_get("last_seq")?;
                    next_seq.insert(row.try_get("id")?, last - k as i64 + 1);
                }
            }
        }
        anyhow::ensure!(
            next_seq.len() == counts.len(),
            "a conversation to write to is gone"
        );
        // The outbox runs on the wall clock (the engine's may be set by hand in tests).
        let send_at = now_ms();
        // Withheld messages take a negative `seq`, unique in the conversation and below every
        // other: no visitor or history sees them, and the numbering keeps no gap.
        let mut withheld_seq = -(send_at.max(1) * 1000);
        let mut flags: Vec<(String, &Queued, &QueuedFlag)> = Vec::new();
        for chunk in self.messages.chunks(CHUNK) {
            let mut queued_rows = 0;
            let mut messages = Statement::new(
                "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction,
                                      author, text, reply_to, status, created_at) VALUES ",
            );
            let mut deliveries = Statement::new(
                "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                                       recipient, body, content, next_attempt_at, created_at,
                                       updated_at) VALUES ",
            );
            for (i, m) in chunk.iter().enumerate() {
                let id = new_id();
                if i > 0 {
                    messages.push(", ");
                }
                if let Some(flag) = &m.flag {
                    flags.push((id.clone(), m, flag));
                }
                if let Some(status) = m.flag.as_ref().and_then(|f| f.withheld) {
                    withheld_seq -= 1;
                    messages
                        .push("(")
                        .bind(id.clone())
                        .push(", ")
                        .bind(m.tenant_id.clone())
                        .push(", ")
                        .bind(m.conversation_id.clone())
                        .push(", ")
                        .bind(m.channel_id.clone())
                        .push(", ")
                        .bind(withheld_seq)
                        .push(", 'outbound', 'bot', ")
                        .bind(m.text.clone())
                        .push(", ")
                        .bind(m.reply_to.clone())
                        .push(", ")
                        .bind(status)
                        .push(", ")
                        .bind(now)
                        .push(")");
                    continue;
                }
                let seq = next_seq
                    .get_mut(&m.conversation_id)
                    .ok_or(sqlx::Error::RowNotFound)?;
                if queued_rows > 0 {
                    deliveries.push(", ");
                }
                queued_rows += 1;
                messages
                    .push("(")
                    .bind(id.clone())
                    .push(", ")
                    .bind(m.tenant_id.clone())
                    .push(", ")
                    .bind(m.conversation_id.clone())
                    .push(", ")
                    .bind(m.channel_id.clone())
                    .push(", ")
                    .bind(*seq)
                    .push(", 'outbound', 'bot', ")
                    .bind(m.text.clone())
                    .push(", ")
                    .bind(m.reply_to.clone())
                    .push(", 'queued', ")
                    .bind(now)
                    .push(")");
                deliveries
                    .push("(")
                    .bind(new_id())
                    .push(", ")
                    .bind(m.tenant_id.clone())
                    .push(", ")
                    .bind(m.channel_id.clone())
                    .push(", ")
                    .bind(m.conversation_id.clone())
                    .push(", ")
                    .bind(id)
                    .push(", ")
                    .bind(*seq)
                    .push(", ")
                    .bind(m.recipient.clone())
                    .push(", ")
                    .bind(m.text.clone())
                    .push(", ")
                    .bind(m.content.clone())
                    .push(", ")
                    .bind(send_at)
                    .push(", ")
                    .bind(send_at)
                    .push(", ")
                    .bind(send_at)
                    .push(")");
                *seq += 1;
            }
            messages.query().execute(&mut *w.tx).await?;
            if queued_rows > 0 {
                deliveries.query().execute(&mut *w.tx).await?;
            }
        }
        // Flags are rare: one statement each.
        for (message_id, m, flag) in flags {
            super::moderation::insert_flag(
                w,
                super::moderation::NewFlag {
                    tenant_id: &m.tenant_id,
                    conversation_id: &m.conversation_id,
                    contact_id: &flag.contact_id,
                    message_id: &message_id,
                    direction: "outbound",
                    action: flag.action,
                    shadow: flag.shadow,
                    policy_version: flag.policy_version,
                    evidence: &flag.evidence,
                },
                now,
            )
            .await?;
        }
        Ok(())
    }

    async fn write_fires(&self, w: &mut WriteTx, now: i64) -> Result<(), sqlx::Error> {
        // A check-in's insert may update the row it meets, which PostgreSQL refuses twice in
        // one statement: each key once.
        let mut seen = HashSet::new();
        let fires: Vec<&NewFire> = self
            .fires
            .iter()
            .filter(|f| {
                seen.insert((
                    f.enrollment_id.as_str(),
                    f.kind.as_str(),
                    f.step.as_str(),
                    f.version,
                    f.epoch,
                ))
            })
            .collect();
        for checkin in [false, true] {
            let group: Vec<&&NewFire> = fires.iter().filter(|f| f.checkin == checkin).collect();
            for chunk in group.chunks(CHUNK) {
                let mut s = Statement::new(
                    "INSERT INTO fire (id, tenant_id, enrollment_id, contact_id, kind, step,
                                       version, epoch, intended_at, due_at, created_at) VALUES ",
                );
                for (i, f) in chunk.iter().enumerate() {
                    if i > 0 {
                        s.push(", ");
                    }
                    s.push("(")
                        .bind(new_id())
                        .push(", ")
                        .bind(f.tenant_id.clone())
                        .push(", ")
                        .bind(f.enrollment_id.clone())
                        .push(", ")
                        .bind(f.contact_id.clone())
                        .push(", ")
                        .bind(f.kind.clone())
                        .push(", ")
                        .bind(f.step.clone())
                        .push(", ")
                        .bind(f.version)
                        .push(", ")
                        .bind(f.epoch)
                        .push(", ")
                        .bind(f.due_at)
                        .push(", ")
                        .bind(f.due_at)
                        .push(", ")
                        .bind(now)
                        .push(")");
                }
                s.push(" ON CONFLICT (enrollment_id, kind, step, version, epoch) ");
                if checkin {
                    s.push(
                        "DO UPDATE SET status = 'pending', reason = 'resumed', done_at = NULL
                         WHERE fire.status = 'cancelled' AND fire.reason = 'paused'",
                    );
                } else {
                    s.push("DO NOTHING");
                }
                s.query().execute(&mut *w.tx).await?;
            }
        }
        Ok(())
    }

    async fn write_visits(&self, w: &mut WriteTx, now: i64) -> Result<(), sqlx::Error> {
        for chunk in self.visits.chunks(CHUNK) {
            let mut s = Statement::new(
                "INSERT INTO step_visit (enrollment_id, program_id, step, reached_at) VALUES ",
            );
            for (i, (enrollment, program, step)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(enrollment.clone())
                    .push(", ")
                    .bind(program.clone())
                    .push(", ")
                    .bind(step.clone())
                    .push(", ")
                    .bind(now)
                    .push(")");
            }
            s.push(" ON CONFLICT (enrollment_id, step) DO NOTHING");
            s.query().execute(&mut *w.tx).await?;
        }
        Ok(())
    }

    async fn write_closes(&self, w: &mut WriteTx, now: i64) -> Result<(), sqlx::Error> {
        for chunk in self.closes.chunks(CHUNK) {
            let mut s = Statement::new("WITH v(id, status, reason, sent) AS (VALUES ");
            for (i, (id, status, reason, sent)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(id.clone())
                    .push(", ")
                    .bind(status.clone())
                    .push(", ")
                    .bind(reason.clone())
                    .push(", ")
                    .bind(i64::from(*sent))
                    .push(")");
            }
            s.push(
                ") UPDATE fire SET status = v.status, reason = v.reason, sent = v.sent, done_at = ",
            )
            .bind(now)
            .push(" FROM v WHERE fire.id = v.id AND fire.status = 'pending'");
            s.query().execute(&mut *w.tx).await?;
        }
        for chunk in self.defers.chunks(CHUNK) {
            let mut s = Statement::new("WITH v(id, due_at, reason) AS (VALUES ");
            for (i, (id, due_at, reason)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(id.clone())
                    .push(", ")
                    .bind(*due_at)
                    .push(", ")
                    .bind(reason.clone())
                    .push(")");
            }
            s.push(
                ") UPDATE fire SET due_at = v.due_at, reason = v.reason
                 FROM v WHERE fire.id = v.id AND fire.status = 'pending'",
            );
            s.query().execute(&mut *w.tx).await?;
        }
        Ok(())
    }

    async fn write_audits(&self, w: &mut WriteTx) -> Result<(), sqlx::Error> {
        let at = now_ms();
        for chunk in self.audits.chunks(CHUNK) {
            let mut s = Statement::new(
                "INSERT INTO event (tenant_id, kind, subject, detail, created_at) VALUES ",
            );
            for (i, (tenant, kind, subject, detail)) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.push("(")
                    .bind(tenant.clone())
                    .push(", ")
                    .bind(kind.clone())
                    .push(", ")
                    .bind(subject.clone())
                    .push(", ")
                    .bind(detail.clone())
                    .push(", ")
                    .bind(at)
                    .push(")");
            }
            s.query().execute(&mut *w.tx).await?;
        }
        Ok(())
    }
}
