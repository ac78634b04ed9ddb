//! Channel connections and the delivery (outbox) view: dead letters and their retry.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_channel::ChannelKind;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::core::Role;
use crate::registry::Adapter;

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
    headers: HeaderMap,
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
    let base = public_base(&state, &headers);
    let body = configure(
        &state,
        &principal.tenant_id,
        kind,
        request.config,
        None,
        &base,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    /// Fields to change; the others (credentials included) stay. `null` removes a field.
    config: serde_json::Map<String, serde_json::Value>,
}

/// `PATCH /v1/channels/{id}` `{"config":{…}}`: changes some of a channel's settings, checked as
/// a new connection would be (the Telegram webhook is registered again, its poller restarted).
pub async fn patch_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: PatchRequest = json_body(body, "invalid_channel")?;
    let channel = state
        .store
        .channel(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))?;
    if !state.channels.available(channel.kind)?.connectable() {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "the api channel is configured with POST /v1/channels, the widget with PUT /v1/widget/settings",
        ));
    }
    let mut config = channel.config.clone();
    if let Some(object) = config.as_object_mut() {
        for (field, value) in request.config {
            if value.is_null() {
                object.remove(&field);
            } else {
                object.insert(field, value);
            }
        }
    }
    let base = public_base(&state, &headers);
    let body = configure(
        &state,
        &principal.tenant_id,
        channel.kind,
        config,
        Some(id),
        &base,
    )
    .await?;
    Ok(Json(body))
}

/// `DELETE /v1/channels/{id}`: the channel takes no more webhooks and sends nothing (pending
/// replies become dead letters saying so); its conversations stay readable. A Telegram bot's
/// webhook is removed at Telegram, and its poller stopped.
pub async fn delete_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let Some(channel) = state.store.channel(&principal.tenant_id, &id).await? else {
        return Err(ApiError::not_found("channel"));
    };
    let adapter = state.channels.available(channel.kind)?;
    if !adapter.connectable() {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "the tenant's api and widget channels cannot be removed",
        ));
    }
    state
        .store
        .remove_channel(&principal.tenant_id, &id)
        .await?;
    state.pollers.stop(&id);
    let mut body = json!({ "channel_id": id, "kind": channel.kind, "removed": true });
    // The provider stops calling us where it can be told to.
    if let Some(removed) = adapter.register_webhook(&channel.config, None).await
        && let Some(object) = body.as_object_mut()
    {
        match removed {
            Ok(()) => {
                object.insert("webhook_removed".into(), true.into());
            }
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "removing the webhook failed for a removed channel");
                object.insert("webhook_removed".into(), false.into());
                object.insert("webhook_error".into(), e.to_string().into());
            }
        }
    }
    Ok(Json(body))
}

/// Checks a channel's configuration, stores it (new, or over `replaces`), and tells the
/// provider where our webhook is. The answer's body.
async fn configure(
    state: &AppState,
    tenant_id: &str,
    kind: ChannelKind,
    config: serde_json::Value,
    mut replaces: Option<String>,
    base: &PublicBase,
) -> Result<serde_json::Value, ApiError> {
    let adapter = state.channels.available(kind)?;
    check_egress(state, adapter, &config).await?;
    let existing = state.store.channels(tenant_id).await?;
    let configured = adapter.configure(config).await?;
    let mut notes = configured.notes;
    // The same bot, number or address again: new settings for the existing channel.
    if replaces.is_none()
        && let Some(identity) = &configured.identity
    {
        replaces = existing
            .iter()
            .filter(|c| c.kind == kind)
            .find(|c| adapter.identity(&c.config).as_ref() == Some(identity))
            .map(|c| c.id.clone());
    }
    let channel = state
        .store
        .upsert_channel(tenant_id, kind, &configured.config, replaces.as_deref())
        .await?;
    let webhook_url = webhook_url(base, adapter, &channel.id);
    // Tell the provider where our webhook is, when it is told through its API and we know our
    // public address; a channel that takes no webhook now (Telegram polling) removes it there.
    if adapter.needs_webhook(&channel.config) {
        match (&state.config.public_url, &webhook_url) {
            (Some(_), Some(url)) => {
                match adapter.register_webhook(&channel.config, Some(url)).await {
                    Some(Ok(())) => {
                        notes.insert("webhook_registered".into(), true.into());
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "registering the webhook failed");
                        notes.insert("webhook_registered".into(), false.into());
                        notes.insert("webhook_error".into(), e.to_string().into());
                    }
                    None => {}
                }
            }
            _ => {
                if let Some(note) = adapter.unregistered_webhook_note() {
                    notes.insert("webhook_registered".into(), false.into());
                    notes.insert("webhook_error".into(), note.into());
                }
            }
        }
    } else if let Some(Err(e)) = adapter.register_webhook(&channel.config, None).await {
        tracing::warn!(error = %e, "removing the webhook failed; the poller retries it");
    }
    // Starts, restarts (new settings) or stops this channel's poller (Telegram's long polling;
    // a no-op for channels that do not poll).
    if state.config.workers {
        state
            .pollers
            .ensure(&state.ingest, &state.channels, &channel);
        if configured.learn_username {
            state
                .pollers
                .learn_username(&state.store, &state.channels, &channel);
        }
    }
    let mut body = json!({ "channel_id": channel.id, "kind": kind, "webhook_url": webhook_url });
    if let Some(object) = body.as_object_mut() {
        object.extend(notes);
        let warnings = warnings(base, adapter, &channel);
        if !warnings.is_empty() {
            object.insert("warnings".into(), warnings.into());
        }
    }
    Ok(body)
}

