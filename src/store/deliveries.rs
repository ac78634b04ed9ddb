//! The outbox table: claiming due deliveries, recording outcomes, dead letters.
//!
//! A claim is a lease (`locked_until`), not a lock held across the provider call: the claiming
//! transaction is short, the send happens outside it, and a worker that dies mid-send simply lets
//! its lease run out. Attempts are counted at claim time, so a crash during a send counts as an
//! attempt (the provider may have received it).

use sqlx::Row;
use sqlx::any::AnyRow;

use switchboard_channel::{DeliveryState, StatusUpdate};

use super::{Backend, Store, WriteTx, now_ms, tenants::record_event};
use crate::store::messages::rfc3339;

/// A delivery claimed for sending, with everything the channel needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: String,
    pub tenant_id: String,
    pub channel_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub seq: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub created_at: i64,
    /// The contact's id at the provider.
    pub recipient: String,
    pub body: String,
    /// Buttons, list, media or template (JSON of the contract's `Content`), if any.
    pub content: Option<String>,
    /// Parts of a split message the provider accepted in earlier attempts.
    pub parts_sent: i64,
    /// The lease this claim holds (`locked_until` as set by the claim). Outcomes are recorded
    /// only while it is still ours, so a worker that outlived its lease cannot undo another's.
    pub lease: i64,
    /// Why the recipient cannot be reached on this channel (blocked the bot, bounced), read
    /// with the claim; `None`: reachable as far as we know.
    pub unreachable: Option<String>,
    /// When the contact last wrote in this conversation (ms), read with the claim for the
    /// channels whose rules depend on it (WhatsApp's 24-hour window): a send costs no read of
    /// its own. A message that arrives after the claim only moves it later (the window wider).
    pub last_inbound_at: Option<i64>,
}

/// What became of one attempt, to be recorded (in batches) by [`Store::record_outcomes`].
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered {
        provider_message_id: Option<String>,
    },
    RetryAt {
        next_attempt_at: i64,
        error: String,
        /// Parts of a split message accepted so far, if the attempt got that far.
        parts_sent: Option<i64>,
    },
    /// Not attempted (a pacing limit): try at `next_attempt_at`; the claim's attempt is given back.
    Defer {
        next_attempt_at: i64,
    },
    Dead {
        error: String,
    },
}

/// A delivery as the API shows it (dead letters, mostly).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: String,
    pub updated_at: String,
}

/// The claim statement. Only a delivery with no earlier pending delivery in its conversation is
/// due: replies of one conversation leave in order, even when an earlier one is waiting out a
/// back-off. `$lock` is empty on SQLite (one writer) and `FOR UPDATE SKIP LOCKED` on Postgres, so
/// concurrent workers (or processes) never claim the same row and never wait on each other.
/// The columns a claim returns (see [`claimed_from_row`]).
macro_rules! claim_returning {
    () => {
        " RETURNING id, tenant_id, channel_id, conversation_id, message_id, seq, attempts,
                    created_at, recipient, body, content, parts_sent, locked_until,
                    (SELECT ci.unreachable_reason FROM contact_identity ci
                     WHERE ci.channel_id = delivery.channel_id
                       AND ci.external_id = delivery.recipient
                       AND ci.unreachable_at IS NOT NULL) AS unreachable,
                    (SELECT c.last_inbound_at FROM conversation c
                     WHERE c.id = delivery.conversation_id) AS last_inbound_at"
    };
}

/// Claims the new deliveries `ids` for `lease_ms` inside the transaction that wrote them, each
/// only if nothing of its conversation still waits to go before it (else the worker's claim
/// takes it in its turn).
pub(super) async fn preclaim(
    w: &mut WriteTx,
    backend: Backend,
    ids: &[String],
    lease_ms: i64,
    now: i64,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    let mut claimed = Vec::with_capacity(ids.len());
    // One statement whatever the count, its SQL the same for any count (see `bulk::json_rows`).
    if !ids.is_empty() {
        let mut s = super::bulk::Statement::new(
            "UPDATE delivery SET locked_until = $1, attempts = attempts + 1, updated_at = $2
             WHERE ",
        );
        // $1 and $2 are named in the text already; the list's JSON text is $3.
        s.arg(now + lease_ms)
            .arg(now)
            .bind_in(backend, "id", ids.iter().map(String::as_str))
            .push(concat!(
                " AND NOT EXISTS (SELECT 1 FROM delivery e
                              WHERE e.conversation_id = delivery.conversation_id
                                AND e.status = 'pending' AND e.seq < delivery.seq)",
                claim_returning!()
            ));
        let rows = s.query().fetch_all(&mut *w.tx).await?;
        for row in rows {
            claimed.push(claimed_from_row(&row)?);
        }
    }
    Ok(claimed)
}

