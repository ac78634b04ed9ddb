//! `POST /v1/messages` (the generic `api` channel) and the conversation read side.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::InboundError;
use switchboard_channel_api::parse_inbound;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::core::Role;
use crate::store::messages::ConversationFilter;
use crate::store::new_id;

pub async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let body = body?;
    let request = parse_inbound(&body).map_err(|e| match e {
        InboundError::Malformed(m) => ApiError::bad_request("invalid_message", m),
        InboundError::Unauthorized(m) => ApiError::unauthorized("invalid_signature", m),
    })?;
    let wait = request.wait;
    let channel = state.store.api_channel(&principal.tenant_id).await?;
    let message = request.into_message(new_id);
    let ingested = state.ingest.accept(&channel, message).await?;
    let mut body = json!({
        "conversation_id": ingested.conversation_id,
        "message_id": ingested.message_id,
        "duplicate": ingested.duplicate,
    });
    if !wait {
        return Ok((StatusCode::OK, Json(body)));
    }
    let outcome = state
        .router
        .wait_processed(
            &principal.tenant_id,
            &ingested.message_id,
            state.config.wait_timeout(),
        )
        .await?;
    match outcome {
        Some(reply) => {
            body["reply"] = reply.map_or(serde_json::Value::Null, |r| {
                let mut reply =
                    json!({ "message_id": r.id, "text": r.text, "citations": r.citations });
                if let Some(grounding) = r.grounding {
                    reply["grounding"] = grounding;
                }
                reply
            });
            Ok((StatusCode::OK, Json(body)))
        }
        // Stored and acknowledged, but not answered within the wait: the reply will still come.
        None => Ok((StatusCode::ACCEPTED, Json(body))),
    }
}

#[derive(Debug, Deserialize)]
pub struct ConversationQuery {
    status: Option<String>,
    channel: Option<String>,
    flagged: Option<bool>,
    /// A key id, or `me`.
    assignee: Option<String>,
    limit: Option<i64>,
}

pub async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ConversationQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let Query(q) = q?;
    if let Some(status) = &q.status
        && !matches!(status.as_str(), "bot" | "human" | "closed")
    {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "status must be bot, human or closed",
        ));
    }
    let filter = ConversationFilter {
        status: q.status,
        channel: q.channel,
        flagged: q.flagged,
        assignee: q.assignee.map(|a| {
            if a == "me" {
                principal.key_id.clone()
            } else {
                a
            }
        }),
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let conversations = state
        .store
        .conversations(&principal.tenant_id, &filter)
        .await?;
    Ok(Json(json!({ "conversations": conversations })))
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn conversation_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let Query(q) = q?;
    let messages = state
        .store
        .conversation_messages(
            &principal.tenant_id,
            &id,
            q.after_seq.unwrap_or(0),
            q.limit.unwrap_or(500).clamp(1, 5000),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Json(json!({ "messages": messages })))
}
