//! HTTP surface (SPEC §3): axum routers and handlers only. Handlers parse, authorize and call into
//! ingest, the router and the store; they hold no business logic of their own.

pub mod auth;
pub mod channels;
pub mod contacts;
pub mod error;
pub mod knowledge;
pub mod messages;
pub mod moderation;
pub mod programs;
pub mod prompts;
pub mod webhooks;
pub mod widget;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::outbox::Channels;
use crate::polling::Pollers;
use crate::router::Router;
use crate::store::Store;
use error::ApiError;

/// What every handler can reach. One allocation shared by every request: axum clones the
/// state for each handler, and a clone of the parts themselves (the store alone holds a dozen
/// `Arc`s) was ~1 % of the gateway's CPU per message in the channels bench's profile.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub ingest: Ingest,
    pub router: Router,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// Provider API clients, for calls outside the outbox (`getMe`, `setWebhook`).
    pub channels: Channels,
    pub pollers: Pollers,
    /// Creators' documents and retrieval.
    pub knowledge: crate::knowledge::Knowledge,
    /// The web widget's sockets: visitor tokens, limits, shutdown.
    pub widget: Arc<widget::WidgetRuntime>,
    /// Coaching programs and the proactive engine.
    pub programs: crate::programs::Programs,
    /// The tenants' moderation policies (cached; a `PUT` invalidates).
    pub moderation: std::sync::Arc<crate::moderation::Moderation>,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> HttpRouter {
    let body_limit = state.config.max_body_bytes;
    HttpRouter::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/messages", post(messages::post_message))
        .route("/v1/conversations", get(messages::list_conversations))
        .route(
            "/v1/conversations/{id}/messages",
            get(messages::conversation_messages).post(contacts::post_agent_message),
        )
        .route(
            "/v1/conversations/{id}",
            axum::routing::patch(contacts::update_conversation),
        )
        .route(
            "/v1/messages/{id}/attachments/{index}",
            get(contacts::attachment),
        )
        .route(
            "/v1/contacts/{id}",
            get(contacts::get_contact).patch(programs::patch_contact),
        )
        .route(
            "/v1/contacts/{id}/enrollments",
            get(programs::contact_enrollments),
        )
        .route("/v1/programs", get(programs::list).post(programs::create))
        .route(
            "/v1/programs/settings",
            get(programs::get_settings).put(programs::put_settings),
        )
        .route(
            "/v1/programs/{id}",
            get(programs::get_one)
                .put(programs::put)
                .delete(programs::delete),
        )
        .route("/v1/programs/{id}/publish", post(programs::publish))
        .route("/v1/programs/{id}/enrollments", post(programs::enroll))
        .route("/v1/programs/{id}/preview", get(programs::preview))
        .route("/v1/programs/{id}/stats", get(programs::stats))
        .route(
            "/v1/enrollments/{id}",
            axum::routing::patch(programs::patch_enrollment),
        )
        .route("/v1/events", post(programs::post_event))
        .route(
            "/v1/moderation/policy",
            get(moderation::get_policy).put(moderation::put_policy),
        )
        .route("/v1/moderation/stats", get(moderation::stats))
        .route("/v1/flags", get(moderation::list_flags))
        .route("/v1/flags/{id}", get(moderation::get_flag))
        .route("/v1/flags/{id}/verdict", post(moderation::verdict))
        .route(
            "/v1/tickets",
            get(moderation::list_tickets).post(moderation::create_ticket),
        )
        .route(
            "/v1/tickets/{id}",
            get(moderation::get_ticket).patch(moderation::patch_ticket),
        )
        .route("/v1/contacts/{id}/messages", get(contacts::contact_history))
        .route(
            "/v1/channels",
            post(channels::connect_channel).get(channels::list_channels),
        )
        .route(
            "/v1/channels/{id}",
            axum::routing::patch(channels::patch_channel).delete(channels::delete_channel),
        )
        .route(
            "/webhooks/{kind}/{channel_id}",
            get(webhooks::verify).post(webhooks::receive),
        )
        .route(
            "/v1/knowledge/documents",
            post(knowledge::upload)
                .layer(DefaultBodyLimit::max(knowledge::MAX_UPLOAD_BYTES))
                .get(knowledge::list),
        )
        .route(
            "/v1/knowledge/documents/{id}",
            axum::routing::delete(knowledge::delete),
        )
        .route("/v1/knowledge/search", get(knowledge::search))
        .route(
            "/v1/knowledge/settings",
            get(knowledge::get_settings).put(knowledge::put_settings),
        )
        .route("/v1/prompts", get(prompts::list))
        .route(
            "/v1/prompts/{name}",
            axum::routing::put(prompts::put).delete(prompts::delete),
        )
        .route("/v1/widget/ws", get(widget::socket))
        .route("/v1/widget/config", get(widget::config))
        .route(
            "/v1/widget/settings",
            get(widget::get_settings).put(widget::put_settings),
        )
        .route("/widget.js", get(widget::script))
        .route("/demo", get(widget::demo))
        .route("/v1/deliveries", get(channels::list_deliveries))
        .route("/v1/deliveries/{id}/retry", post(channels::retry_delivery))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_millis(state.config.body_timeout_ms.max(1)),
        ))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unreachable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database is not reachable",
            )
            .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
