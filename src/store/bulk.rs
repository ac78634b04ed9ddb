//! Multi-row fast paths for the two hot write batches: storing inbound messages and completing
//! turns. A batch of N messages costs a handful of statements instead of a few per message,
//! which is what decides throughput: each statement is a round trip (Postgres) or a hop to
//! SQLite's connection thread, taken while the batch holds its locks.
//!
//! A fast path handles the common case only — new messages in open conversations, turns not yet
//! completed. When it meets anything else (a redelivery, a closed conversation, a turn already
//! completed) it rolls back and returns `None`, and the caller runs the general per-item path,
//! which handles every case. Both paths take conversation locks in id order.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};

use super::messages::{IngestItem, Ingested, PendingTurn, ReplyDraft};
use super::{Backend, Store, WriteTx, new_id};

/// One SQL statement with a growing argument list; `$n` placeholders are numbered as values are
/// pushed (sqlx's query builder writes `?` for `Any`, which Postgres does not accept).
pub(super) struct Statement {
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

    pub(super) fn query(self) -> sqlx::query::Query<'static, sqlx::Any, AnyArguments> {
        sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.args)
    }
}

/// Postgres: lock the conversations' rows in id order before touching any of them, so that
/// concurrent batches (which all do this) cannot deadlock. SQLite has one writer: nothing to do.
pub(super) async fn lock_conversations(
    w: &mut WriteTx,
    backend: Backend,
    ids: &BTreeMap<String, usize>,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        let mut s = Statement::new("SELECT id FROM conversation WHERE id IN ");
        s.bind_list(ids.keys().cloned())
            .push(" ORDER BY id FOR UPDATE");
        s.query().fetch_all(&mut *w.tx).await?;
    }
    Ok(())
}

