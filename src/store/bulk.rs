//! Multi-row fast paths for the two hot write batches: storing inbound messages and completing
//! turns. A batch of N messages costs a handful of statements instead of a few per message,
//! which is what decides throughput: each statement is a round trip (Postgres) or a hop to
//! SQLite's connection thread, taken while the batch holds its locks.
//!
//! A fast path handles the common case only — new messages in open conversations, turns not yet
//! completed. When it meets anything else (a redelivery, a closed conversation, a turn already
//! completed) it rolls back and returns `None`, and the caller runs the general per-item path,
//! which handles every case. Both paths take conversation locks in id order.
//!
//! How a fast path backs out differs by backend. On PostgreSQL the caller takes a savepoint and
//! rolls back to it: another batch may change a conversation between a check and a write. On
//! SQLite the fast path first *reads* whether it can finish (one statement) and writes only if it
//! can: there is one writer, so nothing changes in between — and no savepoint, which would have
//! copied every page the batch then writes into the statement journal first (~2 % of the
//! gateway's CPU under load). A SQLite fast path that still meets a refusal after writing is a
//! bug; it fails the whole transaction (see [`refused`]), whose callers then write item by item.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Arguments, Row};

use super::messages::{IngestItem, Ingested, PendingTurn, ReplyDraft};
use super::{Backend, Store, WriteTx, new_id};

/// One SQL statement with a growing argument list; `$n` placeholders are numbered as values are
/// pushed (sqlx's query builder writes `?` for `Any`, which Postgres does not accept).
pub(crate) struct Statement {
    sql: String,
    args: AnyArguments,
}

impl Statement {
    pub(super) fn new(sql: &str) -> Statement {
        Statement {
            sql: sql.to_owned(),
            args: AnyArguments::default(),
        }
    }

    /// Appends a placeholder for `value` to the SQL text.
    pub(super) fn bind<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + 'q,
    {
        // Encoding into Any's buffer only fails for values Any cannot carry; ours are text/int.
        let _ = self.args.add(value);
        self.sql.push_str(&format!("${}", self.args.len()));
        self
    }

    /// Appends `value` to the arguments without writing a placeholder: for a `$n` the SQL text
    /// already names.
    pub(super) fn arg<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + 'q,
    {
        let _ = self.args.add(value);
        self
    }

    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// `(v1, v2, …)` — a list of placeholders, one per value.
    pub(super) fn bind_list<'q, T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self
    where
        T: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + 'q,
    {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self.push(")")
    }

    /// `column` is one of `ids`, the ids bound as one JSON array (the same SQL for any count:
    /// see [`json_rows`]). On SQLite `column IN (SELECT value FROM json_each($n))`; on
    /// PostgreSQL `column = ANY(ARRAY(SELECT jsonb_array_elements_text($n::jsonb)))`: an index
    /// probe per id, always — PostgreSQL plans a prepared `IN (SELECT …)` once for any count, as
    /// a semi-join, and the generic plan it settled on scanned the whole table (7 ms per
    /// statement instead of 0.3).
    pub(super) fn bind_in<'v>(
        &mut self,
        backend: Backend,
        column: &str,
        ids: impl IntoIterator<Item = &'v str>,
    ) -> &mut Self {
        let ids: Vec<&str> = ids.into_iter().collect();
        self.push(column);
        match backend {
            Backend::Sqlite => self
                .push(" IN (SELECT value FROM json_each(")
                .bind(json_rows(&ids))
                .push("))"),
            Backend::Postgres => self
                .push(" = ANY(ARRAY(SELECT jsonb_array_elements_text(")
                .bind(json_rows(&ids))
                .push("::jsonb)))"),
        }
    }

    pub(super) fn query(self) -> sqlx::query::Query<'static, sqlx::Any, AnyArguments> {
        sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.args)
    }
}

