//! People's side of conversations: agents writing into a conversation (hand-off), conversation
//! status, and a contact's identities and history across channels.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::Content;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::core::Role;
use crate::store::contacts::AgentMessageError;

/// Longest agent message accepted (channels split long text themselves).
const MAX_AGENT_TEXT: usize = 16_384;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentMessage {
    #[serde(default)]
    text: String,
    #[serde(default)]
    content: Content,
}

/// `POST /v1/conversations/{id}/messages`: an agent's message, delivered through the
/// conversation's channel by the outbox (buttons, list, media or template in `content`).
pub async fn post_agent_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let request: AgentMessage = json_body(body, "invalid_message")?;
    let text = request.text.replace('\0', "");
    if text.trim().is_empty() && request.content.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_message",
            "a message needs text or content",
        ));
    }
    if text.len() > MAX_AGENT_TEXT {
        return Err(ApiError::bad_request(
            "invalid_message",
            format!("text is longer than {MAX_AGENT_TEXT} bytes"),
        ));
    }
    request
        .content
        .validate()
        .map_err(|e| ApiError::bad_request("invalid_content", e))?;
    // What the conversation's channel cannot render is refused now, not as a dead letter later.
    if let Some(kind) = state
        .store
        .conversation_channel_kind(&principal.tenant_id, &conversation_id)
        .await?
    {
        state
            .channels
            .available(kind)?
            .check_renderable(&text, &request.content)
            .map_err(|e| ApiError::bad_request("invalid_content", e))?;
    }
    let content = (!request.content.is_empty())
        .then(|| serde_json::to_string(&request.content))
        .transpose()
        .map_err(ApiError::internal)?;
    let message = state
        .store
        .post_agent_message(
            &principal.tenant_id,
            &conversation_id,
            &text,
            content.as_deref(),
        )
        .await
        .map_err(|e| match e {
            AgentMessageError::NotFound => ApiError::not_found("conversation"),
            AgentMessageError::Closed => ApiError::new(
                StatusCode::CONFLICT,
                "conversation_closed",
                "the conversation is closed",
            ),
            AgentMessageError::Store(e) => e.into(),
        })?;
    state.router.wake_outbox();
    Ok((StatusCode::CREATED, Json(json!({ "message": message }))))
}

/// `GET /v1/messages/{id}/attachments/{index}`: the file behind an attachment reference,
/// fetched from the provider on demand (Telegram `getFile`, WhatsApp media URL). Nothing is
/// cached: providers' files are the source of truth, and Telegram's links expire.
pub async fn attachment(
    State(state): State<AppState>,
    caller: Caller,
    Path((message_id, index)): Path<(String, usize)>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let (channel_id, attachments) = state
        .store
        .message_attachments(&principal.tenant_id, &message_id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let attachments: Vec<switchboard_channel::Attachment> =
        serde_json::from_str(&attachments).map_err(ApiError::internal)?;
    let item = attachments
        .get(index)
        .filter(|a| !matches!(a.kind.as_str(), "location" | "contact" | "callback_query"))
        .ok_or_else(|| ApiError::not_found("attachment"))?;
    let channel = state.store.channel_by_id(&channel_id).await?;
    let adapter = state
        .channels
        .adapter(channel.kind)
        .ok_or_else(|| ApiError::not_found("attachment"))?;
    let original = state
        .store
        .original_of(&principal.tenant_id, &message_id)
        .await?;
    let fetched = adapter
        .download(&channel, item, index, original.as_ref())
        .await
        .ok_or_else(|| ApiError::not_found("attachment"))?;
    let bytes = fetched.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            format!("fetching the file from {} failed: {e}", channel.kind),
        )
    })?;
    let mime = item
        .mime_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok(([(axum::http::header::CONTENT_TYPE, mime)], bytes))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationUpdate {
    #[serde(default)]
    status: Option<String>,
    /// A moderator's or admin's key id, `me`, or `null` to unassign.
    #[serde(default, deserialize_with = "present")]
    assignee: Option<Option<String>>,
}

