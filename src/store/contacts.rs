//! Contacts across channels: reachability, opt-out, hand-off, linking identities, and messages
//! written by people (agents) rather than the bot.

use rand::Rng;
use sqlx::Row;

use super::channels::Channel;
use super::messages::{MessageView, message_from_row, message_status};
use super::tenants::record_event;
use super::{Store, now_ms};

/// How long a link code can be redeemed.
pub const LINK_CODE_TTL_MS: i64 = 15 * 60 * 1000;

/// What redeeming a link code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// This identity now belongs to the code's contact (with its history).
    Linked { contact_id: String },
    /// The code belongs to this very contact.
    AlreadyLinked,
    /// No such code, or it expired or was used.
    Invalid,
    /// Both contacts already have an identity on one channel: joining them would leave the
    /// merged contact with two chats on that channel.
    Conflict,
    /// Too many wrong codes lately (from this contact, or in this tenant): refused unchecked.
    TooManyAttempts,
}

/// Wrong link codes allowed per contact per hour, and per tenant per hour.
const MAX_FAILED_LINKS_PER_CONTACT: i64 = 5;
const MAX_FAILED_LINKS_PER_TENANT: i64 = 100;

/// One way a contact is known on one channel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityView {
    pub channel_id: String,
    pub kind: String,
    pub external_id: String,
    pub unreachable_reason: Option<String>,
}

/// A contact with its identities.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContactView {
    pub id: String,
    pub display_name: Option<String>,
    pub opted_out: bool,
    pub identities: Vec<IdentityView>,
}

/// A message in a contact's history across channels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryItem {
    pub conversation_id: String,
    pub channel: String,
    #[serde(flatten)]
    pub message: MessageView,
}

/// Why an agent's message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum AgentMessageError {
    #[error("conversation not found")]
    NotFound,
    #[error("the conversation is closed")]
    Closed,
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// A contact merged into another (`$1` the one kept, `$2` the one merged away): every row that
/// names it moves over before it is deleted. Each finds its rows by an index on `contact_id`
/// (migrations 0014 and 0015), as do the delete's foreign-key checks.
pub(super) const MERGE_MOVES: [&str; 8] = [
    "UPDATE contact_identity SET contact_id = $1 WHERE contact_id = $2",
    "UPDATE conversation SET contact_id = $1 WHERE contact_id = $2",
    "UPDATE link_code SET contact_id = $1 WHERE contact_id = $2",
    // One running enrolment per program: the source's duplicates stop, the rest move.
    "UPDATE enrollment SET status = 'stopped', stopped_reason = 'merged into a linked contact', epoch = epoch + 1
     WHERE contact_id = $2 AND status IN ('active', 'paused') AND program_id IN
           (SELECT program_id FROM enrollment WHERE contact_id = $1 AND status IN ('active', 'paused'))",
    "UPDATE enrollment SET contact_id = $1 WHERE contact_id = $2",
    "UPDATE fire SET contact_id = $1 WHERE contact_id = $2",
    // Moderation's records follow the person (a flag's evidence is immutable, its contact is
    // not); left behind, they made the merged contact's deletion fail.
    "UPDATE flag SET contact_id = $1 WHERE contact_id = $2",
    "UPDATE ticket SET contact_id = $1 WHERE contact_id = $2",
];

/// Failed `/link` attempts since `$2`, of the tenant or of one contact (`$3`), by
/// `event_by_kind` (migration 0014).
pub(super) const LINK_FAILURES: &str = "SELECT COUNT(*) AS n FROM event
     WHERE tenant_id = $1 AND kind = 'contact.link_failed' AND created_at > $2
       AND ($3 IS NULL OR subject = $3)";

