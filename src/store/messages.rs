//! Contacts, conversations and messages: the ingest gate, the router's work queue (unprocessed
//! inbound rows) and the read side of the API.

use sqlx::Row;
use sqlx::any::AnyRow;
use switchboard_channel::InboundMessage;

use super::{Backend, Store, WriteTx, new_id, now_ms};

/// The result of the ingest gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub conversation_id: String,
    pub message_id: String,
    pub seq: i64,
    /// The provider id was seen before: nothing was stored, the ids are those of the first copy.
    pub duplicate: bool,
    /// The message's turn, as [`Store::next_pending_turns`] would read it, when the ingest found
    /// in the same transaction that it is the oldest unanswered message of its conversation
    /// (SQLite's fast path): the router starts on it without reading it back. `None`: the
    /// router reads the conversation's next turn.
    pub turn: Option<Box<PendingTurn>>,
}

/// One message for the ingest gate.
#[derive(Debug, Clone)]
pub struct IngestItem {
    pub tenant_id: String,
    pub channel_id: String,
    pub message: InboundMessage,
    /// The conversation thread the message belongs to: `""` on every channel but email, where
    /// it is the Message-ID that opened the thread.
    pub thread: String,
    /// The subject a new (email) conversation is given.
    pub subject: Option<String>,
}

/// An inbound message waiting for the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTurn {
    pub tenant_id: String,
    pub conversation_id: String,
    pub conversation_status: String,
    pub channel_id: String,
    pub message_id: String,
    pub seq: i64,
    pub text: String,
    pub created_at: i64,
    /// The contact's id on the conversation's channel: where a reply goes.
    pub recipient: String,
    /// The message's kind (`text`, `reaction`, …).
    pub kind: String,
    /// The provider's id of the inbound message (WhatsApp's read receipts need it).
    pub provider_id: Option<String>,
    /// The inbound message's attachments (JSON), e.g. a Telegram callback query to answer.
    pub attachments: String,
    /// The channel's kind (`telegram`, `whatsapp`, …).
    pub channel_kind: String,
    pub contact_id: String,
    /// A moderator (or the policy) blocked the contact: nothing is answered.
    pub contact_blocked: bool,
    /// The conversation's answers in a row that were not from the knowledge.
    pub fallbacks: i64,
    /// The contact has an active programme enrolment (read with the turn: most people have
    /// none, and then the program engine has nothing to look up).
    pub enrolled: bool,
    /// The tenant has published programs (whose keywords may enrol).
    pub programs_published: bool,
}

/// A completed turn: its reply, and the reply's delivery if it was claimed with it.
#[derive(Debug, Clone, Default)]
pub struct Completed {
    pub reply_id: Option<String>,
    pub claimed: Option<super::deliveries::ClaimedDelivery>,
}

/// Pairs each turn's reply id with its claimed delivery (by message id).
pub(super) fn completed(
    replies: Vec<Option<String>>,
    claimed: Vec<super::deliveries::ClaimedDelivery>,
) -> Vec<Completed> {
    let mut claimed: std::collections::HashMap<String, super::deliveries::ClaimedDelivery> =
        claimed
            .into_iter()
            .map(|d| (d.message_id.clone(), d))
            .collect();
    replies
        .into_iter()
        .map(|reply_id| Completed {
            claimed: reply_id.as_ref().and_then(|id| claimed.remove(id)),
            reply_id,
        })
        .collect()
}

/// A reply to store with the turn that produced it.
#[derive(Debug, Clone)]
pub struct ReplyDraft {
    pub text: String,
    pub citations_json: String,
    /// How the answer stood against its sources (JSON), for generated answers.
    pub grounding_json: Option<String>,
}

/// A stored message, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageView {
    pub id: String,
    pub seq: i64,
    pub direction: String,
    pub author: String,
    /// The provider's message type (`text`, `image`, `reaction`, …).
    pub kind: String,
    pub text: String,
    pub status: String,
    pub created_at: String,
    pub citations: serde_json::Value,
    /// File and media references (`kind`, `reference`, `mime_type`, `caption`); the file itself
    /// is at `GET /v1/messages/{id}/attachments/{index}`.
    #[serde(skip_serializing_if = "is_empty_array")]
    pub attachments: serde_json::Value,
    /// For a generated answer: how it stood against the passages it cites (docs/KNOWLEDGE.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grounding: Option<serde_json::Value>,
}

fn is_empty_array(v: &serde_json::Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

/// A conversation, as the API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversationView {
    pub id: String,
    pub channel: String,
    pub contact_id: String,
    pub contact_external_id: Option<String>,
    pub status: String,
    pub flagged: bool,
    /// The key of the person it is assigned to.
    pub assignee: Option<String>,
    pub last_seq: i64,
    pub updated_at: String,
}

