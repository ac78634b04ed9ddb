//! Channel connections and the delivery (outbox) view: dead letters and their retry.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::ChannelKind;
use switchboard_channel_api::ApiChannelConfig;
use switchboard_channel_whatsapp::WhatsappConfig;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
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
    let request: ConnectRequest = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request("invalid_channel", e.to_string()))?;
    let kind = ChannelKind::parse(&request.kind).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_channel",
            format!("unknown channel kind {:?}", request.kind),
        )
    })?;
    match kind {
        ChannelKind::Api => {
            ApiChannelConfig::parse(&request.config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
        }
        ChannelKind::Whatsapp => {
            WhatsappConfig::parse(&request.config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
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
        .upsert_channel(&principal.tenant_id, kind, &request.config)
        .await?;
    let webhook_url = webhook_url(&state, kind, &channel.id);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "channel_id": channel.id, "kind": kind, "webhook_url": webhook_url })),
    ))
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