/// Refuses a configuration whose URLs lead to our own network (loopback, private, link-local,
/// unspecified), unless the operator allows them (`SWITCHBOARD_EGRESS_ALLOW`). Sends are
/// checked again at connect time; this tells the tenant at once.
async fn check_egress(
    state: &AppState,
    adapter: &dyn Adapter,
    config: &serde_json::Value,
) -> Result<(), ApiError> {
    let policy = switchboard_channel::egress::EgressPolicy::parse(&state.config.egress_allow)
        .map_err(ApiError::internal)?;
    for &field in adapter.url_fields() {
        if let Some(url) = config.get(field).and_then(|v| v.as_str()) {
            policy.check_url(url).await.map_err(|reason| {
                ApiError::bad_request("egress_refused", format!("{field}: {reason}"))
            })?;
        }
    }
    Ok(())
}

/// Where providers reach us: `SWITCHBOARD_PUBLIC_URL`, else guessed from the request's `Host`
/// (said in a warning: a provider cannot reach a local address).
pub struct PublicBase {
    url: String,
    configured: bool,
}

fn public_base(state: &AppState, headers: &HeaderMap) -> PublicBase {
    match &state.config.public_url {
        Some(url) => PublicBase {
            url: url.trim_end_matches('/').to_owned(),
            configured: true,
        },
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| {
                    !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
                })
                .map(str::to_owned)
                .unwrap_or_else(|| state.config.listen.clone());
            PublicBase {
                url: format!("http://{host}"),
                configured: false,
            }
        }
    }
}

fn webhook_url(base: &PublicBase, adapter: &dyn Adapter, channel_id: &str) -> Option<String> {
    adapter
        .connectable()
        .then(|| format!("{}/webhooks/{}/{channel_id}", base.url, adapter.kind()))
}

/// What a tenant should know about a channel's setup.
fn warnings(
    base: &PublicBase,
    adapter: &dyn Adapter,
    channel: &crate::store::channels::Channel,
) -> Vec<String> {
    let mut out = Vec::new();
    if adapter.needs_webhook(&channel.config) && !base.configured {
        out.push(format!(
            "SWITCHBOARD_PUBLIC_URL is not set: webhook_url was built from this request's address ({}), which the provider may not reach; set SWITCHBOARD_PUBLIC_URL to the gateway's public HTTPS address and connect again",
            base.url
        ));
    }
    out.extend(adapter.warnings(&channel.config));
    out
}

pub async fn list_channels(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let base = public_base(&state, &headers);
    let channels: Vec<_> = state
        .store
        .channels(&principal.tenant_id)
        .await?
        .into_iter()
        // Credentials stay in the database: only kind, id and what the tenant should know.
        .filter_map(|c| {
            let adapter = state.channels.adapter(c.kind)?;
            let mut item = json!({ "channel_id": c.id, "kind": c.kind, "webhook_url": webhook_url(&base, adapter, &c.id) });
            if let Some(object) = item.as_object_mut() {
                object.extend(adapter.describe(&c.config));
                let warnings = warnings(&base, adapter, &c);
                if !warnings.is_empty() {
                    object.insert("warnings".into(), warnings.into());
                }
            }
            Some(item)
        })
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