/// Filters of `GET /v1/conversations`.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub flagged: Option<bool>,
    /// A key id: the conversations assigned to it.
    pub assignee: Option<String>,
    pub limit: i64,
}

pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A message's status as the API shows it, for a select list (`$m`: the message's table or
/// alias). An outbound message's `sent` is not written on the message: it is `queued` there
/// until a provider report or a widget acknowledgement moves it further, and `sent` once its
/// delivery is `delivered` — the outcome that marks the delivery so, on the delivery path of
/// every reply, writes one row instead of two. Found by the delivery's unique `message_id`.
macro_rules! message_status {
    ($m:literal) => {
        concat!(
            "CASE WHEN ",
            $m,
            ".status = 'queued' AND EXISTS (SELECT 1 FROM delivery sd
                  WHERE sd.message_id = ",
            $m,
            ".id AND sd.status = 'delivered')
             THEN 'sent' ELSE ",
            $m,
            ".status END AS status"
        )
    };
}
pub(crate) use message_status;

pub(crate) fn message_from_row(row: &AnyRow) -> Result<MessageView, sqlx::Error> {
    let citations: String = row.try_get("citations")?;
    Ok(MessageView {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        direction: row.try_get("direction")?,
        author: row.try_get("author")?,
        kind: row.try_get("kind")?,
        text: row.try_get("text")?,
        status: row.try_get("status")?,
        created_at: rfc3339(row.try_get("created_at")?),
        citations: serde_json::from_str(&citations).unwrap_or(serde_json::Value::Array(vec![])),
        attachments: row
            .try_get::<String, _>("attachments")
            .ok()
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or(serde_json::Value::Array(vec![])),
        grounding: row
            .try_get::<Option<String>, _>("grounding")
            .ok()
            .flatten()
            .and_then(|g| serde_json::from_str(&g).ok()),
    })
}

impl Store {
    /// The ingest gate for one message; see [`Store::ingest_batch`].
    pub async fn ingest(
        &self,
        tenant_id: &str,
        channel_id: &str,
        msg: &InboundMessage,
    ) -> Result<Ingested, sqlx::Error> {
        let item = IngestItem {
            tenant_id: tenant_id.to_owned(),
            channel_id: channel_id.to_owned(),
            message: msg.clone(),
            thread: String::new(),
            subject: None,
        };
        self.ingest_batch(vec![item])
            .await
            .pop()
            .unwrap_or(Err(sqlx::Error::RowNotFound))
    }

    /// The ingest gate: stores each message once per `(channel, provider_id)`, creating the
    /// contact, its identity on the channel and an open conversation as needed — the whole batch
    /// in one transaction (group commit), in order. Concurrent redeliveries of one message agree
    /// on one row: the unique constraints decide, and a loser gets `duplicate: true` with the
    /// first copy's ids.
    pub async fn ingest_batch(&self, items: Vec<IngestItem>) -> Vec<Result<Ingested, sqlx::Error>> {
        super::batch::all_or_each(items, |items: Vec<IngestItem>| async move {
            let mut w = self.begin_write().await?;
            let out = self.ingest_in(&mut w, &items, now_ms()).await?;
            w.commit().await?;
            Ok(out)
        })
        .await
    }