impl Store {
    /// Stores a batch of new messages in open conversations with two or three statements.
    /// `None` (after rolling back) when the batch needs the general path.
    pub(super) async fn try_ingest_bulk(
        &self,
        items: &[IngestItem],
        conversations: &[String],
        now: i64,
    ) -> Result<Option<Vec<Ingested>>, sqlx::Error> {
        let mut w = self.begin_write().await?;
        // How many messages each conversation receives in this batch.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in conversations {
            *counts.entry(c.clone()).or_default() += 1;
        }
        lock_conversations(&mut w, self.backend, &counts).await?;
        // When each conversation's contact last wrote: the provider's send time (never later
        // than now) — a redelivery days later must not reopen WhatsApp's 24-hour window — and
        // never earlier than before.
        let mut wrote: HashMap<&str, i64> = HashMap::new();
        for (item, c) in items.iter().zip(conversations) {
            let at = item
                .message
                .sent_at
                .map_or(now, |s| s.saturating_mul(1000).min(now));
            let e = wrote.entry(c.as_str()).or_insert(at);
            *e = (*e).max(at);
        }
        // One numbering statement for every conversation of the batch.
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        let mut s =
            Statement::new("UPDATE conversation SET last_seq = last_seq + v.k, updated_at = ");
        s.bind(now).push(
            ", last_inbound_at = CASE WHEN last_inbound_at IS NULL OR last_inbound_at < v.wrote
                                      THEN v.wrote ELSE last_inbound_at END
             FROM (",
        );
        for (i, (id, k)) in counts.iter().enumerate() {
            s.push(if i == 0 {
                "SELECT "
            } else {
                " UNION ALL SELECT "
            })
            .bind(id.clone())
            .push(" AS id, ")
            .bind(*k as i64)
            .push(" AS k, ")
            .bind(wrote.get(id.as_str()).copied().unwrap_or(now))
            .push(" AS wrote");
        }
        s.push(
            ") AS v WHERE conversation.id = v.id AND conversation.status <> 'closed'
             RETURNING conversation.id AS id, conversation.last_seq AS last_seq",
        );
        for row in s.query().fetch_all(&mut *w.tx).await? {
            let id: String = row.try_get("id")?;
            let k = counts.get(&id).copied().unwrap_or(1) as i64;
            let last: i64 = row.try_get("last_seq")?;
            next_seq.insert(id, last - k + 1);
        }
        if next_seq.len() != counts.len() {
            w.tx.rollback().await?; // a conversation was closed: general path
            return Ok(None);
        }
        let mut out = Vec::with_capacity(items.len());
        let mut s = Statement::new(
            "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                                  text, attachments, provider_id, kind, reply_to_provider_id,
                                  sent_at, status, created_at) VALUES ",
        );
        for (i, (item, conversation)) in items.iter().zip(conversations).enumerate() {
            let seq = next_seq
                .get_mut(conversation)
                .ok_or(sqlx::Error::RowNotFound)?;
            let message_id = new_id();
            let attachments =
                serde_json::to_string(&item.message.attachments).unwrap_or_else(|_| "[]".into());
            if i > 0 {
                s.push(", ");
            }
            s.push("(")
                .bind(message_id.clone())
                .push(", ")
                .bind(item.tenant_id.clone())
                .push(", ")
                .bind(conversation.clone())
                .push(", ")
                .bind(item.channel_id.clone())
                .push(", ")
                .bind(*seq)
                .push(", 'inbound', 'contact', ")
                .bind(item.message.text.clone())
                .push(", ")
                .bind(attachments)
                .push(", ")
                .bind(item.message.provider_id.clone())
                .push(", ")
                .bind(item.message.kind.clone())
                .push(", ")
                .bind(item.message.reply_to.clone())
                .push(", ")
                .bind(item.message.sent_at)
                .push(", 'received', ")
                .bind(now)
                .push(")");
            out.push(Ingested {
                conversation_id: conversation.clone(),
                message_id,
                seq: *seq,
                duplicate: false,
            });
            *seq += 1;
        }
        s.push(" ON CONFLICT (channel_id, provider_id) DO NOTHING RETURNING id");
        let inserted = s.query().fetch_all(&mut *w.tx).await?.len();
        if inserted != items.len() {
            w.tx.rollback().await?; // a redelivery among them: general path
            return Ok(None);
        }
        w.commit().await?;
        Ok(Some(out))
    }

    /// Completes a batch of turns (one per conversation, none completed yet) with four or five
    /// statements. `None` (after rolling back) when the batch needs the general path.
    pub(super) async fn try_complete_bulk(
        &self,
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
        let mut w = self.begin_write().await?;
        lock_conversations(&mut w, self.backend, &conversations).await?;
        let mut seqs: HashMap<String, i64> = HashMap::new();
        let replying: Vec<String> = turns
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(t, _)| t.conversation_id.clone())
            .collect();
        if !replying.is_empty() {
            let mut s =
                Statement::new("UPDATE conversation SET last_seq = last_seq + 1, updated_at = ");
            s.bind(now)
                .push(" WHERE status <> 'closed' AND id IN ")
                .bind_list(replying.iter().cloned())
                .push(" RETURNING id, last_seq");
            for row in s.query().fetch_all(&mut *w.tx).await? {
                seqs.insert(row.try_get("id")?, row.try_get("last_seq")?);
            }
        }
        let mut s = Statement::new("UPDATE message SET status = 'processed', processed_at = ");
        s.bind(now)
            .push(" WHERE processed_at IS NULL AND id IN ")
            .bind_list(turns.iter().map(|(t, _)| t.message_id.clone()))
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
            w.tx.rollback().await?;
            return Ok(None);
        }
        let mut out = vec![None; turns.len()];
        let mut delivery_ids = Vec::new();
        let mut messages = Statement::new(
            "INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                                  text, citations, grounding, reply_to, status, created_at) VALUES ",
        );
        let mut deliveries = Statement::new(
            "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                                   recipient, body, next_attempt_at, created_at, updated_at) VALUES ",
        );
        let mut first = true;
        for (i, (turn, reply)) in turns.iter().enumerate() {
            let Some(reply) = reply else { continue };
            let seq = seqs
                .get(&turn.conversation_id)
                .copied()
                .ok_or(sqlx::Error::RowNotFound)?;
            let reply_id = new_id();
            if !first {
                messages.push(", ");
                deliveries.push(", ");
            }
            first = false;
            messages
                .push("(")
                .bind(reply_id.clone())
                .push(", ")
                .bind(turn.tenant_id.clone())
                .push(", ")
                .bind(turn.conversation_id.clone())
                .push(", ")
                .bind(turn.channel_id.clone())
                .push(", ")
                .bind(seq)
                .push(", 'outbound', 'bot', ")
                .bind(reply.text.clone())
                .push(", ")
                .bind(reply.citations_json.clone())
                .push(", ")
                .bind(reply.grounding_json.clone())
                .push(", ")
                .bind(turn.message_id.clone())
                .push(", 'queued', ")
                .bind(now)
                .push(")");
            let delivery_id = new_id();
            delivery_ids.push(delivery_id.clone());
            deliveries
                .push("(")
                .bind(delivery_id)
                .push(", ")
                .bind(turn.tenant_id.clone())
                .push(", ")
                .bind(turn.channel_id.clone())
                .push(", ")
                .bind(turn.conversation_id.clone())
                .push(", ")
                .bind(reply_id.clone())
                .push(", ")
                .bind(seq)
                .push(", ")
                .bind(turn.recipient.clone())
                .push(", ")
                .bind(reply.text.clone())
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(now)
                .push(")");
            out[i] = Some(reply_id);
        }
        if !first {
            messages.query().execute(&mut *w.tx).await?;
            deliveries.query().execute(&mut *w.tx).await?;
        }
        let claimed = match lease_ms {
            Some(lease_ms) => {
                super::deliveries::preclaim(&mut w, &delivery_ids, lease_ms, now).await?
            }
            None => Vec::new(),
        };
        w.commit().await?;
        Ok(Some(super::messages::completed(out, claimed)))
    }
}