impl Store {
    /// Marks a contact's identity on a channel (un)reachable, e.g. after they blocked the bot.
    pub async fn set_reachability(
        &self,
        channel: &Channel,
        external_id: &str,
        reachable: bool,
        reason: &str,
        at: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        // The provider's time of the change (ms), or ours when it gives none.
        let at = at.map_or(now, |s| s.saturating_mul(1000));
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE contact_identity SET unreachable_at = $1, unreachable_reason = $2,
                    reachability_at = $5
             WHERE channel_id = $3 AND external_id = $4
               AND (reachability_at IS NULL OR reachability_at <= $5)",
        )
        .bind((!reachable).then_some(now))
        .bind((!reachable).then_some(reason))
        .bind(&channel.id)
        .bind(external_id)
        .bind(at)
        .execute(&mut *w.tx)
        .await?;
        let detail =
            serde_json::json!({ "external_id": external_id, "reachable": reachable, "reason": reason })
                .to_string();
        super::channels::record_channel_event(&mut w, channel, "reachability", &detail).await?;
        w.commit().await
    }

    /// Opts the conversation's contact out of (or back into) proactive messages, on every channel.
    pub async fn set_opt_out(
        &self,
        conversation_id: &str,
        opted_out: bool,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE contact SET opted_out_at = $1
             WHERE id = (SELECT contact_id FROM conversation WHERE id = $2)
             RETURNING id, tenant_id",
        )
        .bind(opted_out.then_some(now))
        .bind(conversation_id)
        .fetch_optional(&mut *w.tx)
        .await?;
        if let Some(row) = row {
            let tenant: String = row.try_get("tenant_id")?;
            let contact: String = row.try_get("id")?;
            let kind = if opted_out {
                "contact.opt_out"
            } else {
                "contact.opt_in"
            };
            record_event(&mut w.tx, Some(&tenant), kind, Some(&contact), "{}").await?;
            if opted_out {
                // Nothing proactive from now on: programs stop and every pending fire goes.
                super::programs::stop_contact_enrollments(&mut w, &contact, "opted_out", now)
                    .await?;
            }
        }
        w.commit().await
    }

    /// Sets a conversation's status (`bot`, `human`, `closed`). `false` if it is not the
    /// tenant's (or a closed one would be reopened: a closed conversation stays closed).
    pub async fn set_conversation_status(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        status: &str,
        actor: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE conversation SET status = $1, updated_at = $2,
                    assignee = CASE WHEN $1 = 'bot' THEN NULL ELSE assignee END,
                    handed_off_at = CASE WHEN $1 = 'human' THEN COALESCE(handed_off_at, $2)
                                         WHEN $1 = 'bot' THEN NULL ELSE handed_off_at END
             WHERE id = $3 AND tenant_id = $4 AND (status <> 'closed' OR $1 = 'closed')",
        )
        .bind(status)
        .bind(now)
        .bind(conversation_id)
        .bind(tenant_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
            > 0;
        if changed {
            let detail = serde_json::json!({ "status": status, "by": actor }).to_string();
            record_event(
                &mut w.tx,
                Some(tenant_id),
                "conversation.status",
                Some(conversation_id),
                &detail,
            )
            .await?;
        }
        w.commit().await?;
        Ok(changed)
    }

    /// A fresh one-time code for the conversation's contact to link another channel with.
    pub async fn create_link_code(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<String, sqlx::Error> {
        let now = now_ms();
        for _ in 0..5 {
            let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
            let mut w = self.begin_write().await?;
            sqlx::query("DELETE FROM link_code WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *w.tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO link_code (tenant_id, code, contact_id, expires_at)
                 SELECT $1, $2, contact_id, $3 FROM conversation WHERE id = $4 AND tenant_id = $1
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant_id)
            .bind(&code)
            .bind(now + LINK_CODE_TTL_MS)
            .bind(conversation_id)
            .execute(&mut *w.tx)
            .await?;
            w.commit().await?;
            if inserted.rows_affected() == 1 {
                return Ok(code);
            }
        }
        Err(sqlx::Error::Protocol(
            "no free link code after 5 tries".into(),
        ))
    }

    /// Redeems a link code from another identity: that identity's contact is merged into the
    /// code's contact — identities, conversations, enrolments, flags and tickets move over, so
    /// the history is one. The stricter opt-out (and a block) wins.
    pub async fn redeem_link_code(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        code: &str,
    ) -> Result<LinkOutcome, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let source: String =
            sqlx::query("SELECT contact_id FROM conversation WHERE id = $1 AND tenant_id = $2")
                .bind(conversation_id)
                .bind(tenant_id)
                .fetch_one(&mut *w.tx)
                .await?
                .try_get("contact_id")?;
        // Guessing codes is bounded: per contact and per tenant, wrong codes in the last hour.
        let hour_ago = now - 60 * 60 * 1000;
        let failures = |subject: Option<String>| {
            sqlx::query(LINK_FAILURES)
                .bind(tenant_id)
                .bind(hour_ago)
                .bind(subject)
        };
        let by_contact: i64 = failures(Some(source.clone()))
            .fetch_one(&mut *w.tx)
            .await?
            .try_get("n")?;
        let by_tenant: i64 = failures(None).fetch_one(&mut *w.tx).await?.try_get("n")?;
        if by_contact >= MAX_FAILED_LINKS_PER_CONTACT || by_tenant >= MAX_FAILED_LINKS_PER_TENANT {
            return Ok(LinkOutcome::TooManyAttempts);
        }
        let Some(row) = sqlx::query(
            "DELETE FROM link_code WHERE tenant_id = $1 AND code = $2 AND expires_at > $3
             RETURNING contact_id",
        )
        .bind(tenant_id)
        .bind(code)
        .bind(now)
        .fetch_optional(&mut *w.tx)
        .await?
        else {
            record_event(
                &mut w.tx,
                Some(tenant_id),
                "contact.link_failed",
                Some(&source),
                "{}",
            )
            .await?;
            w.commit().await?;
            return Ok(LinkOutcome::Invalid);
        };
        let target: String = row.try_get("contact_id")?;
        let source: String =
            sqlx::query("SELECT contact_id FROM conversation WHERE id = $1 AND tenant_id = $2")
                .bind(conversation_id)
                .bind(tenant_id)
                .fetch_one(&mut *w.tx)
                .await?
                .try_get("contact_id")?;
        if source == target {
            w.commit().await?;
            return Ok(LinkOutcome::AlreadyLinked);
        }
        for sql in MERGE_MOVES {
            sqlx::query(sql)
                .bind(&target)
                .bind(&source)
                .execute(&mut *w.tx)
                .await?;
        }
        sqlx::query(
            "UPDATE contact SET opted_out_at = COALESCE(opted_out_at,
                 (SELECT opted_out_at FROM contact WHERE id = $2)),
                 blocked_at = COALESCE(blocked_at,
                 (SELECT blocked_at FROM contact WHERE id = $2))
             WHERE id = $1",
        )
        .bind(&target)
        .bind(&source)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query("DELETE FROM contact WHERE id = $1")
            .bind(&source)
            .execute(&mut *w.tx)
            .await?;
        let detail = serde_json::json!({ "merged": source }).to_string();
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "contact.linked",
            Some(&target),
            &detail,
        )
        .await?;
        w.commit().await?;
        Ok(LinkOutcome::Linked { contact_id: target })
    }

    /// A tenant's message's channel id and attachments (JSON); `None` if not the tenant's.
    pub async fn message_attachments(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<(String, String)>, sqlx::Error> {
        sqlx::query("SELECT channel_id, attachments FROM message WHERE id = $1 AND tenant_id = $2")
            .bind(message_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Ok((r.try_get("channel_id")?, r.try_get("attachments")?)))
            .transpose()
    }

    /// The kind of a tenant's conversation's channel; `None` if no such conversation.
    pub async fn conversation_channel_kind(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Option<switchboard_channel::ChannelKind>, sqlx::Error> {
        Ok(sqlx::query(
            "SELECT ch.kind FROM conversation c JOIN channel ch ON ch.id = c.channel_id
             WHERE c.id = $1 AND c.tenant_id = $2",
        )
        .bind(conversation_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get::<String, _>("kind"))
        .transpose()?
        .and_then(|k| switchboard_channel::ChannelKind::parse(&k)))
    }

    /// A tenant's contact with its identities; `None` if not the tenant's.
    pub async fn contact(
        &self,
        tenant_id: &str,
        contact_id: &str,
    ) -> Result<Option<ContactView>, sqlx::Error> {
        let Some(row) = sqlx::query(
            "SELECT id, display_name, opted_out_at FROM contact WHERE id = $1 AND tenant_id = $2",
        )
        .bind(contact_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let identities = sqlx::query(
            "SELECT ci.channel_id, ch.kind, ci.external_id, ci.unreachable_reason
             FROM contact_identity ci JOIN channel ch ON ch.id = ci.channel_id
             WHERE ci.contact_id = $1 ORDER BY ci.created_at, ci.id",
        )
        .bind(contact_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(IdentityView {
                channel_id: r.try_get("channel_id")?,
                kind: r.try_get("kind")?,
                external_id: r.try_get("external_id")?,
                unreachable_reason: r.try_get("unreachable_reason")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(ContactView {
            id: row.try_get("id")?,
            display_name: row.try_get("display_name")?,
            opted_out: row.try_get::<Option<i64>, _>("opted_out_at")?.is_some(),
            identities,
        }))
    }

    /// A contact's messages on every channel, oldest first (one history).
    pub async fn contact_history(
        &self,
        tenant_id: &str,
        contact_id: &str,
        limit: i64,
    ) -> Result<Vec<HistoryItem>, sqlx::Error> {
        sqlx::query(concat!(
            "SELECT m.id, m.seq, m.direction, m.author, m.kind, m.text, ",
            message_status!("m"),
            ", m.created_at,
                    m.citations, m.attachments, m.grounding, m.conversation_id, ch.kind AS channel
             FROM message m
             JOIN conversation c ON c.id = m.conversation_id
             JOIN channel ch ON ch.id = m.channel_id
             WHERE c.contact_id = $1 AND c.tenant_id = $2
             ORDER BY m.created_at, m.conversation_id, m.seq LIMIT $3"
        ))
        .bind(contact_id)
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(HistoryItem {
                conversation_id: r.try_get("conversation_id")?,
                channel: r.try_get("channel")?,
                message: message_from_row(r)?,
            })
        })
        .collect()
    }

    /// Queues a message written by a person (an agent or moderator) in a conversation: stored
    /// and put in the outbox in one transaction, like a bot reply. `content` is the contract's
    /// `Content` as JSON.
    pub async fn post_agent_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        text: &str,
        content: Option<&str>,
    ) -> Result<MessageView, AgentMessageError> {
        self.post_message_as(tenant_id, conversation_id, text, content, "agent")
            .await
    }

    /// A message by `author` (`agent`, or `bot` for an answer a moderator released) queued in a
    /// conversation. A person's message is the first response of the conversation's open ticket.
    pub async fn post_message_as(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        text: &str,
        content: Option<&str>,
        author: &str,
    ) -> Result<MessageView, AgentMessageError> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let Some(row) = sqlx::query(
            "UPDATE conversation SET last_seq = last_seq + 1, updated_at = $1
             WHERE id = $2 AND tenant_id = $3 AND status <> 'closed'
             RETURNING last_seq, channel_id, contact_id",
        )
        .bind(now)
        .bind(conversation_id)
        .bind(tenant_id)
        .fetch_optional(&mut *w.tx)
        .await?
        else {
            let exists =
                sqlx::query("SELECT id FROM conversation WHERE id = $1 AND tenant_id = $2")
                    .bind(conversation_id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *w.tx)
                    .await?;
            return Err(if exists.is_some() {
                AgentMessageError::Closed
            } else {
                AgentMessageError::NotFound
            });
        };
        let seq: i64 = row.try_get("last_seq")?;
        let channel_id: String = row.try_get("channel_id")?;
        let contact_id: String = row.try_get("contact_id")?;
        let recipient: String = sqlx::query(
            "SELECT external_id FROM contact_identity WHERE contact_id = $1 AND channel_id = $2",
        )
        .bind(&contact_id)
        .bind(&channel_id)
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("external_id")?;
        let id = super::messages::insert_outbound(
            &mut w,
            super::messages::Outbound {
                tenant_id,
                conversation_id,
                channel_id: &channel_id,
                seq,
                author,
                text,
                reply_to: None,
                recipient: &recipient,
                content,
                created_at: now,
                send_at: now,
            },
        )
        .await?;
        let view = sqlx::query(concat!(
            "SELECT id, seq, direction, author, kind, text, ",
            message_status!("message"),
            ", created_at, citations, attachments, grounding
             FROM message WHERE id = $1"
        ))
        .bind(&id)
        .fetch_one(&mut *w.tx)
        .await
        .and_then(|r| message_from_row(&r))?;
        if author == "agent" {
            super::moderation::ticket_answered(&mut w, conversation_id, now).await?;
        }
        w.commit().await?;
        Ok(view)
    }
}