    /// [`Store::ingest_batch`]'s work inside the caller's transaction `w` (which may carry other
    /// writes of the same tick): one result per item, in order, or an error for the whole batch.
    pub(super) async fn ingest_in(
        &self,
        w: &mut WriteTx,
        items: &[IngestItem],
        now: i64,
    ) -> Result<Vec<Ingested>, sqlx::Error> {
        // On SQLite a single message takes the fast path too: its check and script are two
        // requests to the writer's thread, the general path's statements more.
        if items.len() > 1 || self.backend == Backend::Sqlite {
            // Every conversation known already: try the multi-row fast path.
            let known: Option<Vec<String>> = items
                .iter()
                .map(|item| self.open_conversations.get(&conversation_key(item)))
                .collect();
            if let Some(conversations) = known {
                match self.backend {
                    // One writer: the fast path checks before it writes (see `bulk`).
                    Backend::Sqlite => {
                        if let Some(out) =
                            self.try_ingest_bulk(w, items, &conversations, now).await?
                        {
                            return Ok(out);
                        }
                    }
                    Backend::Postgres => {
                        w.savepoint("ingest_bulk").await?;
                        match self.try_ingest_bulk(w, items, &conversations, now).await? {
                            Some(out) => {
                                w.release("ingest_bulk").await?;
                                return Ok(out);
                            }
                            None => w.rollback_to("ingest_bulk").await?,
                        }
                    }
                }
                super::Fallbacks::count(&self.fallbacks.ingest, "ingest");
            }
        }
        // Find (or open) every message's conversation first, then take conversation locks in
        // id order: the lock order all batches follow, so two batches cannot deadlock.
        let mut conversations = Vec::with_capacity(items.len());
        for item in items {
            let cache_key = conversation_key(item);
            let conversation = match self.open_conversations.get(&cache_key) {
                Some(id) => id,
                None => conversation_for(w, item, now).await?,
            };
            conversations.push((cache_key, conversation));
        }
        let mut out: Vec<Option<Ingested>> = vec![None; items.len()];
        let ids: Vec<String> = conversations.iter().map(|(_, c)| c.clone()).collect();
        for i in lock_order(&ids) {
            let item = &items[i];
            let (cache_key, conversation) = &conversations[i];
            let stored = match store_inbound(w, item, conversation, now).await? {
                Some(stored) => stored,
                None => {
                    // The remembered conversation was closed meanwhile: look it up afresh.
                    // (Its lock is taken out of id order here; a rare retry if that deadlocks.)
                    let fresh = conversation_for(w, item, now).await?;
                    store_inbound(w, item, &fresh, now)
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?
                }
            };
            // Remembered before the commit: if the transaction rolls back, the guarded update
            // of a later ingest finds no open conversation under this id and looks afresh.
            self.open_conversations
                .insert(cache_key.clone(), stored.conversation_id.clone());
            out[i] = Some(stored);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// When the contact last wrote in a conversation (Unix ms).
    pub async fn last_inbound_at(&self, conversation_id: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query("SELECT last_inbound_at FROM conversation WHERE id = $1")
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<Option<i64>, _>("last_inbound_at"))
            .transpose()
            .map(Option::flatten)
    }

    /// Conversations with inbound messages not yet answered (the router's restart work list).
    pub async fn conversations_with_pending_turns(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query(
            "SELECT DISTINCT conversation_id FROM message
             WHERE direction = 'inbound' AND processed_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("conversation_id"))
        .collect()
    }

    /// The oldest unanswered inbound message of a conversation, and whether another one waits
    /// behind it (so the router need not ask again to learn there is none).
    pub async fn next_pending_turn(
        &self,
        conversation_id: &str,
    ) -> Result<Option<(PendingTurn, bool)>, sqlx::Error> {
        let mut found = self
            .next_pending_turns(&[conversation_id.to_owned()])
            .await?;
        Ok(found.pop().flatten())
    }

    /// [`Store::next_pending_turn`] for many conversations in one statement (the router reads
    /// the turns of the conversations that are ready at the same moment together: one query,
    /// and on SQLite one hop to a connection's thread, instead of one per turn). One entry per
    /// id, in order.
    pub async fn next_pending_turns(
        &self,
        conversation_ids: &[String],
    ) -> Result<Vec<Option<(PendingTurn, bool)>>, sqlx::Error> {
        if conversation_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = turn_read_sql(self.backend);
        // Prepared on both backends, PostgreSQL included (unlike the id-list statements that
        // find rows in growing tables: see `keep_plan`). Planning this join cost the server
        // ~1.2 ms per execution, more than running it; the plan PostgreSQL caches after five
        // executions is made from whatever the tables hold then, and for this statement that
        // plan probes an index for every table however small they are (the `LATERAL … ORDER BY
        // seq LIMIT 2` follows `message_unprocessed`; the rest are key lookups). The story
        // `the_turn_read_s_cached_plan_probes_indexes` holds it to that.
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(super::bulk::json_rows(conversation_ids))
            .persistent(true);
        let rows = query.fetch_all(&self.pool).await?;
        // `ord` counts from 0 in json_each and from 1 in PostgreSQL's `WITH ORDINALITY`.
        let first = match self.backend {
            Backend::Sqlite => 0,
            Backend::Postgres => 1,
        };
        let mut out: Vec<Option<(PendingTurn, bool)>> = Vec::new();
        out.resize_with(conversation_ids.len(), || None);
        for r in &rows {
            let at = usize::try_from(r.try_get::<i64, _>("ord")? - first)
                .ok()
                .filter(|&at| at < out.len())
                .ok_or_else(|| sqlx::Error::Protocol("turn read: position out of range".into()))?;
            match &mut out[at] {
                // The second row of a conversation: only says another turn waits.
                Some((_, more)) => *more = true,
                slot => *slot = Some((pending_turn(r)?, false)),
            }
        }
        Ok(out)
    }

    /// Closes turns: marks each inbound message processed and, with a reply, stores the reply
    /// and its outbox row — one transaction for the batch (group commit), so a reply exists iff
    /// it will be delivered. Per turn: the reply's id, or `None` when the turn had already been
    /// completed (by an earlier run that crashed after committing) or had no reply.
    ///
    /// With `lease_ms`, each reply's delivery is also claimed for that long in the same
    /// transaction when nothing of its conversation is still waiting to go before it (the
    /// delivery worker's claim, without its own transaction): the caller hands those to the
    /// worker in memory.
    pub async fn complete_turns(
        &self,
        turns: Vec<(PendingTurn, Option<ReplyDraft>)>,
        lease_ms: Option<i64>,
    ) -> Vec<Result<Completed, sqlx::Error>> {
        super::batch::all_or_each(
            turns,
            |turns: Vec<(PendingTurn, Option<ReplyDraft>)>| async move {
                let mut w = self.begin_write().await?;
                let out = self.complete_in(&mut w, &turns, lease_ms, now_ms()).await?;
                w.commit().await?;
                Ok(out)
            },
        )
        .await
    }

    /// [`Store::complete_turns`]'s work inside the caller's transaction `w`.
    pub(super) async fn complete_in(
        &self,
        w: &mut WriteTx,
        turns: &[(PendingTurn, Option<ReplyDraft>)],
        lease_ms: Option<i64>,
        now: i64,
    ) -> Result<Vec<Completed>, sqlx::Error> {
        if turns.len() > 1 || self.backend == Backend::Sqlite {
            match self.backend {
                // One writer: the fast path checks before it writes (see `bulk`).
                Backend::Sqlite => {
                    if let Some(out) = self.try_complete_bulk(w, turns, now, lease_ms).await? {
                        return Ok(out);
                    }
                }
                Backend::Postgres => {
                    w.savepoint("complete_bulk").await?;
                    match self.try_complete_bulk(w, turns, now, lease_ms).await? {
                        Some(out) => {
                            w.release("complete_bulk").await?;
                            return Ok(out);
                        }
                        None => w.rollback_to("complete_bulk").await?,
                    }
                }
            }
            super::Fallbacks::count(&self.fallbacks.complete, "complete");
        }
        let conversations: Vec<String> = turns
            .iter()
            .map(|(t, _)| t.conversation_id.clone())
            .collect();
        let mut out: Vec<Option<String>> = vec![None; turns.len()];
        let mut delivery_ids = Vec::new();
        for i in lock_order(&conversations) {
            let (turn, reply) = &turns[i];
            if let Some((reply_id, delivery_id)) =
                complete_one(w, turn, reply.as_ref(), now).await?
            {
                out[i] = Some(reply_id);
                delivery_ids.push(delivery_id);
            }
        }
        let claimed = match lease_ms {
            Some(lease_ms) => {
                super::deliveries::preclaim(w, self.backend, &delivery_ids, lease_ms, now).await?
            }
            None => Vec::new(),
        };
        Ok(completed(out, claimed))
    }

    /// Whether an inbound message has been processed, and its reply if there is one.
    pub async fn turn_outcome(
        &self,
        tenant_id: &str,
        inbound_id: &str,
    ) -> Result<Option<Option<MessageView>>, sqlx::Error> {
        let processed =
            sqlx::query("SELECT processed_at FROM message WHERE id = $1 AND tenant_id = $2")
                .bind(inbound_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<Option<i64>, _>("processed_at"))
                .transpose()?
                .flatten();
        if processed.is_none() {
            return Ok(None);
        }
        let reply = sqlx::query(concat!(
            "SELECT id, seq, direction, author, kind, text, ",
            message_status!("message"),
            ", created_at, citations, attachments, grounding
             FROM message WHERE reply_to = $1 AND tenant_id = $2 ORDER BY seq LIMIT 1"
        ))
        .bind(inbound_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(message_from_row)
        .transpose()?;
        Ok(Some(reply))
    }

    /// A conversation's messages in order; `None` when the conversation is not this tenant's.
    pub async fn conversation_messages(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Option<Vec<MessageView>>, sqlx::Error> {
        let exists = sqlx::query("SELECT id FROM conversation WHERE id = $1 AND tenant_id = $2")
            .bind(conversation_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        sqlx::query(concat!(
            "SELECT id, seq, direction, author, kind, text, ",
            message_status!("message"),
            ", created_at, citations, attachments, grounding
             FROM message WHERE conversation_id = $1 AND tenant_id = $2 AND seq > $3
             ORDER BY seq LIMIT $4"
        ))
        .bind(conversation_id)
        .bind(tenant_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
    }

    /// A tenant's conversations, most recently active first.
    pub async fn conversations(
        &self,
        tenant_id: &str,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationView>, sqlx::Error> {
        sqlx::query(
            "SELECT c.id, ch.kind, c.contact_id, c.status, c.flagged, c.assignee, c.last_seq, c.updated_at,
                    (SELECT ci.external_id FROM contact_identity ci
                      WHERE ci.contact_id = c.contact_id AND ci.channel_id = c.channel_id) AS external_id
             FROM conversation c JOIN channel ch ON ch.id = c.channel_id
             WHERE c.tenant_id = $1
               AND ($2 IS NULL OR c.status = $2)
               AND ($3 IS NULL OR ch.kind = $3)
               AND ($4 IS NULL OR c.flagged = $4)
               AND ($6 IS NULL OR c.assignee = $6)
             ORDER BY c.updated_at DESC, c.id DESC LIMIT $5",
        )
        .bind(tenant_id)
        .bind(filter.status.as_deref())
        .bind(filter.channel.as_deref())
        .bind(filter.flagged.map(i64::from))
        .bind(filter.limit)
        .bind(filter.assignee.as_deref())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ConversationView {
                id: r.try_get("id")?,
                channel: r.try_get("kind")?,
                contact_id: r.try_get("contact_id")?,
                contact_external_id: r.try_get("external_id")?,
                status: r.try_get("status")?,
                flagged: r.try_get::<i64, _>("flagged")? != 0,
                assignee: r.try_get("assignee")?,
                last_seq: r.try_get("last_seq")?,
                updated_at: rfc3339(r.try_get("updated_at")?),
            })
        })
        .collect()
    }
}

/// The key under which ingest remembers a contact's open conversation.
/// The router's turn read ([`Store::next_pending_turns`]): `$1` the conversations' ids as one JSON
/// array; per conversation its first two unanswered inbound messages (the second only says that
/// another turn waits), with what answering needs of the conversation, contact and channel.
/// What a turn carries about its conversation, contact and channel (`m`: the message; with
/// [`turn_facts_joins!`]): read with the turn ([`turn_read_sql`]) or with the ingest that stored
/// its message ([`ingest_turn_facts!`]).
macro_rules! turn_facts_columns {
    () => {
        "c.status, ci.external_id, ch.kind AS channel_kind, c.contact_id, k.blocked_at,
                c.fallbacks,
                CAST(CASE WHEN EXISTS (SELECT 1 FROM enrollment e
                                       WHERE e.contact_id = c.contact_id
                                         AND e.status = 'active')
                          THEN 1 ELSE 0 END AS BIGINT) AS enrolled,
                CAST(CASE WHEN EXISTS (SELECT 1 FROM program p
                                       WHERE p.tenant_id = m.tenant_id
                                         AND p.deleted_at IS NULL AND p.current_version > 0)
                          THEN 1 ELSE 0 END AS BIGINT) AS programs_published"
    };
}

/// The joins [`turn_facts_columns!`] reads from.
macro_rules! turn_facts_joins {
    () => {
        "JOIN conversation c ON c.id = m.conversation_id
         JOIN contact k ON k.id = c.contact_id
         JOIN contact_identity ci ON ci.contact_id = c.contact_id AND ci.channel_id = c.channel_id
         JOIN channel ch ON ch.id = m.channel_id"
    };
}

/// SQLite's ingest fast path, last statement of its script (`$3`: the inserted rows, `value ->> 0`
/// each one's id): for each message just stored that is the oldest unanswered inbound message
/// of its conversation, what [`turn_read_sql`] reads about its conversation, contact and channel
/// — so the router can start on the turn without reading it back (see [`Ingested::turn`]). A
/// message behind an unanswered one gets no row: its turn is read when its turn comes.
macro_rules! ingest_turn_facts {
    () => {
        concat!(
            "SELECT m.id, ",
            $crate::store::messages::turn_facts_columns!(),
            " FROM jsonb_each($3) AS v JOIN message m ON m.id = v.value ->> 0 ",
            $crate::store::messages::turn_facts_joins!(),
            " WHERE NOT EXISTS (SELECT 1 FROM message q
                                WHERE q.conversation_id = m.conversation_id
                                  AND q.direction = 'inbound' AND q.processed_at IS NULL
                                  AND q.seq < m.seq)"
        )
    };
}
pub(crate) use {ingest_turn_facts, turn_facts_columns, turn_facts_joins};

pub fn turn_read_sql(backend: Backend) -> String {
    // `j`: the conversations asked for, with their position (`ord`) in the request; `m`: the
    // first two unanswered inbound messages of each (an index search per conversation on
    // both backends: SQLite drives the correlated `IN` from `json_each`; PostgreSQL would
    // plan that `IN` as a filter over every message, so it gets a `LATERAL` join).
    let source = match backend {
        // One JSON text: the same SQL for any number of conversations (see `bulk::json_rows`).
        Backend::Sqlite => "(SELECT value, key AS ord FROM json_each($1)) AS j
         JOIN message m ON m.id IN (SELECT q.id FROM message q
                                    WHERE q.conversation_id = j.value
                                      AND q.direction = 'inbound' AND q.processed_at IS NULL
                                    ORDER BY q.seq LIMIT 2)"
            .to_owned(),
        Backend::Postgres => "jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS j(value, ord)
         CROSS JOIN LATERAL (SELECT q.* FROM message q
                             WHERE q.conversation_id = j.value
                               AND q.direction = 'inbound' AND q.processed_at IS NULL
                             ORDER BY q.seq LIMIT 2) AS m"
            .to_owned(),
    };
    format!(
        "SELECT j.ord, m.id, m.tenant_id, m.conversation_id, m.channel_id, m.seq, m.text,
                m.created_at, m.kind, m.provider_id, m.attachments, {columns}
         FROM {source}
         {joins}
         ORDER BY j.ord, m.seq",
        columns = turn_facts_columns!(),
        joins = turn_facts_joins!(),
    )
}

fn conversation_key(item: &IngestItem) -> String {
    if item.thread.is_empty() {
        format!("{} {}", item.channel_id, item.message.contact.external_id)
    } else {
        format!(
            "{} {} {}",
            item.channel_id, item.message.contact.external_id, item.thread
        )
    }
}

/// Indexes of `conversations` in the order their rows are locked: by conversation id, and in
/// batch (arrival) order within one conversation (the sort is stable).
fn lock_order(conversations: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..conversations.len()).collect();
    order.sort_by(|&a, &b| conversations[a].cmp(&conversations[b]));
    order
}

/// The open conversation a message belongs to, with its contact created on first contact.
async fn conversation_for(
    w: &mut WriteTx,
    item: &IngestItem,
    now: i64,
) -> Result<String, sqlx::Error> {
    let IngestItem {
        tenant_id,
        channel_id,
        message: msg,
        thread,
        subject,
    } = item;
    // One query finds the contact and its open conversation; first contacts take the insert
    // path. Redeliveries are caught by the message insert below (a look before it would cost
    // every message a query).
    let known = sqlx::query(
        "SELECT ci.contact_id, c.id AS conversation_id
         FROM contact_identity ci
         LEFT JOIN conversation c ON c.contact_id = ci.contact_id
                                 AND c.channel_id = ci.channel_id AND c.status <> 'closed'
                                 AND c.thread = $3
         WHERE ci.channel_id = $1 AND ci.external_id = $2",
    )
    .bind(channel_id)
    .bind(&msg.contact.external_id)
    .bind(thread)
    .fetch_optional(&mut *w.tx)
    .await?;
    let (contact_id, open_conversation) = match known {
        Some(row) => (
            row.try_get::<String, _>("contact_id")?,
            row.try_get::<Option<String>, _>("conversation_id")?,
        ),
        None => (
            new_contact(
                w,
                tenant_id,
                channel_id,
                &msg.contact.external_id,
                msg.contact.display_name.as_deref(),
                now,
            )
            .await?,
            None,
        ),
    };
    match open_conversation {
        Some(id) => Ok(id),
        None => {
            open_thread_for(
                w,
                tenant_id,
                channel_id,
                &contact_id,
                thread,
                subject.as_deref(),
                now,
            )
            .await
        }
    }
}

/// Stores one inbound message in its conversation, or recognises a redelivery. `None` when the
/// conversation is closed (the caller looks up the contact's open one).
async fn store_inbound(
    w: &mut WriteTx,
    item: &IngestItem,
    conversation_id: &str,
    now: i64,
) -> Result<Option<Ingested>, sqlx::Error> {
    let IngestItem {
        tenant_id,
        channel_id,
        message: msg,
        ..
    } = item;
    // Takes the conversation's row lock (Postgres) and the next sequence number.
    // The contact "last wrote" when the provider says they sent it (a redelivery days later
    // must not reopen WhatsApp's 24-hour window), and never earlier than before.
    let wrote_at = msg.sent_at.map_or(now, |s| s.saturating_mul(1000).min(now));
    let Some(bumped) = sqlx::query(
        "UPDATE conversation SET last_seq = last_seq + 1, updated_at = $1,
                last_inbound_at = CASE WHEN last_inbound_at IS NULL OR last_inbound_at < $2
                                       THEN $2 ELSE last_inbound_at END
         WHERE id = $3 AND status <> 'closed' RETURNING last_seq",
    )
    .bind(now)
    .bind(wrote_at)
    .bind(conversation_id)
    .fetch_optional(&mut *w.tx)
    .await?
    else {
        return Ok(None);
    };
    let seq: i64 = bumped.try_get("last_seq")?;
    let message_id = new_id();
    let attachments = serde_json::to_string(&msg.attachments).unwrap_or_else(|_| "[]".into());
    let inserted = sqlx::query(
        "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                              text, attachments, provider_id, kind, reply_to_provider_id, sent_at,
                              status, created_at)
         VALUES ($1, $2, $3, $4, $5, 'inbound', 'contact', $6, $7, $8, $9, $10, $11, 'received', $12)
         ON CONFLICT (channel_id, provider_id) DO NOTHING",
    )
    .bind(&message_id)
    .bind(tenant_id)
    .bind(conversation_id)
    .bind(channel_id)
    .bind(seq)
    .bind(&msg.text)
    .bind(attachments)
    .bind(&msg.provider_id)
    .bind(&msg.kind)
    .bind(msg.reply_to.as_deref())
    .bind(msg.sent_at)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Some(Ingested {
            conversation_id: conversation_id.to_owned(),
            message_id,
            seq,
            duplicate: false,
            turn: None,
        }));
    }
    // A redelivery. We hold the conversation's lock, so nobody took a number since ours: give
    // it back, and answer with the first copy's ids.
    sqlx::query("UPDATE conversation SET last_seq = last_seq - 1 WHERE id = $1")
        .bind(conversation_id)
        .execute(&mut *w.tx)
        .await?;
    let first = sqlx::query(
        "SELECT id, conversation_id, seq FROM message WHERE channel_id = $1 AND provider_id = $2",
    )
    .bind(channel_id)
    .bind(&msg.provider_id)
    .fetch_one(&mut *w.tx)
    .await?;
    Ok(Some(Ingested {
        conversation_id: first.try_get("conversation_id")?,
        message_id: first.try_get("id")?,
        seq: first.try_get("seq")?,
        duplicate: true,
        turn: None,
    }))
}