/// A member that is present: `Some(value)`, `Some(None)` for `null` (absent: `None`).
fn present<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /v1/conversations/{id}` `{"status":"bot"|"human"|"closed", "assignee": key|"me"|null}`:
/// hand a conversation to a person, give it back to the bot, close it, or assign it. Assigning
/// a bot conversation hands it to the person (and their ticket follows); `null` unassigns.
pub async fn update_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let request: ConversationUpdate = json_body(body, "invalid_conversation")?;
    if request.status.is_none() && request.assignee.is_none() {
        return Err(ApiError::bad_request(
            "invalid_conversation",
            "nothing to change: give status and/or assignee",
        ));
    }
    if let Some(status) = &request.status
        && !matches!(status.as_str(), "bot" | "human" | "closed")
    {
        return Err(ApiError::bad_request(
            "invalid_conversation",
            "status must be bot, human or closed",
        ));
    }
    let assignee = match request.assignee {
        Some(Some(a)) => {
            let key = if a == "me" {
                principal.key_id.clone()
            } else {
                a
            };
            if !state.store.is_staff_key(&principal.tenant_id, &key).await? {
                return Err(ApiError::bad_request(
                    "invalid_conversation",
                    "assignee must be a live admin or moderator key of this tenant (its id), or `me`",
                ));
            }
            Some(Some(key))
        }
        other => other,
    };
    if let Some(status) = &request.status {
        let changed = state
            .store
            .set_conversation_status(
                &principal.tenant_id,
                &conversation_id,
                status,
                &principal.key_id,
            )
            .await?;
        if !changed {
            return Err(
                conversation_unchanged(&state, &principal.tenant_id, &conversation_id).await,
            );
        }
    }
    if let Some(assignee) = &assignee {
        let mut w = state.store.begin_write().await?;
        let changed = crate::store::moderation::assign_conversation(
            &mut w,
            &principal.tenant_id,
            &conversation_id,
            assignee.as_deref(),
            &principal.key_id,
            crate::store::now_ms(),
        )
        .await?;
        w.commit().await?;
        if !changed {
            return Err(
                conversation_unchanged(&state, &principal.tenant_id, &conversation_id).await,
            );
        }
    }
    let view = state
        .store
        .conversation_state(&principal.tenant_id, &conversation_id)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Json(json!({
        "conversation_id": conversation_id,
        "status": view.0,
        "assignee": view.1,
    })))
}

/// Why a conversation could not be changed: it is not there (404) or it is closed (409).
async fn conversation_unchanged(
    state: &AppState,
    tenant_id: &str,
    conversation_id: &str,
) -> ApiError {
    match state
        .store
        .conversation_channel_kind(tenant_id, conversation_id)
        .await
    {
        Err(e) => e.into(),
        Ok(None) => ApiError::not_found("conversation"),
        Ok(Some(_)) => ApiError::new(
            StatusCode::CONFLICT,
            "conversation_closed",
            "a closed conversation stays closed; the contact's next message opens a new one",
        ),
    }
}

/// `GET /v1/contacts/{id}`: the contact, its identities on every channel, opt-out.
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(contact_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    match state
        .store
        .contact(&principal.tenant_id, &contact_id)
        .await?
    {
        Some(contact) => Ok(Json(json!({ "contact": contact }))),
        None => Err(ApiError::not_found("contact")),
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<i64>,
}

/// `GET /v1/contacts/{id}/messages`: one history across the contact's channels, oldest first.
pub async fn contact_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(contact_id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    let Query(q) = q?;
    if state
        .store
        .contact(&principal.tenant_id, &contact_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("contact"));
    }
    let messages = state
        .store
        .contact_history(
            &principal.tenant_id,
            &contact_id,
            q.limit.unwrap_or(500).clamp(1, 5000),
        )
        .await?;
    Ok(Json(json!({ "messages": messages })))
}