/// Rows for SQLite's `jsonb_each($n)` and PostgreSQL's `jsonb_array_elements($n::jsonb)`: one
/// JSON array of rows (each an array, read back with `value ->> i`). One bound text instead of
/// a placeholder per value keeps the statement's SQL the same whatever the batch size, so it is
/// prepared once and stays in the connection's statement cache; binding hundreds of numbered
/// placeholders cost SQLite a name lookup each that grows with their count, and on PostgreSQL
/// every batch size was a statement of its own, parsed, described and planned again (a `VALUES`
/// list of a hundred rows takes the server longer to plan than to run). On PostgreSQL's write
/// connections such a statement's cached plan probes indexes whatever the tables' size (see
/// [`super::WRITER_SETTINGS_ON_POSTGRES`]). `jsonb_each`, not `json_each`: it parses the text once and hands
/// each row over as a JSONB blob, which `->>` reads in place; `json_each` hands each row over as
/// JSON text, which every `->>` of it parsed again (eleven times for an inbound message).
/// (A row that cannot be serialized cannot happen with these types;
/// if it did, `[]` inserts nothing and the fast path's count check sends the batch to the
/// general path.)
pub(super) fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".to_owned())
}

/// What one statement of a [`script`] did: the rows it changed and the rows it returned.
pub(super) struct Step {
    pub changed: u64,
    pub rows: Vec<AnyRow>,
}

/// SQLite: runs `query` — several statements in one text, `;`-separated — as one request to the
/// writer's connection thread, and returns what each statement did, in order.
///
/// Every statement sent to SQLite through sqlx is a hop to the connection's thread and back:
/// two context switches, which on one core cost the writer more than most of its statements'
/// work (the profile of a Telegram run: the writer's thread 42 % of the gateway's samples, a
/// quarter of that in the scheduler). The tick's writes that need nothing back from each other
/// are sent as one text. sqlx's SQLite driver runs the statements of a text in turn, binding
/// `$n` by number in each (so statements share arguments); sqlx calls that behaviour deprecated
/// in favour of `raw_sql`, which binds nothing. The SQLite suite runs through every script, so a
/// driver that stopped doing this fails it (`a_script_runs_every_statement_with_its_arguments`).
pub(super) async fn script(
    w: &mut WriteTx,
    query: sqlx::query::Query<'static, sqlx::Any, AnyArguments>,
) -> Result<Vec<Step>, sqlx::Error> {
    use futures::TryStreamExt;
    use sqlx::Either;
    use sqlx::Executor;
    let mut steps = Vec::new();
    let mut rows = Vec::new();
    let mut stream = (&mut *w.tx).fetch_many(query);
    while let Some(step) = stream.try_next().await? {
        match step {
            Either::Left(done) => steps.push(Step {
                changed: done.rows_affected(),
                rows: std::mem::take(&mut rows),
            }),
            Either::Right(row) => rows.push(row),
        }
    }
    Ok(steps)
}

/// An inbound message of a bulk insert, serialized as the array `json_rows` wants.
struct InboundRow<'a> {
    id: String,
    tenant_id: &'a str,
    conversation_id: &'a str,
    channel_id: &'a str,
    /// PostgreSQL: the message's number; SQLite: how many of the batch's messages of its
    /// conversation come after it (the script numbers it from the conversation's new last).
    number: i64,
    text: &'a str,
    attachments: String,
    provider_id: &'a str,
    kind: &'a str,
    reply_to: Option<&'a str>,
    sent_at: Option<i64>,
}

impl serde::Serialize for InboundRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            &self.id,
            self.tenant_id,
            self.conversation_id,
            self.channel_id,
            self.number,
            self.text,
            &self.attachments,
            self.provider_id,
            self.kind,
            self.reply_to,
            self.sent_at,
        )
            .serialize(s)
    }
}

/// A reply and its delivery of a bulk completion, serialized as the array `json_rows` wants:
/// `[reply id, delivery id, tenant, conversation, channel, seq, recipient, text, citations,
/// grounding, inbound id]`.
struct ReplyRow<'a> {
    id: String,
    delivery_id: String,
    turn: &'a PendingTurn,
    reply: &'a ReplyDraft,
    /// `None` on SQLite, whose script reads it from the conversation it just numbered.
    seq: Option<i64>,
}

impl serde::Serialize for ReplyRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            &self.id,
            &self.delivery_id,
            &self.turn.tenant_id,
            &self.turn.conversation_id,
            &self.turn.channel_id,
            self.seq,
            &self.turn.recipient,
            &self.reply.text,
            &self.reply.citations_json,
            &self.reply.grounding_json,
            &self.turn.message_id,
        )
            .serialize(s)
    }
}