/// One turn's completion, inside the batch's transaction.
async fn complete_one(
    w: &mut WriteTx,
    turn: &PendingTurn,
    reply: Option<&ReplyDraft>,
    now: i64,
) -> Result<Option<(String, String)>, sqlx::Error> {
    // Lock order: conversation row first, as ingest does. (On Postgres, ingest's unique check on
    // `message` waits for our update of the inbound row; taking the conversation lock after that
    // update would deadlock with an ingest holding it.) The same statement hands out the reply's
    // sequence number.
    let bump = i64::from(reply.is_some());
    let row = sqlx::query(
        "UPDATE conversation SET last_seq = last_seq + $1, updated_at = $2 WHERE id = $3
         RETURNING last_seq, status",
    )
    .bind(bump)
    .bind(now)
    .bind(&turn.conversation_id)
    .fetch_one(&mut *w.tx)
    .await?;
    let seq: i64 = row.try_get("last_seq")?;
    // Closed while the answer was being prepared: closing ends the conversation, so the answer
    // is not stored or sent (the turn is still marked processed).
    let closed = row.try_get::<String, _>("status")? == "closed";
    let (reply, bump) = if closed && reply.is_some() {
        sqlx::query("UPDATE conversation SET last_seq = last_seq - 1 WHERE id = $1")
            .bind(&turn.conversation_id)
            .execute(&mut *w.tx)
            .await?;
        (None, 0)
    } else {
        (reply, bump)
    };
    let marked = sqlx::query(
        "UPDATE message SET processed_at = $1, status = 'processed'
         WHERE id = $2 AND processed_at IS NULL",
    )
    .bind(now)
    .bind(&turn.message_id)
    .execute(&mut *w.tx)
    .await?;
    if marked.rows_affected() == 0 {
        // Already completed: give the number back (we hold the lock) and write nothing else.
        sqlx::query("UPDATE conversation SET last_seq = last_seq - $1 WHERE id = $2")
            .bind(bump)
            .bind(&turn.conversation_id)
            .execute(&mut *w.tx)
            .await?;
        return Ok(None);
    }
    let Some(reply) = reply else {
        return Ok(None);
    };
    let reply_id = new_id();
    sqlx::query(
        "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                              text, citations, grounding, reply_to, status, created_at)
         VALUES ($1, $2, $3, $4, $5, 'outbound', 'bot', $6, $7, $8, $9, 'queued', $10)",
    )
    .bind(&reply_id)
    .bind(&turn.tenant_id)
    .bind(&turn.conversation_id)
    .bind(&turn.channel_id)
    .bind(seq)
    .bind(&reply.text)
    .bind(&reply.citations_json)
    .bind(&reply.grounding_json)
    .bind(&turn.message_id)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    let delivery_id = new_id();
    sqlx::query(
        "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                               recipient, body, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)",
    )
    .bind(&delivery_id)
    .bind(&turn.tenant_id)
    .bind(&turn.channel_id)
    .bind(&turn.conversation_id)
    .bind(&reply_id)
    .bind(seq)
    .bind(&turn.recipient)
    .bind(&reply.text)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(Some((reply_id, delivery_id)))
}

