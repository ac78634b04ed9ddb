//! Channel connections and the delivery (outbox) view: dead letters and their retry.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::{ChannelKind, SendError};
use switchboard_channel_api::ApiChannelConfig;
use switchboard_channel_telegram::{Mode, TelegramConfig};
use switchboard_channel_whatsapp::WhatsappConfig;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::core::Role;

#[derive(Debug, Deserialize)]
struct ConnectRequest {
    kind: String,
    #[serde(default = "empty_object")]
    config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

pub async fn connect_channel(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: ConnectRequest = json_body(body, "invalid_channel")?;
    let kind = ChannelKind::parse(&request.kind).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_channel",
            format!("unknown channel kind {:?}", request.kind),
        )
    })?;
    let existing = state.store.channels(&principal.tenant_id).await?;
    let mut config = request.config;
    let mut replaces = None;
    let mut notes = serde_json::Map::new();
    match kind {
        ChannelKind::Api => {
            ApiChannelConfig::parse(&config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
        }
        ChannelKind::Whatsapp => {
            let parsed = WhatsappConfig::parse(&config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
            // The same number again: new settings for the existing channel.
            replaces = existing
                .iter()
                .filter(|c| c.kind == kind)
                .find(|c| {
                    WhatsappConfig::parse(&c.config)
                        .is_ok_and(|c| c.phone_number_id == parsed.phone_number_id)
                })
                .map(|c| c.id.clone());
        }
        ChannelKind::Telegram => {
            let mut parsed = TelegramConfig::parse(&config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
            // getMe proves the token and tells the bot's @username (groups address it by that).
            match state.channels.telegram().username(&parsed).await {
                Ok(name) => parsed.bot_username = name,
                Err(SendError::Permanent(reason)) => {
                    return Err(ApiError::bad_request(
                        "invalid_channel_config",
                        format!("Telegram refused the bot token: {reason}"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "getMe failed; group mentions are recognised once it works");
                    notes.insert("get_me_error".into(), e.to_string().into());
                }
            }
            replaces = existing
                .iter()
                .filter(|c| c.kind == kind)
                .find(|c| {
                    TelegramConfig::parse(&c.config).is_ok_and(|c| c.bot_id() == parsed.bot_id())
                })
                .map(|c| c.id.clone());
            config = serde_json::to_value(&parsed).map_err(ApiError::internal)?;
        }
        other => {
            return Err(ApiError::bad_request(
                "channel_unavailable",
                format!("the {other} channel is not available in this build"),
            ));
        }
    }
    let channel = state
        .store
        .upsert_channel(&principal.tenant_id, kind, &config, replaces.as_deref())
        .await?;
    let webhook_url = webhook_url(&state, kind, &channel.id);
    if kind == ChannelKind::Telegram
        && let Ok(parsed) = TelegramConfig::parse(&channel.config)
    {
        match parsed.mode {
            // Register the webhook with Telegram when we know our public address.
            Mode::Webhook => match (&state.config.public_url, &webhook_url) {
                (Some(_), Some(url)) => {
                    match state.channels.telegram().set_webhook(&parsed, url).await {
                        Ok(()) => {
                            notes.insert("webhook_registered".into(), true.into());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "setWebhook failed");
                            notes.insert("webhook_registered".into(), false.into());
                            notes.insert("webhook_error".into(), e.to_string().into());
                        }
                    }
                }
                _ => {
                    notes.insert("webhook_registered".into(), false.into());
                    notes.insert(
                        "webhook_error".into(),
                        "SWITCHBOARD_PUBLIC_URL is not set: register webhook_url with setWebhook yourself, or use mode \"polling\"".into(),
                    );
                }
            },
            // Telegram refuses getUpdates while a webhook is set: remove it now (the poller
            // does too, but it may run on another process).
            Mode::Polling => {
                if let Err(e) = state.channels.telegram().delete_webhook(&parsed).await {
                    tracing::warn!(error = %e, "deleteWebhook failed; the poller retries it");
                }
            }
        }
        // Starts, restarts (new settings) or stops this channel's poller.
        if state.config.workers {
            state
                .pollers
                .ensure(&state.ingest, &state.channels, &channel);
        }
    }
    let mut body = json!({ "channel_id": channel.id, "kind": kind, "webhook_url": webhook_url });
    if let Some(object) = body.as_object_mut() {
        object.extend(notes);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

fn webhook_url(state: &AppState, kind: ChannelKind, channel_id: &str) -> Option<String> {
    match kind {
        ChannelKind::Api | ChannelKind::Widget => None,
        _ => {
            let base = state
                .config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", state.config.listen));
            Some(format!(
                "{}/webhooks/{kind}/{channel_id}",
                base.trim_end_matches('/')
            ))
        }
    }
}

pub async fn list_channels(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let channels: Vec<_> = state
        .store
        .channels(&principal.tenant_id)
        .await?
        .into_iter()
        // Credentials stay in the database: only kind and id are listed.
        .map(|c| json!({ "channel_id": c.id, "kind": c.kind, "webhook_url": webhook_url(&state, c.kind, &c.id) }))
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<i64>,
}

pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let Query(q) = q?;
    let status = q.status.unwrap_or_else(|| "dead".into());
    if !matches!(status.as_str(), "pending" | "delivered" | "dead") {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "status must be pending, delivered or dead",
        ));
    }
    let deliveries = state
        .store
        .deliveries(
            &principal.tenant_id,
            &status,
            q.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await?;
    Ok(Json(json!({ "deliveries": deliveries })))
}

pub async fn retry_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    if !state.store.requeue_dead(&principal.tenant_id, &id).await? {
        return Err(ApiError::not_found("dead delivery"));
    }
    state.router.wake_outbox();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "delivery_id": id, "status": "pending" })),
    ))
}
