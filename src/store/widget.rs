//! The web widget's side of the store: a tenant's widget channel, settings and public key, and
//! the visitor's conversation as the widget reads it (by seq).

use sqlx::Row;
use switchboard_channel::ChannelKind;
use switchboard_channel_widget::WidgetSettings;

use super::channels::Channel;
use super::messages::rfc3339;
use super::tenants::{generate_key, insert_key};
use super::{Store, now_ms};
use crate::core::Role;

/// SQLite: widget acknowledgements, `$1` a JSON list of `[conversation, seq]` (see
/// [`Store::widget_acks_in`]).
pub(super) const WIDGET_ACKS: &str = "UPDATE message SET status = 'delivered'
     FROM (SELECT value ->> 0 AS c, value ->> 1 AS s FROM jsonb_each($1)) AS v
     WHERE message.conversation_id = v.c AND message.seq <= v.s
       AND message.direction = 'outbound' AND message.status IN ('queued', 'sent')";

/// A stored message as the widget shows it.
#[derive(Debug, Clone)]
pub struct WidgetMessage {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub direction: String,
    pub author: String,
    pub text: String,
    pub created_at: String,
    pub provider_id: Option<String>,
    pub reply_to: Option<String>,
    pub citations: serde_json::Value,
}

/// A widget visitor's newest conversation, of any status: its identity by its key, then its
/// conversations by `conversation_by_contact` (migration 0014).
pub(super) const WIDGET_CONVERSATION: &str = "SELECT c.id, c.last_seq FROM conversation c
     JOIN contact_identity ci ON ci.contact_id = c.contact_id AND ci.channel_id = c.channel_id
     WHERE ci.channel_id = $1 AND ci.external_id = $2
     ORDER BY c.created_at DESC, c.id DESC LIMIT 1";

impl Store {
    /// The tenant's `widget` channel, created on first use.
    pub async fn widget_channel(&self, tenant_id: &str) -> Result<Channel, sqlx::Error> {
        for _ in 0..3 {
            let found =
                sqlx::query("SELECT id FROM channel WHERE tenant_id = $1 AND kind = 'widget'")
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(row) = found {
                return self.channel_by_id(&row.try_get::<String, _>("id")?).await;
            }
            // Two first visitors at once: one insert wins the unique index, the other looks again.
            match self
                .upsert_channel(tenant_id, ChannelKind::Widget, &serde_json::json!({}), None)
                .await
            {
                Ok(channel) => return Ok(channel),
                Err(e) => tracing::debug!(error = %e, "widget channel created concurrently"),
            }
        }
        Err(sqlx::Error::RowNotFound)
    }

    /// The tenant's widget settings (defaults where none are stored).
    pub async fn widget_settings(&self, tenant_id: &str) -> Result<WidgetSettings, sqlx::Error> {
        let settings = self.tenant_settings(tenant_id).await?;
        Ok(WidgetSettings::from_stored(settings.get("widget")))
    }

