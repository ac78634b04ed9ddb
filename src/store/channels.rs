//! Connected channels and their per-tenant configuration (credentials included, as JSON).

use sqlx::Row;
use sqlx::any::AnyRow;
use switchboard_channel::ChannelKind;

use super::{Store, new_id, now_ms, tenants::record_event};

/// A channel row. `config` holds credentials: never log it.
#[derive(Clone)]
pub struct Channel {
    pub id: String,
    pub tenant_id: String,
    pub kind: ChannelKind,
    pub config: serde_json::Value,
    pub created_at: i64,
    /// Removed by the tenant (`DELETE /v1/channels/{id}`): no webhooks, no sends.
    pub removed: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn channel_from_row(
    row: &AnyRow,
    sealer: Option<&super::sealing::Sealer>,
) -> Result<Channel, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let config: String = row.try_get("config")?;
    let id: String = row.try_get("id")?;
    let mut config: serde_json::Value =
        serde_json::from_str(&config).map_err(|e| sqlx::Error::Decode(e.into()))?;
    if let Some(sealer) = sealer {
        sealer
            .open_config(&id, &mut config)
            .map_err(|e| sqlx::Error::Decode(e.into()))?;
    }
    Ok(Channel {
        id,
        tenant_id: row.try_get("tenant_id")?,
        kind: ChannelKind::parse(&kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown channel kind {kind:?} in database").into())
        })?,
        config,
        created_at: row.try_get("created_at")?,
        removed: row.try_get::<Option<i64>, _>("removed_at")?.is_some(),
    })
}

/// `SELECT <channel columns> FROM channel <rest>`, as one literal.
macro_rules! select_channel {
    ($rest:literal) => {
        concat!(
            "SELECT id, tenant_id, kind, config, created_at, removed_at FROM channel ",
            $rest
        )
    };
}

impl Store {
    /// The tenant's implicit `api` channel (created with the tenant).
    pub async fn api_channel(&self, tenant_id: &str) -> Result<Channel, sqlx::Error> {
        let cache_key = format!("api:{tenant_id}");
        if let Some(channel) = self.channels.get(&cache_key) {
            return Ok(channel);
        }
        let row = sqlx::query(select_channel!("WHERE tenant_id = $1 AND kind = 'api'"))
            .bind(tenant_id)
            .fetch_one(&self.pool)
            .await?;
        let channel = channel_from_row(&row, self.sealer.as_deref())?;
        self.channels.insert(cache_key, channel.clone());
        Ok(channel)
    }