/// Introduces a contact seen for the first time on this channel.
/// An outbound message and its outbox row, written together.
pub(crate) struct Outbound<'a> {
    pub tenant_id: &'a str,
    pub conversation_id: &'a str,
    pub channel_id: &'a str,
    pub seq: i64,
    /// `bot` or `agent`.
    pub author: &'a str,
    pub text: &'a str,
    pub reply_to: Option<&'a str>,
    pub recipient: &'a str,
    pub content: Option<&'a str>,
    pub created_at: i64,
    /// When the outbox may first send it (the wall clock).
    pub send_at: i64,
}

/// Stores an outbound message (`queued`) with its delivery row; the message's id.
pub(crate) async fn insert_outbound(
    w: &mut WriteTx,
    m: Outbound<'_>,
) -> Result<String, sqlx::Error> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                              text, reply_to, status, created_at)
         VALUES ($1, $2, $3, $4, $5, 'outbound', $6, $7, $8, 'queued', $9)",
    )
    .bind(&id)
    .bind(m.tenant_id)
    .bind(m.conversation_id)
    .bind(m.channel_id)
    .bind(m.seq)
    .bind(m.author)
    .bind(m.text)
    .bind(m.reply_to)
    .bind(m.created_at)
    .execute(&mut *w.tx)
    .await?;
    sqlx::query(
        "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                               recipient, body, content, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10)",
    )
    .bind(new_id())
    .bind(m.tenant_id)
    .bind(m.channel_id)
    .bind(m.conversation_id)
    .bind(&id)
    .bind(m.seq)
    .bind(m.recipient)
    .bind(m.text)
    .bind(m.content)
    .bind(m.send_at)
    .execute(&mut *w.tx)
    .await?;
    Ok(id)
}