    /// Replaces the tenant's widget settings (already validated).
    pub async fn set_widget_settings(
        &self,
        tenant_id: &str,
        widget: &WidgetSettings,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let current: Option<String> = sqlx::query("SELECT settings FROM tenant WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *w.tx)
            .await?
            .map(|r| r.try_get("settings"))
            .transpose()?;
        let mut settings: serde_json::Value = current
            .and_then(|s| serde_json::from_str(&s).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        settings["widget"] =
            serde_json::to_value(widget).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query("UPDATE tenant SET settings = $1 WHERE id = $2")
            .bind(settings.to_string())
            .bind(tenant_id)
            .execute(&mut *w.tx)
            .await?;
        super::tenants::record_event(
            &mut w.tx,
            Some(tenant_id),
            "widget.settings_changed",
            None,
            "{}",
        )
        .await?;
        w.commit().await
    }

    async fn tenant_settings(&self, tenant_id: &str) -> Result<serde_json::Value, sqlx::Error> {
        let text: Option<String> = sqlx::query("SELECT settings FROM tenant WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("settings"))
            .transpose()?;
        Ok(text
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| serde_json::json!({})))
    }

    /// A widget key to embed for the tenant: the newest one whose clear text is kept, or a new
    /// one (tenants made before keys were kept get one on first ask).
    pub async fn public_widget_key(&self, tenant_id: &str) -> Result<String, sqlx::Error> {
        let found: Option<String> = sqlx::query(
            "SELECT public_key FROM api_key
             WHERE tenant_id = $1 AND role = 'widget' AND revoked_at IS NULL AND public_key IS NOT NULL
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get("public_key"))
        .transpose()?;
        if let Some(key) = found {
            return Ok(key);
        }
        let key = generate_key(Role::Widget);
        let mut w = self.begin_write().await?;
        insert_key(&mut w.tx, tenant_id, &key, Role::Widget, now_ms()).await?;
        w.commit().await?;
        Ok(key)
    }

    /// The visitor's current conversation on the widget channel and its newest seq.
    pub async fn widget_conversation(
        &self,
        channel_id: &str,
        visitor_id: &str,
    ) -> Result<Option<(String, i64)>, sqlx::Error> {
        sqlx::query(WIDGET_CONVERSATION)
            .bind(channel_id)
            .bind(visitor_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Ok((r.try_get("id")?, r.try_get("last_seq")?)))
            .transpose()
    }

    /// Messages of a conversation after `after_seq`, in seq order, at most `limit`.
    pub async fn widget_messages(
        &self,
        conversation_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<WidgetMessage>, sqlx::Error> {
        sqlx::query(
            "SELECT id, conversation_id, seq, direction, author, text, created_at, provider_id,
                    reply_to, citations
             FROM message WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let citations: String = r.try_get("citations")?;
            Ok(WidgetMessage {
                id: r.try_get("id")?,
                conversation_id: r.try_get("conversation_id")?,
                seq: r.try_get("seq")?,
                direction: r.try_get("direction")?,
                author: r.try_get("author")?,
                text: r.try_get("text")?,
                created_at: rfc3339(r.try_get("created_at")?),
                provider_id: r.try_get("provider_id")?,
                reply_to: r.try_get("reply_to")?,
                citations: serde_json::from_str(&citations)
                    .unwrap_or_else(|_| serde_json::json!([])),
            })
        })
        .collect()
    }

    /// The visitor holds every message up to `seq`: the bot's and agents' become `delivered`.
    ///
    /// On SQLite the write joins the writer's current tick (see [`super::tick`]): one statement
    /// there for every acknowledgement of the tick, instead of a transaction (and a commit with
    /// its `fsync`) of its own for each. Elsewhere a read first: acknowledgements of what is
    /// already delivered cost no write transaction.
    pub async fn widget_ack(&self, conversation_id: &str, seq: i64) -> Result<(), sqlx::Error> {
        if let Some(tick) = self.tick() {
            return tick.ack(conversation_id.to_owned(), seq).await;
        }
        let pending = sqlx::query(
            "SELECT 1 FROM message
             WHERE conversation_id = $1 AND direction = 'outbound' AND seq <= $2
               AND status IN ('queued', 'sent')
             LIMIT 1",
        )
        .bind(conversation_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        if pending.is_none() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        self.widget_acks_in(&mut w, &[(conversation_id.to_owned(), seq)])
            .await?;
        w.commit().await
    }

    /// Widget acknowledgements `(conversation, seq)` in `w`: on SQLite one statement for a tick's
    /// every acknowledgement (its SQL the same for any number: see `bulk::json_rows`), each
    /// finding its conversation's messages by the `(conversation_id, seq)` key.
    pub(super) async fn widget_acks_in(
        &self,
        w: &mut super::WriteTx,
        acks: &[(String, i64)],
    ) -> Result<(), sqlx::Error> {
        if self.backend == super::Backend::Postgres {
            // (One per transaction there: PostgreSQL has no tick.)
            for (conversation_id, seq) in acks {
                sqlx::query(
                    "UPDATE message SET status = 'delivered'
                     WHERE conversation_id = $1 AND direction = 'outbound' AND seq <= $2
                       AND status IN ('queued', 'sent')",
                )
                .bind(conversation_id)
                .bind(seq)
                .execute(&mut *w.tx)
                .await?;
            }
            return Ok(());
        }
        sqlx::query(WIDGET_ACKS)
            .bind(super::bulk::json_rows(acks))
            .execute(&mut *w.tx)
            .await?;
        Ok(())
    }
}