/// PostgreSQL: marks deliveries `rows` (`(delivery id, provider's id or "")`) delivered. Their
/// messages stay `queued` on the row and read as `sent` (see `messages::message_status!`).
async fn delivered_on_postgres(
    w: &mut WriteTx,
    rows: &[(&str, &str)],
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE delivery SET status = 'delivered', locked_until = NULL,
                last_error = NULL, provider_message_id = NULLIF(v.pid, ''),
                updated_at = $1
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS pid
               FROM jsonb_array_elements($2::jsonb)) AS v
         WHERE delivery.id = v.id AND delivery.status = 'pending'",
    )
    .bind(now)
    .bind(super::bulk::json_rows(rows))
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// SQLite: the outcomes' script — deliveries marked delivered (with the provider's id; their
/// messages read as `sent`, see `messages::message_status!`). `$1` now, `$2` `[delivery id,
/// provider id or ""]` rows.
macro_rules! delivered_in_script {
    () => {
        "UPDATE delivery SET status = 'delivered', locked_until = NULL,
                last_error = NULL, provider_message_id = NULLIF(v.pid, ''),
                updated_at = $1
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS pid FROM jsonb_each($2)) AS v
         WHERE delivery.id = v.id AND +delivery.status = 'pending';"
    };
}

/// Appended to `delivered_in_script!`: whether any provider report waits in `early_status`
/// (a row back: yes).
macro_rules! early_probe_in_script {
    () => {
        "\n         SELECT 1 AS one FROM early_status LIMIT 1;"
    };
}

/// SQLite: a completion script's delivery rows (`$3`, each `[reply id, delivery id, tenant,
/// conversation, channel, -, recipient, text, …]`) inserted already claimed — leased until `$4`,
/// their first attempt counted, at `$1` — each one whose conversation has nothing pending before
/// it (else the worker's claim takes it in its turn), and returned with the claim's columns.
/// The same as inserting them and then running [`preclaim`], less an update of every new row:
/// the subquery reads the table being inserted into, so SQLite computes every row before it
/// inserts the first, and each row sees only the deliveries there before the statement (a
/// completion script has one reply per conversation). Each seq is read from the conversation the
/// script just numbered.
pub(super) const INSERT_CLAIMED_IN_SCRIPT: &str = concat!(
    "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                           recipient, body, next_attempt_at, created_at, updated_at,
                           locked_until, attempts)
     SELECT v ->> 1, v ->> 2, v ->> 4, v ->> 3, v ->> 0,
            (SELECT c.last_seq FROM conversation c WHERE c.id = v ->> 3),
            v ->> 6, v ->> 7, $1, $1, $1,
            CASE WHEN free THEN $4 END, free
     FROM (SELECT value AS v,
                  NOT EXISTS (SELECT 1 FROM delivery e
                              WHERE e.conversation_id = value ->> 3
                                AND e.status = 'pending') AS free
           FROM jsonb_each($3)) WHERE true",
    claim_returning!()
);