    /// Any channel by id (for workers, which act for every tenant). Cached briefly.
    pub async fn channel_by_id(&self, channel_id: &str) -> Result<Channel, sqlx::Error> {
        if let Some(channel) = self.channels.get(channel_id) {
            return Ok(channel);
        }
        let row = sqlx::query(select_channel!("WHERE id = $1"))
            .bind(channel_id)
            .fetch_one(&self.pool)
            .await?;
        let channel = channel_from_row(&row, self.sealer.as_deref())?;
        self.channels.insert(channel_id.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A channel of this tenant; `None` for another tenant's channel, as for a missing one.
    pub async fn channel(
        &self,
        tenant_id: &str,
        channel_id: &str,
    ) -> Result<Option<Channel>, sqlx::Error> {
        sqlx::query(select_channel!(
            "WHERE tenant_id = $1 AND id = $2 AND removed_at IS NULL"
        ))
        .bind(tenant_id)
        .bind(channel_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(|r| channel_from_row(r, self.sealer.as_deref()))
        .transpose()
    }

    /// Every channel of one kind, all tenants (to start their background work).
    pub async fn channels_of_kind(&self, kind: ChannelKind) -> Result<Vec<Channel>, sqlx::Error> {
        sqlx::query(select_channel!(
            "WHERE kind = $1 AND removed_at IS NULL ORDER BY created_at"
        ))
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| channel_from_row(r, self.sealer.as_deref()))
        .collect()
    }

    pub async fn channels(&self, tenant_id: &str) -> Result<Vec<Channel>, sqlx::Error> {
        sqlx::query(select_channel!(
            "WHERE tenant_id = $1 AND removed_at IS NULL ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| channel_from_row(r, self.sealer.as_deref()))
        .collect()
    }

    /// Connects a channel. For the single-instance kinds (`api`, `widget`) this replaces the
    /// existing configuration and keeps the channel's id, so conversations stay attached.
    ///
    /// `replaces`: an existing channel of the tenant that this one reconnects (the same bot or
    /// number with new settings); it keeps its id, webhook URL and conversations.
    pub async fn upsert_channel(
        &self,
        tenant_id: &str,
        kind: ChannelKind,
        config: &serde_json::Value,
        replaces: Option<&str>,
    ) -> Result<Channel, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        // The id first: sealed credentials are bound to it.
        let existing: Option<String> = match (kind, replaces) {
            (_, Some(id)) => {
                sqlx::query("SELECT id FROM channel WHERE tenant_id = $1 AND kind = $2 AND id = $3 AND removed_at IS NULL")
                    .bind(tenant_id)
                    .bind(kind.as_str())
                    .bind(id)
                    .fetch_optional(&mut *w.tx)
                    .await?
                    .map(|r| r.try_get("id"))
                    .transpose()?
            }
            (ChannelKind::Api | ChannelKind::Widget, None) => {
                sqlx::query("SELECT id FROM channel WHERE tenant_id = $1 AND kind = $2")
                    .bind(tenant_id)
                    .bind(kind.as_str())
                    .fetch_optional(&mut *w.tx)
                    .await?
                    .map(|r| r.try_get("id"))
                    .transpose()?
            }
            _ => None,
        };
        let id = existing.clone().unwrap_or_else(new_id);
        let stored = match &self.sealer {
            Some(sealer) => sealer
                .seal_config(&id, config)
                .map_err(|e| sqlx::Error::Encode(e.into()))?,
            None => config.clone(),
        };
        let config_text = stored.to_string();
        if existing.is_some() {
            sqlx::query("UPDATE channel SET config = $1, updated_at = $2 WHERE id = $3")
                .bind(&config_text)
                .bind(now)
                .bind(&id)
                .execute(&mut *w.tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO channel (id, tenant_id, kind, config, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(&id)
            .bind(tenant_id)
            .bind(kind.as_str())
            .bind(&config_text)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        }
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "channel.connected",
            Some(&id),
            "{}",
        )
        .await?;
        w.commit().await?;
        self.channels.remove(&id);
        self.channels.remove(&format!("api:{tenant_id}"));
        Ok(Channel {
            id,
            tenant_id: tenant_id.to_owned(),
            kind,
            config: config.clone(),
            created_at: now,
            removed: false,
        })
    }

    /// Removes a tenant's channel: it takes no more webhooks and sends nothing; its history
    /// stays. `None` if the tenant has no such live channel. The implicit `api` and `widget`
    /// channels cannot be removed (the caller refuses them).
    pub async fn remove_channel(
        &self,
        tenant_id: &str,
        channel_id: &str,
    ) -> Result<Option<Channel>, sqlx::Error> {
        let Some(channel) = self.channel(tenant_id, channel_id).await? else {
            return Ok(None);
        };
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE channel SET removed_at = $1, updated_at = $1 WHERE id = $2 AND removed_at IS NULL")
            .bind(now_ms())
            .bind(channel_id)
            .execute(&mut *w.tx)
            .await?;
        record_channel_event(&mut w, &channel, "removed", "{}").await?;
        w.commit().await?;
        self.channels.remove(channel_id);
        Ok(Some(channel))
    }

    /// Records provider news that is not a message (account, template or call updates) in the
    /// audit log, so it is visible; the detail is cut to 4 KiB.
    pub async fn record_notice(
        &self,
        channel: &Channel,
        topic: &str,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        let mut detail = detail.to_owned();
        if detail.len() > 4096 {
            let mut cut = 4096;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let detail = serde_json::json!({ "topic": topic, "detail": detail }).to_string();
        let mut w = self.begin_write().await?;
        record_channel_event(&mut w, channel, "notice", &detail).await?;
        w.commit().await
    }
}

/// Audit-log entry `<kind>.<what>` about a channel, in the caller's transaction.
pub(super) async fn record_channel_event(
    w: &mut super::WriteTx,
    channel: &Channel,
    what: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let kind = format!("{}.{what}", channel.kind);
    record_event(
        &mut w.tx,
        Some(&channel.tenant_id),
        &kind,
        Some(&channel.id),
        detail,
    )
    .await
}
