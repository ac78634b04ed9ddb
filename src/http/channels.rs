//! Channel connections and the delivery (outbox) view: dead letters and their retry.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
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
    if matches!(channel.kind, ChannelKind::Api | ChannelKind::Widget) {
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
    if matches!(channel.kind, ChannelKind::Api | ChannelKind::Widget) {
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
    if channel.kind == ChannelKind::Telegram
        && let Ok(parsed) = TelegramConfig::parse(&channel.config)
        && let Some(object) = body.as_object_mut()
    {
        match state.channels.telegram().delete_webhook(&parsed).await {
            Ok(()) => {
                object.insert("webhook_removed".into(), true.into());
            }
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "deleteWebhook failed for a removed channel");
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
    mut config: serde_json::Value,
    mut replaces: Option<String>,
    base: &PublicBase,
) -> Result<serde_json::Value, ApiError> {
    check_egress(state, &config).await?;
    let existing = state.store.channels(tenant_id).await?;
    let forced = replaces.is_some();
    let mut notes = serde_json::Map::new();
    let mut learn_username = false;
    match kind {
        ChannelKind::Api => {
            ApiChannelConfig::parse(&config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
        }
        ChannelKind::Whatsapp => {
            let parsed = WhatsappConfig::parse(&config)
                .map_err(|e| ApiError::bad_request("invalid_channel_config", e))?;
            // The same number again: new settings for the existing channel.
            if !forced {
                replaces = existing
                    .iter()
                    .filter(|c| c.kind == kind)
                    .find(|c| {
                        WhatsappConfig::parse(&c.config)
                            .is_ok_and(|c| c.phone_number_id == parsed.phone_number_id)
                    })
                    .map(|c| c.id.clone());
            }
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
                    tracing::warn!(error = %e, "getMe failed; retried in the background, group mentions are recognised once it works");
                    notes.insert("get_me_error".into(), e.to_string().into());
                    learn_username = true;
                }
            }
            if !forced {
                replaces = existing
                    .iter()
                    .filter(|c| c.kind == kind)
                    .find(|c| {
                        TelegramConfig::parse(&c.config)
                            .is_ok_and(|c| c.bot_id() == parsed.bot_id())
                    })
                    .map(|c| c.id.clone());
            }
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
        .upsert_channel(tenant_id, kind, &config, replaces.as_deref())
        .await?;
    let webhook_url = webhook_url(base, kind, &channel.id);
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
            if learn_username {
                state
                    .pollers
                    .learn_username(&state.store, &state.channels, &channel);
            }
        }
    }
    let mut body = json!({ "channel_id": channel.id, "kind": kind, "webhook_url": webhook_url });
    if let Some(object) = body.as_object_mut() {
        object.extend(notes);
        let warnings = warnings(base, &channel);
        if !warnings.is_empty() {
            object.insert("warnings".into(), warnings.into());
        }
    }
    Ok(body)
}

/// The URL fields a tenant sets, in any channel's configuration.
const URL_FIELDS: [&str; 3] = ["callback_url", "api_url", "graph_url"];

/// Refuses a configuration whose URLs lead to our own network (loopback, private, link-local,
/// unspecified), unless the operator allows them (`SWITCHBOARD_EGRESS_ALLOW`). Sends are
/// checked again at connect time; this tells the tenant at once.
async fn check_egress(state: &AppState, config: &serde_json::Value) -> Result<(), ApiError> {
    let policy = switchboard_channel::egress::EgressPolicy::parse(&state.config.egress_allow)
        .map_err(ApiError::internal)?;
    for field in URL_FIELDS {
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

fn webhook_url(base: &PublicBase, kind: ChannelKind, channel_id: &str) -> Option<String> {
    match kind {
        ChannelKind::Api | ChannelKind::Widget => None,
        _ => Some(format!("{}/webhooks/{kind}/{channel_id}", base.url)),
    }
}

/// What a tenant should know about a channel's setup.
fn warnings(base: &PublicBase, channel: &crate::store::channels::Channel) -> Vec<String> {
    let mut out = Vec::new();
    let needs_webhook = match channel.kind {
        ChannelKind::Whatsapp => true,
        ChannelKind::Telegram => {
            TelegramConfig::parse(&channel.config).is_ok_and(|c| c.mode == Mode::Webhook)
        }
        _ => false,
    };
    if needs_webhook && !base.configured {
        out.push(format!(
            "SWITCHBOARD_PUBLIC_URL is not set: webhook_url was built from this request's address ({}), which the provider may not reach; set SWITCHBOARD_PUBLIC_URL to the gateway's public HTTPS address and connect again",
            base.url
        ));
    }
    if channel.kind == ChannelKind::Telegram
        && TelegramConfig::parse(&channel.config).is_ok_and(|c| c.bot_username.is_none())
    {
        out.push(
            "getMe has not succeeded yet (it is retried in the background): group messages that address the bot by @username are not recognised until it does".into(),
        );
    }
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
        .map(|c| {
            let mut item = json!({ "channel_id": c.id, "kind": c.kind, "webhook_url": webhook_url(&base, c.kind, &c.id) });
            if let Some(object) = item.as_object_mut() {
                if c.kind == ChannelKind::Telegram
                    && let Ok(parsed) = TelegramConfig::parse(&c.config)
                {
                    object.insert("bot_username".into(), parsed.bot_username.clone().into());
                    object.insert(
                        "mode".into(),
                        match parsed.mode {
                            Mode::Webhook => "webhook",
                            Mode::Polling => "polling",
                        }
                        .into(),
                    );
                }
                let warnings = warnings(&base, &c);
                if !warnings.is_empty() {
                    object.insert("warnings".into(), warnings.into());
                }
            }
            item
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
