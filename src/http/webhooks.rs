//! Provider webhooks: `/webhooks/{kind}/{channel_id}`.
//!
//! Verify on the raw bytes, parse, store every message (deduplicated on the provider's id), and
//! only then answer 2xx — the provider redelivers anything we did not acknowledge. A wrong
//! signature stores nothing (401); a body we cannot read is a 400; an unknown channel, or a
//! channel of another kind than the path says, is a 404.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::{ChannelKind, InboundError};
use switchboard_channel_telegram::{BotIdentity, TelegramConfig};
use switchboard_channel_whatsapp::{
    WhatsappConfig, inbound::SIGNATURE_HEADER, parse_webhook_for, verify_signature,
    verify_subscription,
};

use super::AppState;
use super::error::ApiError;
use crate::store::channels::Channel;

/// The channel a webhook path names, if it exists and is of that kind.
async fn webhook_channel(
    state: &AppState,
    kind: &str,
    channel_id: &str,
) -> Result<Channel, ApiError> {
    let kind = ChannelKind::parse(kind).ok_or_else(|| ApiError::not_found("channel"))?;
    match state.store.channel_by_id(channel_id).await {
        Ok(channel) if channel.kind == kind && !channel.removed => Ok(channel),
        Ok(_) | Err(sqlx::Error::RowNotFound) => Err(ApiError::not_found("channel")),
        Err(e) => Err(e.into()),
    }
}

fn refused(e: InboundError) -> ApiError {
    match e {
        InboundError::Unauthorized(m) => ApiError::unauthorized("invalid_signature", m),
        InboundError::Malformed(m) => ApiError::bad_request("invalid_payload", m),
    }
}

/// A stored channel config that no longer parses is our fault, not the provider's.
fn whatsapp_config(channel: &Channel) -> Result<WhatsappConfig, ApiError> {
    WhatsappConfig::parse(&channel.config)
        .map_err(|e| ApiError::internal(format!("whatsapp channel {}: {e}", channel.id)))
}

#[derive(Debug, Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// `GET`: Meta's subscription handshake — echo `hub.challenge` iff the verify token matches.
pub async fn verify(
    State(state): State<AppState>,
    Path((kind, channel_id)): Path<(String, String)>,
    query: Result<Query<Handshake>, QueryRejection>,
) -> Result<Response, ApiError> {
    let channel = webhook_channel(&state, &kind, &channel_id).await?;
    let Query(q) = query?;
    match channel.kind {
        ChannelKind::Whatsapp => {
            let config = whatsapp_config(&channel)?;
            let challenge = verify_subscription(
                q.mode.as_deref(),
                q.token.as_deref(),
                q.challenge.as_deref(),
                &config.verify_token,
            )
            .ok_or_else(|| ApiError::forbidden("hub.verify_token does not match"))?;
            Ok((StatusCode::OK, challenge).into_response())
        }
        _ => Err(ApiError::not_found("channel")),
    }
}

/// `POST`: provider events.
pub async fn receive(
    State(state): State<AppState>,
    Path((kind, channel_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = webhook_channel(&state, &kind, &channel_id).await?;
    let body = body?;
    let events = match channel.kind {
        ChannelKind::Whatsapp => {
            let config = whatsapp_config(&channel)?;
            let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
            verify_signature(&config.app_secret, signature, &body).map_err(refused)?;
            parse_webhook_for(&body, Some(&config.phone_number_id)).map_err(refused)?
        }
        ChannelKind::Telegram => {
            let config = TelegramConfig::parse(&channel.config)
                .map_err(|e| ApiError::internal(format!("telegram channel {}: {e}", channel.id)))?;
            // A polling channel takes no webhook.
            let secret = config
                .webhook_secret
                .as_ref()
                .filter(|_| config.mode == switchboard_channel_telegram::Mode::Webhook)
                .ok_or_else(|| ApiError::not_found("channel"))?;
            let token = headers
                .get(switchboard_channel_telegram::inbound::SECRET_HEADER)
                .and_then(|v| v.to_str().ok());
            switchboard_channel_telegram::verify_secret(secret, token).map_err(refused)?;
            let bot = BotIdentity {
                id: config.bot_id(),
                username: config.bot_username.as_deref(),
            };
            switchboard_channel_telegram::parse_webhook(&body, bot).map_err(refused)?
        }
        _ => return Err(ApiError::not_found("channel")),
    };
    let counts = state.ingest.apply(&channel, events).await?;
    Ok(Json(json!(counts)))
}
