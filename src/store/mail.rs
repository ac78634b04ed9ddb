//! What SMS and email add to the store: provider-signed one-time tokens, the original request
//! an email came in, email threads, and opt-outs a provider reports.

use sqlx::Row;

use super::channels::Channel;
use super::tenants::record_event;
use super::{Store, now_ms};
use crate::registry::{StoredOriginal, ThreadInfo};

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Most Message-IDs of a mail looked at to find its thread.
const MAX_REFERENCES: usize = 50;

/// How long a signed token is remembered: well past the providers' own freshness windows
/// (Mailgun's timestamps are refused after 15 minutes), after which a replay is refused as
/// stale anyway.
const TOKEN_KEEP_MS: i64 = 24 * 3_600_000;

/// A channel's signed tokens past the time they could be accepted again, by
/// `webhook_token_by_age` (migration 0014).
pub(super) const TOKENS_EXPIRE: &str =
    "DELETE FROM webhook_token WHERE channel_id = $1 AND seen_at < $2";

impl Store {
    /// Records a provider-signed one-time token with the hash of the body it came with. `false`
    /// when the token was seen before with another body: a replay.
    pub async fn claim_token(
        &self,
        channel_id: &str,
        token: &str,
        body_sha256: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        // Forgotten once they are too old to be accepted again.
        sqlx::query(TOKENS_EXPIRE)
            .bind(channel_id)
            .bind(now - TOKEN_KEEP_MS)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO webhook_token (channel_id, token, body_sha256, seen_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (channel_id, token) DO NOTHING",
        )
        .bind(channel_id)
        .bind(token)
        .bind(body_sha256)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        let seen: String = sqlx::query(
            "SELECT body_sha256 FROM webhook_token WHERE channel_id = $1 AND token = $2",
        )
        .bind(channel_id)
        .bind(token)
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("body_sha256")?;
        w.commit().await?;
        Ok(seen == body_sha256)
    }

    /// Keeps the request a message came in (once per provider id).
    pub async fn keep_original(
        &self,
        channel_id: &str,
        provider_id: &str,
        original: &StoredOriginal,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO inbound_original (channel_id, provider_id, content_type, body, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel_id, provider_id) DO NOTHING",
        )
        .bind(channel_id)
        .bind(provider_id)
        .bind(original.content_type.as_deref())
        .bind(original.body.clone())
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// The request a tenant's message came in, if it was kept.
    pub async fn original_of(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<StoredOriginal>, sqlx::Error> {
        sqlx::query(
            "SELECT o.content_type, o.body FROM message m
             JOIN inbound_original o ON o.channel_id = m.channel_id AND o.provider_id = m.provider_id
             WHERE m.id = $1 AND m.tenant_id = $2",
        )
        .bind(message_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| {
            Ok(StoredOriginal {
                content_type: r.try_get("content_type")?,
                body: r.try_get("body")?,
            })
        })
        .transpose()
    }

    /// The thread an email joins: the open conversation of this contact on this channel that one
    /// of `conversations` (read out of our Message-IDs and reply tokens) names, or that holds a
    /// mail whose Message-ID is in `references` (the contact answering their own earlier mail).
    /// `None`: a new thread.
    pub async fn email_thread(
        &self,
        channel_id: &str,
        external_id: &str,
        conversations: &[String],
        references: &[String],
    ) -> Result<Option<String>, sqlx::Error> {
        for conversation in conversations.iter().take(MAX_REFERENCES) {
            let row = sqlx::query(
                "SELECT c.thread FROM conversation c
                 JOIN contact_identity ci ON ci.contact_id = c.contact_id AND ci.channel_id = c.channel_id
                 WHERE c.id = $1 AND c.channel_id = $2 AND ci.external_id = $3
                   AND c.status <> 'closed'",
            )
            .bind(conversation)
            .bind(channel_id)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                return Ok(Some(row.try_get("thread")?));
            }
        }
        for reference in references.iter().take(MAX_REFERENCES) {
            let row = sqlx::query(
                "SELECT c.thread FROM message m
                 JOIN conversation c ON c.id = m.conversation_id
                 JOIN contact_identity ci ON ci.contact_id = c.contact_id AND ci.channel_id = c.channel_id
                 WHERE m.channel_id = $1 AND m.provider_id = $2 AND ci.external_id = $3
                   AND c.status <> 'closed'",
            )
            .bind(channel_id)
            .bind(reference)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                return Ok(Some(row.try_get("thread")?));
            }
        }
        Ok(None)
    }

    /// A conversation's email thread for a reply (subject, the contact's latest Message-IDs), and
    /// whether the message to send is proactive (a program's).
    pub async fn thread_info(
        &self,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<(ThreadInfo, bool), sqlx::Error> {
        let subject: Option<String> =
            sqlx::query("SELECT subject, thread FROM conversation WHERE id = $1")
                .bind(conversation_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("subject"))
                .transpose()?
                .flatten();
        let references: Vec<String> = sqlx::query(
            "SELECT provider_id FROM message
             WHERE conversation_id = $1 AND direction = 'inbound' AND provider_id IS NOT NULL
               AND kind NOT IN ('auto_reply', 'bounce', 'bulk', 'spam')
             ORDER BY seq DESC LIMIT 10",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("provider_id"))
        .collect::<Result<_, _>>()?;
        // A bot message that answers nothing is a program's (proactive) one.
        let proactive = sqlx::query(
            "SELECT 1 AS p FROM message WHERE id = $1 AND author = 'bot' AND reply_to IS NULL",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        Ok((
            ThreadInfo {
                subject,
                references,
            },
            proactive,
        ))
    }

    /// A provider says the contact on this channel opted out of (or back into) messages: the
    /// opt-out holds on every channel and for the scheduler, as `/stop` does.
    pub async fn set_subscription(
        &self,
        channel: &Channel,
        external_id: &str,
        subscribed: bool,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE contact SET opted_out_at = $1
             WHERE id = (SELECT contact_id FROM contact_identity
                         WHERE channel_id = $2 AND external_id = $3)
             RETURNING id",
        )
        .bind((!subscribed).then_some(now))
        .bind(&channel.id)
        .bind(external_id)
        .fetch_optional(&mut *w.tx)
        .await?;
        if let Some(row) = row {
            let contact: String = row.try_get("id")?;
            let kind = if subscribed {
                "contact.opt_in"
            } else {
                "contact.opt_out"
            };
            let detail = serde_json::json!({ "channel_id": channel.id, "reason": reason });
            record_event(
                &mut w.tx,
                Some(&channel.tenant_id),
                kind,
                Some(&contact),
                &detail.to_string(),
            )
            .await?;
            if !subscribed {
                super::programs::stop_contact_enrollments(&mut w, &contact, "opted_out", now)
                    .await?;
            }
        }
        w.commit().await
    }
}