/// Postgres: lock the conversations' rows in id order before touching any of them, so that
/// concurrent batches (which all do this) cannot deadlock. SQLite has one writer: nothing to do.
///
/// `FOR NO KEY UPDATE`, the lock the batches' own updates take (they change no key): it orders
/// the batches among themselves as `FOR UPDATE` did, but leaves alone the `FOR KEY SHARE` that
/// every insert of a message or delivery takes on its conversation for the foreign key, so
/// another transaction's insert into a locked conversation no longer waits for its commit.
pub(super) async fn lock_conversations(
    w: &mut WriteTx,
    backend: Backend,
    ids: &BTreeMap<String, usize>,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        let mut s = Statement::new("SELECT id FROM conversation WHERE ");
        s.bind_in(backend, "id", ids.keys().map(String::as_str))
            .push(" ORDER BY id FOR NO KEY UPDATE");
        s.query().fetch_all(&mut *w.tx).await?;
    }
    Ok(())
}

/// SQLite: whether [`Store::try_ingest_bulk`] can store `items` without meeting anything only
/// the general path handles — every conversation open, no message stored before (the dedupe key
/// `(channel_id, provider_id)`), none twice in the batch. One statement; each lookup is an
/// index probe driven by the batch (`+status`: never a scan of the open conversations).
async fn ingest_possible(
    w: &mut WriteTx,
    items: &[IngestItem],
    conversations: &BTreeMap<String, usize>,
) -> Result<bool, sqlx::Error> {
    let mut keys = HashSet::with_capacity(items.len());
    for item in items {
        if !keys.insert((item.channel_id.as_str(), item.message.provider_id.as_str())) {
            return Ok(false); // the same message twice in one batch
        }
    }
    let ids: Vec<&str> = conversations.keys().map(String::as_str).collect();
    let keys: Vec<(&str, &str)> = keys.into_iter().collect();
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM json_each($1) AS v
                 WHERE EXISTS (SELECT 1 FROM conversation c
                               WHERE c.id = v.value AND +c.status <> 'closed')) AS open,
                (SELECT count(*) FROM jsonb_each($2) AS v
                 WHERE EXISTS (SELECT 1 FROM message m
                               WHERE m.channel_id = v.value ->> 0
                                 AND m.provider_id = v.value ->> 1)) AS seen",
    )
    .bind(json_rows(&ids))
    .bind(json_rows(&keys))
    .fetch_one(&mut *w.tx)
    .await?;
    let open: i64 = row.try_get("open")?;
    let seen: i64 = row.try_get("seen")?;
    Ok(open == ids.len() as i64 && seen == 0)
}

/// SQLite: whether [`Store::try_complete_bulk`] can complete `turns` — none completed before,
/// every conversation that gets a reply still open. One statement of index probes.
async fn complete_possible(
    w: &mut WriteTx,
    turns: &[(PendingTurn, Option<ReplyDraft>)],
    replying: &[String],
) -> Result<bool, sqlx::Error> {
    let messages: Vec<&str> = turns.iter().map(|(t, _)| t.message_id.as_str()).collect();
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM json_each($1) AS v
                 WHERE EXISTS (SELECT 1 FROM message m
                               WHERE m.id = v.value AND +m.processed_at IS NULL)) AS pending,
                (SELECT count(*) FROM json_each($2) AS v
                 WHERE EXISTS (SELECT 1 FROM conversation c
                               WHERE c.id = v.value AND +c.status <> 'closed')) AS open",
    )
    .bind(json_rows(&messages))
    .bind(json_rows(replying))
    .fetch_one(&mut *w.tx)
    .await?;
    let pending: i64 = row.try_get("pending")?;
    let open: i64 = row.try_get("open")?;
    Ok(pending == messages.len() as i64 && open == replying.len() as i64)
}

/// A fast path that wrote and then found it cannot finish: `None` for PostgreSQL's caller, which
/// rolls back to its savepoint; on SQLite, whose fast paths check before they write, an error that
/// fails the transaction (nothing half-written survives it).
fn refused<T>(backend: Backend, what: &str) -> Result<Option<T>, sqlx::Error> {
    match backend {
        Backend::Postgres => Ok(None),
        Backend::Sqlite => Err(sqlx::Error::Protocol(format!(
            "bulk write: {what} after its check said otherwise"
        ))),
    }
}