/// PostgreSQL: a bulk completion's delivery rows (`$2`, each `[reply id, delivery id, tenant,
/// conversation, channel, seq, recipient, text, …]`) inserted already claimed — leased until
/// `$3`, their first attempt counted, at `$1` — each one whose conversation has nothing pending
/// (else the worker's claim takes it in its turn), and returned with the claim's columns: the
/// PostgreSQL form of [`INSERT_CLAIMED_IN_SCRIPT`]. A statement does not see the rows it
/// inserts, so each row's look sees only the deliveries there before it (a bulk completion has
/// one reply per conversation). The look probes `delivery_by_conversation`, in its cached plan
/// too (see [`super::WRITER_SETTINGS_ON_POSTGRES`]).
pub(super) const INSERT_CLAIMED_ON_POSTGRES: &str = concat!(
    "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                           recipient, body, next_attempt_at, created_at, updated_at,
                           locked_until, attempts)
     SELECT r.v ->> 1, r.v ->> 2, r.v ->> 4, r.v ->> 3, r.v ->> 0,
            CAST(r.v ->> 5 AS BIGINT), r.v ->> 6, r.v ->> 7, $1, $1, $1,
            CASE WHEN r.free THEN $3 END, CASE WHEN r.free THEN 1 ELSE 0 END
     FROM (SELECT value AS v,
                  NOT EXISTS (SELECT 1 FROM delivery e
                              WHERE e.conversation_id = value ->> 3
                                AND e.status = 'pending') AS free
           FROM jsonb_array_elements($2::jsonb)) AS r",
    claim_returning!()
);

macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE delivery SET locked_until = $1, attempts = attempts + 1, updated_at = $2
             WHERE id IN (
                 SELECT d.id FROM delivery d
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $2
                   AND (d.locked_until IS NULL OR d.locked_until <= $2)
                   AND NOT EXISTS (SELECT 1 FROM delivery e
                                   WHERE e.conversation_id = d.conversation_id
                                     AND e.status = 'pending' AND e.seq < d.seq)
                 ORDER BY d.next_attempt_at, d.seq
                 LIMIT $3 ",
            $lock,
            ")",
            claim_returning!()
        )
    };
}

pub(super) fn claimed_from_row(r: &AnyRow) -> Result<ClaimedDelivery, sqlx::Error> {
    Ok(ClaimedDelivery {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        channel_id: r.try_get("channel_id")?,
        conversation_id: r.try_get("conversation_id")?,
        message_id: r.try_get("message_id")?,
        seq: r.try_get("seq")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        recipient: r.try_get("recipient")?,
        body: r.try_get("body")?,
        content: r.try_get("content")?,
        parts_sent: r.try_get("parts_sent")?,
        lease: r.try_get("locked_until")?,
        unreachable: r.try_get("unreachable")?,
        last_inbound_at: r.try_get("last_inbound_at")?,
    })
}

/// Order of outbound message states: a report never moves a message backwards (reports arrive in
/// any order: `read` can come before `delivered`). `failed` is final.
fn state_rank(state: DeliveryState) -> i64 {
    match state {
        DeliveryState::Sent => 1,
        DeliveryState::Delivered => 2,
        DeliveryState::Read | DeliveryState::Played => 3,
        DeliveryState::Failed => 4,
    }
}

/// How long a status report for an id we have not recorded is kept.
const EARLY_STATUS_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

fn parse_state(name: &str) -> Option<DeliveryState> {
    [
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Read,
        DeliveryState::Played,
        DeliveryState::Failed,
    ]
    .into_iter()
    .find(|s| state_name(*s) == name)
}

// The statements of a provider's status report. Each finds its rows by an index
// (`delivery_by_provider_message`, `early_status`'s key, `early_status_by_age`): the `delivery`
// table keeps every message ever sent, and WhatsApp reports three times per message. The test
// `status_reports_find_their_rows_by_index` holds SQLite to that; on PostgreSQL the story
// `the_writer_s_cached_plans_probe_indexes` does.

/// `GET /v1/deliveries?status=pending|dead`: a tenant's deliveries in one status, the last
/// changed first. Found by `delivery_due` (status first): the queue and the dead letters, not
/// the history.
pub(super) const DELIVERIES_BY_STATUS: &str =
    "SELECT id, conversation_id, message_id, status, attempts, last_error, next_attempt_at,
            updated_at
     FROM delivery WHERE tenant_id = $1 AND status = $2
     ORDER BY updated_at DESC, id DESC LIMIT $3";

/// `GET /v1/deliveries?status=delivered`: a tenant's delivered messages, the newest first (ids
/// are UUIDv7, in order of creation), by `delivery_by_tenant` (migration 0015). By status, as
/// above, it read every message ever sent and sorted them. The index is keyed on what never
/// changes, so a delivery writes its entry once, when it is inserted.
pub(super) const DELIVERED_NEWEST: &str =
    "SELECT id, conversation_id, message_id, status, attempts, last_error, next_attempt_at,
            updated_at
     FROM delivery WHERE tenant_id = $1 AND status = 'delivered'
     ORDER BY id DESC LIMIT $2";