pub(crate) async fn new_contact(
    w: &mut WriteTx,
    tenant_id: &str,
    channel_id: &str,
    external_id: &str,
    display_name: Option<&str>,
    now: i64,
) -> Result<String, sqlx::Error> {
    let select =
        "SELECT contact_id FROM contact_identity WHERE channel_id = $1 AND external_id = $2";
    let contact_id = new_id();
    sqlx::query(
        "INSERT INTO contact (id, tenant_id, display_name, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&contact_id)
    .bind(tenant_id)
    .bind(display_name)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    let linked = sqlx::query(
        "INSERT INTO contact_identity (id, tenant_id, contact_id, channel_id, external_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel_id, external_id) DO NOTHING",
    )
    .bind(new_id())
    .bind(tenant_id)
    .bind(&contact_id)
    .bind(channel_id)
    .bind(external_id)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    if linked.rows_affected() == 1 {
        return Ok(contact_id);
    }
    // Another transaction introduced this person first (Postgres, concurrent first messages).
    sqlx::query("DELETE FROM contact WHERE id = $1")
        .bind(&contact_id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query(select)
        .bind(channel_id)
        .bind(external_id)
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("contact_id")
}

/// Opens a conversation for a contact that has no open one on this channel and thread.
async fn open_thread_for(
    w: &mut WriteTx,
    tenant_id: &str,
    channel_id: &str,
    contact_id: &str,
    thread: &str,
    subject: Option<&str>,
    now: i64,
) -> Result<String, sqlx::Error> {
    let select = "SELECT id FROM conversation
                  WHERE contact_id = $1 AND channel_id = $2 AND thread = $3 AND status <> 'closed'";
    let id = new_id();
    let opened = sqlx::query(
        "INSERT INTO conversation (id, tenant_id, contact_id, channel_id, thread, subject,
                                   created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (contact_id, channel_id, thread) WHERE status <> 'closed' DO NOTHING",
    )
    .bind(&id)
    .bind(tenant_id)
    .bind(contact_id)
    .bind(channel_id)
    .bind(thread)
    .bind(subject)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    if opened.rows_affected() == 1 {
        return Ok(id);
    }
    sqlx::query(select)
        .bind(contact_id)
        .bind(channel_id)
        .bind(thread)
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("id")
}

/// A pending turn from a row of [`Store::next_pending_turns`].
fn pending_turn(r: &AnyRow) -> Result<PendingTurn, sqlx::Error> {
    Ok(PendingTurn {
        tenant_id: r.try_get("tenant_id")?,
        conversation_id: r.try_get("conversation_id")?,
        channel_id: r.try_get("channel_id")?,
        message_id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        text: r.try_get("text")?,
        created_at: r.try_get("created_at")?,
        kind: r.try_get("kind")?,
        provider_id: r.try_get("provider_id")?,
        attachments: r.try_get("attachments")?,
        ..turn_facts(r)?
    })
}

/// A turn's facts about its conversation, contact and channel, from a row with
/// [`turn_facts_columns!`]; the message's own fields are left empty for the caller to fill.
pub(super) fn turn_facts(r: &AnyRow) -> Result<PendingTurn, sqlx::Error> {
    Ok(PendingTurn {
        tenant_id: String::new(),
        conversation_id: String::new(),
        conversation_status: r.try_get("status")?,
        channel_id: String::new(),
        message_id: String::new(),
        seq: 0,
        text: String::new(),
        created_at: 0,
        recipient: r.try_get("external_id")?,
        kind: String::new(),
        provider_id: None,
        attachments: String::new(),
        channel_kind: r.try_get("channel_kind")?,
        contact_id: r.try_get("contact_id")?,
        contact_blocked: r.try_get::<Option<i64>, _>("blocked_at")?.is_some(),
        fallbacks: r.try_get("fallbacks")?,
        enrolled: r.try_get::<i64, _>("enrolled")? != 0,
        programs_published: r.try_get::<i64, _>("programs_published")? != 0,
    })
}