/// Per conversation of an ingest batch: `(id, messages it receives, when its contact last
/// wrote)`. The time is the provider's send time (never later than now) — a redelivery days
/// later must not reopen WhatsApp's 24-hour window — and never earlier than before.
fn numbering<'a>(
    items: &[IngestItem],
    conversations: &[String],
    counts: &'a BTreeMap<String, usize>,
    now: i64,
) -> Vec<(&'a str, i64, i64)> {
    let mut wrote: HashMap<&str, i64> = HashMap::new();
    for (item, c) in items.iter().zip(conversations) {
        let at = item
            .message
            .sent_at
            .map_or(now, |s| s.saturating_mul(1000).min(now));
        let e = wrote.entry(c.as_str()).or_insert(at);
        *e = (*e).max(at);
    }
    counts
        .iter()
        .map(|(id, k)| {
            let at = wrote.get(id.as_str()).copied().unwrap_or(now);
            (id.as_str(), *k as i64, at)
        })
        .collect()
}

impl Store {
    /// Stores a batch of new messages in open conversations with two or three statements, in
    /// `w`. `None` when the batch needs the general path: on SQLite before anything is written;
    /// on PostgreSQL the caller then rolls back to a savepoint taken before (see
    /// [`WriteTx::savepoint`]).
    pub(super) async fn try_ingest_bulk(
        &self,
        w: &mut WriteTx,
        items: &[IngestItem],
        conversations: &[String],
        now: i64,
    ) -> Result<Option<Vec<Ingested>>, sqlx::Error> {
        // How many messages each conversation receives in this batch.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in conversations {
            *counts.entry(c.clone()).or_default() += 1;
        }
        if self.backend == Backend::Sqlite {
            if !ingest_possible(w, items, &counts).await? {
                return Ok(None);
            }
            return self
                .ingest_bulk_sqlite(w, items, conversations, &counts, now)
                .await
                .map(Some);
        }
        lock_conversations(w, self.backend, &counts).await?;
        // One numbering statement for every conversation of the batch.
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        let numbering = numbering(items, conversations, &counts, now);
        // The rows as one JSON text, whose SQL does not change with the batch size: prepared
        // and planned once per connection (a `VALUES` list of placeholders was a new statement
        // for every batch size, parsed and planned by the server each time).
        let numbered = sqlx::query(
            "UPDATE conversation SET last_seq = last_seq + v.k, updated_at = $1,
                    last_inbound_at = CASE WHEN last_inbound_at IS NULL
                                                OR last_inbound_at < v.wrote
                                           THEN v.wrote ELSE last_inbound_at END
             FROM (SELECT value ->> 0 AS id, CAST(value ->> 1 AS BIGINT) AS k,
                          CAST(value ->> 2 AS BIGINT) AS wrote
                   FROM jsonb_array_elements($2::jsonb)) AS v
             WHERE conversation.id = v.id AND conversation.status <> 'closed'
             RETURNING conversation.id AS id, conversation.last_seq AS last_seq",
        )
        .bind(now)
        .bind(json_rows(&numbering))
        .fetch_all(&mut *w.tx)
        .await?;
        for row in numbered {
            let id: String = row.try_get("id")?;
            let k = counts.get(&id).copied().unwrap_or(1) as i64;
            let last: i64 = row.try_get("last_seq")?;
            next_seq.insert(id, last - k + 1);
        }
        if next_seq.len() != counts.len() {
            return refused(self.backend, "a conversation closed"); // general path
        }
        let mut out = Vec::with_capacity(items.len());
        let mut rows = Vec::with_capacity(items.len());
        for (item, conversation) in items.iter().zip(conversations) {
            let seq = next_seq
                .get_mut(conversation)
                .ok_or(sqlx::Error::RowNotFound)?;
            let message_id = new_id();
            let attachments =
                serde_json::to_string(&item.message.attachments).unwrap_or_else(|_| "[]".into());
            rows.push(InboundRow {
                id: message_id.clone(),
                tenant_id: &item.tenant_id,
                conversation_id: conversation,
                channel_id: &item.channel_id,
                number: *seq,
                text: &item.message.text,
                attachments,
                provider_id: &item.message.provider_id,
                kind: &item.message.kind,
                reply_to: item.message.reply_to.as_deref(),
                sent_at: item.message.sent_at,
            });
            out.push(Ingested {
                conversation_id: conversation.clone(),
                message_id,
                seq: *seq,
                duplicate: false,
                turn: None,
            });
            *seq += 1;
        }
        let inserted = sqlx::query(
            "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction,
                                  author, text, attachments, provider_id, kind,
                                  reply_to_provider_id, sent_at, status, created_at)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3,
                    CAST(value ->> 4 AS BIGINT), 'inbound', 'contact', value ->> 5,
                    value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                    CAST(value ->> 10 AS BIGINT), 'received', $1
             FROM jsonb_array_elements($2::jsonb)
             ON CONFLICT (channel_id, provider_id) DO NOTHING RETURNING id",
        )
        .bind(now)
        .bind(json_rows(&rows))
        .fetch_all(&mut *w.tx)
        .await?
        .len();
        if inserted != items.len() {
            return refused(self.backend, "a redelivery"); // general path
        }
        Ok(Some(out))
    }

    /// Completes a batch of turns (one per conversation, none completed yet) with four or five
    /// statements, in `w`. `None` when the batch needs the general path (on SQLite before
    /// anything is written; on PostgreSQL the caller rolls back to its savepoint).
    pub(super) async fn try_complete_bulk(
        &self,
        w: &mut WriteTx,
        turns: &[(PendingTurn, Option<ReplyDraft>)],
        now: i64,
        lease_ms: Option<i64>,
    ) -> Result<Option<Vec<super::messages::Completed>>, sqlx::Error> {
        let conversations: BTreeMap<String, usize> = turns
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.conversation_id.clone(), i))
            .collect();
        if conversations.len() != turns.len() {
            return Ok(None); // two turns of one conversation: general path keeps them in order
        }
        let replying: Vec<String> = turns
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(t, _)| t.conversation_id.clone())
            .collect();
        if self.backend == Backend::Sqlite {
            if !complete_possible(w, turns, &replying).await? {
                return Ok(None);
            }
            return self
                .complete_bulk_sqlite(w, turns, replying.len(), now, lease_ms)
                .await
                .map(Some);
        }
        lock_conversations(w, self.backend, &conversations).await?;
        let mut seqs: HashMap<String, i64> = HashMap::new();
        if !replying.is_empty() {
            let mut s =
                Statement::new("UPDATE conversation SET last_seq = last_seq + 1, updated_at = ");
            s.bind(now)
                .push(" WHERE status <> 'closed' AND ")
                .bind_in(self.backend, "id", replying.iter().map(String::as_str))
                .push(" RETURNING id, last_seq");
            let rows = s.query().fetch_all(&mut *w.tx).await?;
            for row in rows {
                seqs.insert(row.try_get("id")?, row.try_get("last_seq")?);
            }
        }
        let mut s = Statement::new("UPDATE message SET status = 'processed', processed_at = ");
        s.bind(now)
            .push(" WHERE processed_at IS NULL AND ")
            .bind_in(
                self.backend,
                "id",
                turns.iter().map(|(t, _)| t.message_id.as_str()),
            )
            .push(" RETURNING id");
        let marked: HashSet<String> = s
            .query()
            .fetch_all(&mut *w.tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        if marked.len() != turns.len() || seqs.len() != replying.len() {
            // A turn was completed already, or a conversation was closed meanwhile: general path.
            return refused(self.backend, "a turn completed or a conversation closed");
        }
        let mut out = vec![None; turns.len()];
        let mut replies = Vec::new();
        for (i, (turn, reply)) in turns.iter().enumerate() {
            let Some(reply) = reply else { continue };
            let seq = seqs
                .get(&turn.conversation_id)
                .copied()
                .ok_or(sqlx::Error::RowNotFound)?;
            let row = ReplyRow {
                id: new_id(),
                delivery_id: new_id(),
                turn,
                reply,
                seq: Some(seq),
            };
            out[i] = Some(row.id.clone());
            replies.push(row);
        }
        let mut claimed = Vec::new();
        if !replies.is_empty() {
            // (PostgreSQL's `->>` gives text, which the `seq` columns need cast.)
            let rows = json_rows(&replies);
            sqlx::query(
                "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq,
                                      direction, author, text, citations, grounding,
                                      reply_to, status, created_at)
                 SELECT value ->> 0, value ->> 2, value ->> 3, value ->> 4,
                        CAST(value ->> 5 AS BIGINT), 'outbound', 'bot', value ->> 7,
                        value ->> 8, value ->> 9, value ->> 10, 'queued', $1
                 FROM jsonb_array_elements($2::jsonb)",
            )
            .bind(now)
            .bind(&rows)
            .execute(&mut *w.tx)
            .await?;
            match lease_ms {
                // Inserted already claimed where nothing of the conversation is pending (see
                // `deliveries::INSERT_CLAIMED_ON_POSTGRES`), instead of an insert and then an
                // update of every new row.
                Some(lease_ms) => {
                    let inserted = sqlx::query(super::deliveries::INSERT_CLAIMED_ON_POSTGRES)
                        .bind(now)
                        .bind(&rows)
                        .bind(now + lease_ms)
                        .fetch_all(&mut *w.tx)
                        .await?;
                    for row in &inserted {
                        if row.try_get::<Option<i64>, _>("locked_until")?.is_some() {
                            claimed.push(super::deliveries::claimed_from_row(row)?);
                        }
                    }
                }
                None => {
                    sqlx::query(
                        "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id,
                                               message_id, seq, recipient, body,
                                               next_attempt_at, created_at, updated_at)
                         SELECT value ->> 1, value ->> 2, value ->> 4, value ->> 3, value ->> 0,
                                CAST(value ->> 5 AS BIGINT), value ->> 6, value ->> 7, $1, $1, $1
                         FROM jsonb_array_elements($2::jsonb)",
                    )
                    .bind(now)
                    .bind(&rows)
                    .execute(&mut *w.tx)
                    .await?;
                }
            }
        }
        Ok(Some(super::messages::completed(out, claimed)))
    }
}

