//! Provider webhooks: `/webhooks/{kind}/{channel_id}`.
//!
//! Verify on the raw bytes, parse, store every message (deduplicated on the provider's id), and
//! only then answer 2xx — the provider redelivers anything we did not acknowledge. A wrong
//! signature stores nothing (401); a body we cannot read is a 400; an unknown channel, or a
//! channel of another kind than the path says, is a 404.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::ChannelKind;

use super::AppState;
use super::error::ApiError;
use crate::registry::{Reply, WebhookRequest};
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

#[derive(Debug, Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// `GET`: a subscription handshake (Meta's: echo `hub.challenge` iff the verify token matches).
pub async fn verify(
    State(state): State<AppState>,
    Path((kind, channel_id)): Path<(String, String)>,
    query: Result<Query<Handshake>, QueryRejection>,
) -> Result<Response, ApiError> {
    let channel = webhook_channel(&state, &kind, &channel_id).await?;
    let Query(q) = query?;
    let adapter = state
        .channels
        .adapter(channel.kind)
        .ok_or_else(|| ApiError::not_found("channel"))?;
    let challenge = adapter.handshake(
        &channel,
        q.mode.as_deref(),
        q.token.as_deref(),
        q.challenge.as_deref(),
    )?;
    Ok((StatusCode::OK, challenge).into_response())
}

/// `POST`: provider events.
pub async fn receive(
    State(state): State<AppState>,
    Path((kind, channel_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let channel = webhook_channel(&state, &kind, &channel_id).await?;
    let body = body?;
    let adapter = state
        .channels
        .adapter(channel.kind)
        .ok_or_else(|| ApiError::not_found("channel"))?;
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let received = adapter
        .receive(&WebhookRequest {
            channel: &channel,
            headers: &headers,
            body: &body,
            path_and_query: &path_and_query,
            public_url: state.config.public_url.as_deref(),
        })
        .await?;
    // A signed one-time token seen before with another body is a replay: refused. (The same
    // body again is the provider redelivering: stored once, answered as before.)
    if let Some(key) = &received.replay_key
        && !state
            .store
            .claim_token(&channel.id, key, &crate::store::sha256_hex(&body))
            .await?
    {
        return Err(ApiError::unauthorized(
            "invalid_signature",
            "this request's token was used before (a replay)",
        ));
    }
    let original = received
        .keep_original
        .then(|| crate::registry::StoredOriginal {
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
        });
    let counts = state
        .ingest
        .apply_with_original(&channel, received.events, original.as_ref())
        .await?;
    Ok(match received.reply {
        Reply::Counts => Json(json!(counts)).into_response(),
        Reply::EmptyTwiml => (
            [(header::CONTENT_TYPE, "text/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
        )
            .into_response(),
    })
}