/// Whether a delivery of ours has this provider id.
const STATUS_KNOWN: &str =
    "SELECT 1 AS one FROM delivery WHERE channel_id = $1 AND provider_message_id = $2";

/// A report's state onto the message, unless the message is already further along.
const STATUS_TO_MESSAGE: &str = "UPDATE message SET status = $1
     WHERE id IN (SELECT message_id FROM delivery
                  WHERE channel_id = $2 AND provider_message_id = $3)
       AND (CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3
                        WHEN 'played' THEN 3 WHEN 'failed' THEN 4 ELSE 0 END) < $4";

/// A failure reported after the provider accepted the message: its delivery a dead letter.
const STATUS_FAILS_DELIVERY: &str =
    "UPDATE delivery SET status = 'dead', last_error = $1, updated_at = $2
     WHERE channel_id = $3 AND provider_message_id = $4 AND status <> 'dead'
     RETURNING id, tenant_id";

/// Reports held for an id that has now been recorded.
const EARLY_STATUS_TAKE: &str =
    "DELETE FROM early_status WHERE channel_id = $1 AND provider_message_id = $2
     RETURNING state, error";

/// Held reports past their week.
const EARLY_STATUS_EXPIRE: &str = "DELETE FROM early_status WHERE created_at < $1";

/// Applies a report to the message with that provider id, inside the caller's transaction.
async fn apply_status_in(
    w: &mut WriteTx,
    channel_id: &str,
    status: &StatusUpdate,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(STATUS_TO_MESSAGE)
        .bind(state_name(status.state))
        .bind(channel_id)
        .bind(&status.provider_message_id)
        .bind(state_rank(status.state))
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
        > 0;
    if status.state == DeliveryState::Failed {
        // The provider accepted the message and failed it later: a dead letter like any other,
        // with the provider's reason.
        let error = status
            .error
            .clone()
            .unwrap_or_else(|| "the provider reported the message failed".into());
        let dead = sqlx::query(STATUS_FAILS_DELIVERY)
            .bind(&error)
            .bind(now_ms())
            .bind(channel_id)
            .bind(&status.provider_message_id)
            .fetch_optional(&mut *w.tx)
            .await?;
        if let Some(row) = dead {
            let (id, tenant): (String, String) = (row.try_get("id")?, row.try_get("tenant_id")?);
            let detail = serde_json::json!({ "error": error, "reported": true }).to_string();
            record_event(
                &mut w.tx,
                Some(&tenant),
                "delivery.dead",
                Some(&id),
                &detail,
            )
            .await?;
        }
    }
    Ok(changed)
}

/// Reports that arrived before `provider_message_id` was recorded: applied now, then forgotten.
async fn apply_early_statuses(
    w: &mut WriteTx,
    channel_id: &str,
    provider_message_id: &str,
) -> Result<(), sqlx::Error> {
    let held = sqlx::query(EARLY_STATUS_TAKE)
        .bind(channel_id)
        .bind(provider_message_id)
        .fetch_all(&mut *w.tx)
        .await?;
    for row in held {
        let state: String = row.try_get("state")?;
        let Some(state) = parse_state(&state) else {
            continue;
        };
        let status = StatusUpdate {
            provider_message_id: provider_message_id.to_owned(),
            state,
            recipient: String::new(),
            at: None,
            error: row.try_get("error")?,
        };
        apply_status_in(w, channel_id, &status).await?;
    }
    Ok(())
}

fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Sent => "sent",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Read => "read",
        DeliveryState::Played => "played",
        DeliveryState::Failed => "failed",
    }
}