impl Store {
    /// SQLite's [`Store::try_ingest_bulk`] after its check: the numbering of the batch's
    /// conversations and the insert of its messages in one script (one request to the writer's
    /// thread, see [`script`]). Each message is numbered from its conversation's new `last_seq`
    /// less how many of the batch's messages of that conversation come after it.
    async fn ingest_bulk_sqlite(
        &self,
        w: &mut WriteTx,
        items: &[IngestItem],
        conversations: &[String],
        counts: &BTreeMap<String, usize>,
        now: i64,
    ) -> Result<Vec<Ingested>, sqlx::Error> {
        let numbering = numbering(items, conversations, counts, now);
        let mut after: HashMap<&str, usize> =
            counts.iter().map(|(c, k)| (c.as_str(), *k)).collect();
        let mut rows = Vec::with_capacity(items.len());
        for (item, conversation) in items.iter().zip(conversations) {
            let left = after
                .get_mut(conversation.as_str())
                .ok_or(sqlx::Error::RowNotFound)?;
            *left = left.saturating_sub(1);
            rows.push(InboundRow {
                id: new_id(),
                tenant_id: &item.tenant_id,
                conversation_id: conversation,
                channel_id: &item.channel_id,
                number: *left as i64,
                text: &item.message.text,
                attachments: serde_json::to_string(&item.message.attachments)
                    .unwrap_or_else(|_| "[]".into()),
                provider_id: &item.message.provider_id,
                kind: &item.message.kind,
                reply_to: item.message.reply_to.as_deref(),
                sent_at: item.message.sent_at,
            });
        }
        // `WHERE true`: without it SQLite would read `ON CONFLICT` as a join constraint.
        let query = sqlx::query(concat!(
            "UPDATE conversation SET last_seq = last_seq + v.k, updated_at = $1,
                    last_inbound_at = CASE WHEN last_inbound_at IS NULL
                                                OR last_inbound_at < v.wrote
                                           THEN v.wrote ELSE last_inbound_at END
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS k, value ->> 2 AS wrote
                   FROM jsonb_each($2)) AS v
             WHERE conversation.id = v.id AND conversation.status <> 'closed';
             INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction,
                                  author, text, attachments, provider_id, kind,
                                  reply_to_provider_id, sent_at, status, created_at)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3,
                    (SELECT c.last_seq FROM conversation c WHERE c.id = value ->> 2)
                        - (value ->> 4),
                    'inbound', 'contact', value ->> 5, value ->> 6, value ->> 7, value ->> 8,
                    value ->> 9, value ->> 10, 'received', $1
             FROM jsonb_each($3) WHERE true
             ON CONFLICT (channel_id, provider_id) DO NOTHING RETURNING id, seq;",
            super::messages::ingest_turn_facts!()
        ))
        .bind(now)
        .bind(json_rows(&numbering))
        .bind(json_rows(&rows));
        let steps = script(w, query).await?;
        let (numbered, inserted, facts) = match steps.as_slice() {
            [numbered, inserted, facts] => (
                numbered.changed,
                inserted.rows.as_slice(),
                facts.rows.as_slice(),
            ),
            _ => (0, &[][..], &[][..]),
        };
        if numbered != counts.len() as u64 || inserted.len() != items.len() {
            return Err(sqlx::Error::Protocol(
                "bulk write: a conversation closed or a redelivery after its check said \
                 otherwise"
                    .into(),
            ));
        }
        let mut seqs: HashMap<String, i64> = HashMap::with_capacity(inserted.len());
        for row in inserted {
            seqs.insert(row.try_get("id")?, row.try_get("seq")?);
        }
        let mut facts: HashMap<String, &AnyRow> = facts
            .iter()
            .map(|r| Ok((r.try_get("id")?, r)))
            .collect::<Result<_, sqlx::Error>>()?;
        rows.into_iter()
            .zip(items)
            .map(|(row, item)| {
                let seq = seqs.get(&row.id).copied().ok_or(sqlx::Error::RowNotFound)?;
                let turn = match facts.remove(&row.id) {
                    Some(f) => Some(Box::new(PendingTurn {
                        tenant_id: item.tenant_id.clone(),
                        conversation_id: row.conversation_id.to_owned(),
                        channel_id: item.channel_id.clone(),
                        message_id: row.id.clone(),
                        seq,
                        text: item.message.text.clone(),
                        created_at: now,
                        kind: item.message.kind.clone(),
                        provider_id: Some(item.message.provider_id.clone()),
                        attachments: row.attachments.clone(),
                        ..super::messages::turn_facts(f)?
                    })),
                    None => None,
                };
                Ok(Ingested {
                    seq,
                    conversation_id: row.conversation_id.to_owned(),
                    message_id: row.id,
                    duplicate: false,
                    turn,
                })
            })
            .collect()
    }

    /// SQLite's [`Store::try_complete_bulk`] after its check: every write in one script (one
    /// request to the writer's thread, see [`script`]) — the replying conversations numbered,
    /// the turns marked processed, the replies and their deliveries inserted (each reply
    /// numbered from its conversation's new `last_seq`: one reply per conversation here), each
    /// delivery inserted already claimed when `lease_ms` asks for it and nothing of its
    /// conversation waits before it.
    async fn complete_bulk_sqlite(
        &self,
        w: &mut WriteTx,
        turns: &[(PendingTurn, Option<ReplyDraft>)],
        replying: usize,
        now: i64,
        lease_ms: Option<i64>,
    ) -> Result<Vec<super::messages::Completed>, sqlx::Error> {
        let mut out = vec![None; turns.len()];
        let mut replies = Vec::with_capacity(replying);
        for (i, (turn, reply)) in turns.iter().enumerate() {
            let Some(reply) = reply else { continue };
            let row = ReplyRow {
                id: new_id(),
                delivery_id: new_id(),
                turn,
                reply,
                seq: None,
            };
            out[i] = Some(row.id.clone());
            replies.push(row);
        }
        // $1 now, $2 the turns' messages, $3 the reply rows, $4 the lease's end. Each of the
        // three variants of the text is prepared once and kept.
        let mut sql = String::from(
            "UPDATE message SET status = 'processed', processed_at = $1
             WHERE processed_at IS NULL AND id IN (SELECT value FROM json_each($2));",
        );
        if !replies.is_empty() {
            sql.insert_str(
                0,
                "UPDATE conversation SET last_seq = last_seq + 1, updated_at = $1
                 WHERE status <> 'closed'
                   AND id IN (SELECT value ->> 3 FROM jsonb_each($3));",
            );
            sql.push_str(
                "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction,
                                      author, text, citations, grounding, reply_to, status,
                                      created_at)
                 SELECT value ->> 0, value ->> 2, value ->> 3, value ->> 4,
                        (SELECT c.last_seq FROM conversation c WHERE c.id = value ->> 3),
                        'outbound', 'bot', value ->> 7, value ->> 8, value ->> 9, value ->> 10,
                        'queued', $1
                 FROM jsonb_each($3);",
            );
            if lease_ms.is_some() {
                sql.push_str(super::deliveries::INSERT_CLAIMED_IN_SCRIPT);
            } else {
                sql.push_str(
                    "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id,
                                           seq, recipient, body, next_attempt_at, created_at,
                                           updated_at)
                     SELECT value ->> 1, value ->> 2, value ->> 4, value ->> 3, value ->> 0,
                            (SELECT c.last_seq FROM conversation c WHERE c.id = value ->> 3),
                            value ->> 6, value ->> 7, $1, $1, $1
                     FROM jsonb_each($3);",
                );
            }
        }
        let messages: Vec<&str> = turns.iter().map(|(t, _)| t.message_id.as_str()).collect();
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(json_rows(&messages))
            .bind(json_rows(&replies))
            .bind(now + lease_ms.unwrap_or(0));
        let steps = script(w, query).await?;
        // What the check promised: every turn marked, every replying conversation numbered.
        let (numbered, marked) = match steps.as_slice() {
            [marked, ..] if replies.is_empty() => (0, marked.changed),
            [numbered, marked, ..] => (numbered.changed, marked.changed),
            _ => (0, 0),
        };
        if marked != turns.len() as u64 || numbered != replies.len() as u64 {
            return Err(sqlx::Error::Protocol(
                "bulk write: a turn completed or a conversation closed after its check said \
                 otherwise"
                    .into(),
            ));
        }
        // The delivery insert returns every new row; those it leased are the claimed ones.
        let mut claimed = Vec::new();
        if !replies.is_empty() && lease_ms.is_some() {
            for row in steps.last().map(|s| s.rows.as_slice()).unwrap_or_default() {
                if row.try_get::<Option<i64>, _>("locked_until")?.is_some() {
                    claimed.push(super::deliveries::claimed_from_row(row)?);
                }
            }
        }
        Ok(super::messages::completed(out, claimed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script's statements all run, in order, each binding the `$n` it names (one shared
    /// argument list), each reporting its changed rows and its own returned rows — and an
    /// error in a later statement fails the script.
    #[tokio::test]
    async fn a_script_runs_every_statement_with_its_arguments() {
        use sqlx::Executor;
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = Store::connect(&switchboard_channel::Secret::new(url), 2)
            .await
            .expect("store");
        let mut w = store.begin_write().await.expect("begin");
        (&mut *w.tx)
            .execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            .await
            .expect("table");
        let query = sqlx::query(
            "INSERT INTO t (k, n) SELECT value, $1 FROM json_each($2);
             UPDATE t SET n = n + $3 WHERE k <> 'c' RETURNING k, n;
             SELECT count(*) AS total FROM t WHERE n = $1",
        )
        .bind(10_i64)
        .bind(json_rows(&["a", "b", "c"]))
        .bind(5_i64);
        let steps = script(&mut w, query).await.expect("script");
        assert_eq!(steps.len(), 3);
        assert_eq!((steps[0].changed, steps[0].rows.len()), (3, 0));
        assert_eq!(steps[1].changed, 2);
        let mut updated: Vec<(String, i64)> = steps[1]
            .rows
            .iter()
            .map(|r| (r.get::<String, _>("k"), r.get::<i64, _>("n")))
            .collect();
        updated.sort();
        assert_eq!(updated, [("a".to_owned(), 15), ("b".to_owned(), 15)]);
        assert_eq!(steps[2].rows.len(), 1);
        assert_eq!(steps[2].rows[0].get::<i64, _>("total"), 1); // only "c" kept 10
        // The second statement breaks a constraint: the script fails as a whole call.
        let failing = sqlx::query(
            "UPDATE t SET n = n + 1 WHERE k = $1; INSERT INTO t (k, n) VALUES ($1, NULL)",
        )
        .bind("a");
        assert!(script(&mut w, failing).await.is_err());
        w.commit().await.expect("commit");
        store.close().await;
    }

    /// An id list is one bound JSON text on both backends: the statement's SQL is the same for
    /// one id and for fifty, so it is prepared once per connection, not once per batch size.
    #[test]
    fn an_id_list_does_not_change_the_sql() {
        let ids: Vec<String> = (0..50).map(|i| format!("id-{i}")).collect();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let sql = |n: usize| {
                let mut s = Statement::new("UPDATE t SET x = 1 WHERE ");
                s.bind_in(backend, "id", ids[..n].iter().map(String::as_str));
                (s.sql, s.args.len())
            };
            let (one, one_args) = sql(1);
            let (fifty, fifty_args) = sql(50);
            assert_eq!(one, fifty, "{backend:?}");
            assert_eq!((one_args, fifty_args), (1, 1), "{backend:?}");
            assert!(one.ends_with(match backend {
                Backend::Sqlite => "id IN (SELECT value FROM json_each($1))",
                Backend::Postgres => "id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
            }));
        }
        assert_eq!(json_rows(&ids[..2]), r#"["id-0","id-1"]"#);
    }
}