impl Store {
    /// Applies a provider's report about a message we sent on `channel_id`. Returns whether a
    /// message changed (false for an out-of-date report, or one held until we know the id).
    pub async fn apply_status(
        &self,
        channel_id: &str,
        status: &StatusUpdate,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let known = sqlx::query(STATUS_KNOWN)
            .bind(channel_id)
            .bind(&status.provider_message_id)
            .fetch_optional(&mut *w.tx)
            .await?
            .is_some();
        let changed = if known {
            apply_status_in(&mut w, channel_id, status).await?
        } else {
            // Our send's answer has not been recorded yet (or this is not our message): hold
            // the report; `record_outcomes` applies it when the id arrives.
            let now = now_ms();
            sqlx::query(EARLY_STATUS_EXPIRE)
                .bind(now - EARLY_STATUS_KEEP_MS)
                .execute(&mut *w.tx)
                .await?;
            sqlx::query(
                "INSERT INTO early_status (channel_id, provider_message_id, state, error, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (channel_id, provider_message_id, state) DO NOTHING",
            )
            .bind(channel_id)
            .bind(&status.provider_message_id)
            .bind(state_name(status.state))
            .bind(status.error.as_deref())
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
            false
        };
        w.commit().await?;
        Ok(changed)
    }

    /// Claims up to `limit` due deliveries for `lease_ms`.
    pub async fn claim_due_deliveries(
        &self,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        let now = now_ms();
        let sql = match self.backend {
            Backend::Sqlite => claim_sql!(""),
            Backend::Postgres => claim_sql!("FOR UPDATE SKIP LOCKED"),
        };
        let mut w = self.begin_write().await?;
        let mut claimed = sqlx::query(sql)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *w.tx)
            .await?
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        w.commit().await?;
        claimed.sort_by_key(|d| (d.conversation_id.clone(), d.seq));
        Ok(claimed)
    }

    /// The earliest time a pending delivery becomes claimable (ms), if any is pending. Only the
    /// first pending delivery of each conversation counts: a later one is not claimable before
    /// it, whatever its own due time (counting it would wake the worker to claim nothing).
    pub async fn next_delivery_due(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query(
            "SELECT MIN(CASE WHEN d.locked_until IS NOT NULL AND d.locked_until > d.next_attempt_at
                             THEN d.locked_until ELSE d.next_attempt_at END) AS due
             FROM delivery d
             WHERE d.status = 'pending'
               AND NOT EXISTS (SELECT 1 FROM delivery e
                               WHERE e.conversation_id = d.conversation_id
                                 AND e.status = 'pending' AND e.seq < d.seq)",
        )
        .persistent(super::keep_plan(self.backend))
        .fetch_one(&self.pool)
        .await?
        .try_get("due")
    }

    /// Records the outcomes of a batch of attempts in one transaction. Plain successes (the
    /// common case) are two statements for the whole batch.
    ///
    /// On SQLite the outcomes join the writer's current tick (see [`super::tick`]): one commit
    /// for them and the messages and turns stored meanwhile.
    ///
    /// Returns whether a delivery may have become due by it (see [`Store::record_outcomes_in`]);
    /// `false` means the delivery worker need not look.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(ClaimedDelivery, Outcome)],
    ) -> Result<bool, sqlx::Error> {
        if outcomes.is_empty() {
            return Ok(false);
        }
        if let Some(tick) = self.tick() {
            // A look for waiting successors would cost the one writer a statement per tick;
            // the worker's look costs a reader one.
            return tick.record(outcomes.to_vec()).await.map(|()| true);
        }
        let mut w = self.begin_write().await?;
        let more = self.record_outcomes_in(&mut w, outcomes, now_ms()).await?;
        w.commit().await?;
        Ok(more)
    }

    /// [`Store::record_outcomes`]'s work inside the caller's transaction `w`. Returns whether a
    /// delivery may have become due by it: any outcome but a delivery (a retry has a new due
    /// time, a dead letter unblocks its successor), or, on PostgreSQL, a later delivery of a
    /// delivered one's conversation that waits unclaimed (it waited for this one). On SQLite
    /// always `true`.
    pub(super) async fn record_outcomes_in(
        &self,
        w: &mut WriteTx,
        outcomes: &[(ClaimedDelivery, Outcome)],
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        // Deliveries the provider accepted (the common case): a few statements for the whole
        // batch, whatever its size.
        let delivered: Vec<(&ClaimedDelivery, Option<&str>)> = outcomes
            .iter()
            .filter_map(|(d, o)| match o {
                Outcome::Delivered {
                    provider_message_id,
                } => Some((d, provider_message_id.as_deref())),
                _ => None,
            })
            .collect();
        // Whether reports wait in `early_status` (asked only when a provider id was recorded;
        // `None`: not asked yet). On SQLite the question goes with the updates' script.
        let early_probe = delivered.iter().any(|(_, id)| id.is_some());
        let mut early_waiting: Option<bool> = None;
        if !delivered.is_empty() {
            // One statement with the rows as one JSON text: the SQL does not change
            // with the batch size (see `bulk::json_rows`). On SQLite, `+status`: look deliveries
            // up by id, never by scanning the pending ones (the planner cannot know json_each is
            // small).
            let rows: Vec<(&str, &str)> = delivered
                .iter()
                .map(|(d, pid)| (d.id.as_str(), pid.unwrap_or("")))
                .collect();
            // The provider's id stays on the delivery: `message.provider_id` is the inbound
            // dedupe key, and outbound ids need not be unique per channel.
            if self.backend == Backend::Sqlite {
                // The update in one request to the writer's thread (see `bulk::script`),
                // and the question about early reports with them: one hop per tick fewer.
                let sql = if early_probe {
                    concat!(delivered_in_script!(), early_probe_in_script!())
                } else {
                    delivered_in_script!()
                };
                let query = sqlx::query(sql)
                    .bind(now)
                    .bind(super::bulk::json_rows(&rows));
                let steps = super::bulk::script(w, query).await?;
                if early_probe {
                    early_waiting = Some(steps.get(1).is_some_and(|s| !s.rows.is_empty()));
                }
            } else {
                delivered_on_postgres(w, &rows, now).await?;
            }
        }
        // Reports that arrived before our send's answer was recorded: held in `early_status`
        // (rarely anything), applied now that the ids are known.
        let early_waiting = match early_waiting {
            Some(waiting) => waiting,
            None if early_probe => sqlx::query("SELECT 1 AS one FROM early_status LIMIT 1")
                .fetch_optional(&mut *w.tx)
                .await?
                .is_some(),
            None => false,
        };
        if early_waiting {
            for (d, provider_id) in &delivered {
                if let Some(provider_id) = provider_id {
                    apply_early_statuses(w, &d.channel_id, provider_id).await?;
                }
            }
        }
        for (d, outcome) in outcomes {
            match outcome {
                Outcome::Delivered { .. } => {} // done above
                Outcome::RetryAt {
                    next_attempt_at,
                    error,
                    parts_sent,
                } => {
                    sqlx::query(
                        "UPDATE delivery SET next_attempt_at = $1, locked_until = NULL,
                                last_error = $2, updated_at = $3, parts_sent = $6
                         WHERE id = $4 AND status = 'pending' AND locked_until = $5",
                    )
                    .bind(next_attempt_at)
                    .bind(error)
                    .bind(now)
                    .bind(&d.id)
                    .bind(d.lease)
                    .bind(parts_sent.unwrap_or(d.parts_sent).max(d.parts_sent))
                    .execute(&mut *w.tx)
                    .await?;
                }
                Outcome::Defer { next_attempt_at } => {
                    sqlx::query(
                        "UPDATE delivery SET next_attempt_at = $1, locked_until = NULL,
                                attempts = attempts - 1, updated_at = $2
                         WHERE id = $3 AND status = 'pending' AND locked_until = $4",
                    )
                    .bind(next_attempt_at)
                    .bind(now)
                    .bind(&d.id)
                    .bind(d.lease)
                    .execute(&mut *w.tx)
                    .await?;
                }
                Outcome::Dead { error } => {
                    let marked = sqlx::query(
                        "UPDATE delivery SET status = 'dead', locked_until = NULL, last_error = $1,
                                updated_at = $2
                         WHERE id = $3 AND status = 'pending'",
                    )
                    .bind(error)
                    .bind(now)
                    .bind(&d.id)
                    .execute(&mut *w.tx)
                    .await?;
                    if marked.rows_affected() == 0 {
                        continue; // delivered or requeued meanwhile: nothing to give up on
                    }
                    sqlx::query("UPDATE message SET status = 'failed' WHERE id = $1")
                        .bind(&d.message_id)
                        .execute(&mut *w.tx)
                        .await?;
                    let detail =
                        serde_json::json!({ "attempts": d.attempts, "error": error }).to_string();
                    record_event(
                        &mut w.tx,
                        Some(&d.tenant_id),
                        "delivery.dead",
                        Some(&d.id),
                        &detail,
                    )
                    .await?;
                }
            }
        }
        if self.backend == Backend::Sqlite || delivered.len() < outcomes.len() {
            return Ok(true);
        }
        // In this transaction, after its updates: a successor stored by a transaction that
        // commits after this look is not seen here, but that transaction's own wake-up comes
        // after its commit (and the worker's recorder wakes the worker when one came while it
        // recorded: see `outbox::Wake`).
        let conversations: Vec<&str> = delivered
            .iter()
            .map(|(d, _)| d.conversation_id.as_str())
            .collect();
        let mut s = super::bulk::Statement::new(
            "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM delivery
                                          WHERE status = 'pending'
                                            AND (locked_until IS NULL OR locked_until <= ",
        );
        s.bind(now)
            .push(") AND ")
            .bind_in(self.backend, "conversation_id", conversations)
            .push(") THEN 1 ELSE 0 END AS BIGINT) AS waiting");
        let waiting: i64 = s.query().fetch_one(&mut *w.tx).await?.try_get("waiting")?;
        Ok(waiting != 0)
    }

    /// A tenant's deliveries in one status, newest first (see [`DELIVERED_NEWEST`]).
    pub async fn deliveries(
        &self,
        tenant_id: &str,
        status: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, sqlx::Error> {
        let query = if status == "delivered" {
            sqlx::query(DELIVERED_NEWEST).bind(tenant_id)
        } else {
            sqlx::query(DELIVERIES_BY_STATUS)
                .bind(tenant_id)
                .bind(status)
        };
        query
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(DeliveryView {
                    id: r.try_get("id")?,
                    conversation_id: r.try_get("conversation_id")?,
                    message_id: r.try_get("message_id")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    next_attempt_at: rfc3339(r.try_get("next_attempt_at")?),
                    updated_at: rfc3339(r.try_get("updated_at")?),
                })
            })
            .collect()
    }

    /// Puts a dead letter back in the queue (attempts start again). `false` if there was no such
    /// dead delivery for this tenant.
    pub async fn requeue_dead(
        &self,
        tenant_id: &str,
        delivery_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let message_id: Option<String> = sqlx::query(
            "UPDATE delivery SET status = 'pending', attempts = 0, next_attempt_at = $1,
                    locked_until = NULL, updated_at = $1
             WHERE id = $2 AND tenant_id = $3 AND status = 'dead' RETURNING message_id",
        )
        .bind(now)
        .bind(delivery_id)
        .bind(tenant_id)
        .fetch_optional(&mut *w.tx)
        .await?
        .map(|r| r.try_get("message_id"))
        .transpose()?;
        let Some(message_id) = message_id else {
            return Ok(false);
        };
        sqlx::query("UPDATE message SET status = 'queued' WHERE id = $1")
            .bind(&message_id)
            .execute(&mut *w.tx)
            .await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "delivery.requeued",
            Some(delivery_id),
            "{}",
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for each statement of a status report: a search by index, never a scan of
    /// `delivery` (every message ever sent) or `early_status`.
    #[tokio::test]
    async fn status_reports_find_their_rows_by_index() {
        use crate::store::plans::{sqlite_plan, sqlite_store};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_store(dir.path()).await;
        for (sql, args) in [
            (STATUS_KNOWN, 2),
            (STATUS_TO_MESSAGE, 4),
            (STATUS_FAILS_DELIVERY, 4),
            (EARLY_STATUS_TAKE, 2),
            (EARLY_STATUS_EXPIRE, 1),
        ] {
            let plan = sqlite_plan(&store, sql, args).await;
            for step in &plan {
                assert!(
                    !(step.starts_with("SCAN delivery") || step.starts_with("SCAN early_status")),
                    "{sql}\nscans: {plan:?}"
                );
            }
            assert!(
                plan.iter().any(|s| s.contains("USING INDEX")
                    || s.contains("USING PRIMARY KEY")
                    || s.contains("USING COVERING INDEX")),
                "{sql}\nno index: {plan:?}"
            );
        }
    }
}
