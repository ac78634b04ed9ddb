//! A local stand-in for the Telegram Bot API (`{api_url}/bot{token}/{method}`), speaking its
//! documented envelope (`{"ok":true,"result":…}` / `{"ok":false,"error_code","description",
//! "parameters"}`). It records every call, serves queued updates to `getUpdates`, and fails the
//! next calls of a method on request (429 with `retry_after`, 5xx, 403 "bot was blocked").
//! Like Telegram, it keeps the webhook `setWebhook` registers until `deleteWebhook`, and refuses
//! `getUpdates` (409 Conflict) while one is set.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

pub const TOKEN: &str = "123456:TEST-token";
pub const BOT_USERNAME: &str = "CoachBot";
/// What every file download returns.
pub const FILE_BYTES: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg";

/// `GET /file/bot<token>/<path>`: the file behind a `getFile` path.
async fn file(Path((bot, _path)): Path<(String, String)>) -> impl IntoResponse {
    if bot.strip_prefix("bot") != Some(TOKEN) {
        return (StatusCode::NOT_FOUND, Vec::new());
    }
    (StatusCode::OK, FILE_BYTES.to_vec())
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub token: String,
    pub body: Value,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// Method → answers to give instead of success, in order: (HTTP status, envelope).
    /// (`None`: let that call through; for failing a later call of a sequence).
    failures: HashMap<String, VecDeque<Option<(u16, Value)>>>,
    updates: Vec<Value>,
    /// `getUpdates` calls that ignore the offset and serve everything again (as Telegram does
    /// after a bot restarts before confirming).
    replays: usize,
    next_message_id: i64,
    /// The registered webhook URL (`setWebhook`), until `deleteWebhook`.
    webhook: Option<String>,
}

#[derive(Clone, Default)]
pub struct BotApi {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
}

impl BotApi {
    pub async fn start() -> BotApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut api = BotApi {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            ..BotApi::default()
        };
        api.inner.lock().expect("lock").next_message_id = 1000;
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::post(handle))
            .route("/file/{bot}/{*path}", axum::routing::get(file))
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        api.base = api.base.clone();
        api
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.inner
            .lock()
            .expect("lock")
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// The texts sent with `sendMessage`, in order.
    pub fn texts(&self) -> Vec<(String, String)> {
        self.calls("sendMessage")
            .iter()
            .map(|c| {
                (
                    c.body["chat_id"].to_string().trim_matches('"').to_owned(),
                    c.body["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The next `n` calls of `method` get `envelope` with HTTP `status`.
    pub fn fail_next(&self, method: &str, n: usize, status: u16, envelope: Value) {
        let mut inner = self.inner.lock().expect("lock");
        let queue = inner.failures.entry(method.to_owned()).or_default();
        for _ in 0..n {
            queue.push_back(Some((status, envelope.clone())));
        }
    }

    /// The next `n` calls of `method` succeed (queued before later `fail_next`s).
    pub fn pass_next(&self, method: &str, n: usize) {
        let mut inner = self.inner.lock().expect("lock");
        let queue = inner.failures.entry(method.to_owned()).or_default();
        for _ in 0..n {
            queue.push_back(None);
        }
    }

    /// The next `n` `getUpdates` calls serve every queued update again, whatever the offset.
    pub fn replay_next(&self, n: usize) {
        self.inner.lock().expect("lock").replays += n;
    }

    /// Queues an update for `getUpdates`.
    pub fn push_update(&self, update: Value) {
        self.inner.lock().expect("lock").updates.push(update);
    }

    /// A webhook registered earlier (by another deployment, say): `getUpdates` is refused until
    /// `deleteWebhook`.
    pub fn register_webhook(&self, url: &str) {
        self.inner.lock().expect("lock").webhook = Some(url.to_owned());
    }

    /// The webhook URL registered now, if any.
    pub fn webhook(&self) -> Option<String> {
        self.inner.lock().expect("lock").webhook.clone()
    }
}

/// The text fields of a multipart/form-data body as a JSON object (values that are JSON, like
/// `allowed_updates`, parsed).
fn multipart_fields(body: &[u8], boundary: &str) -> Value {
    let text = String::from_utf8_lossy(body);
    let mut fields = serde_json::Map::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let Some(name) = head
            .split("name=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let value = value.trim_end_matches("\r\n");
        let parsed = serde_json::from_str::<Value>(value)
            .ok()
            .filter(|v| v.is_array() || v.is_object())
            .unwrap_or_else(|| Value::String(value.to_owned()));
        fields.insert(name.to_owned(), parsed);
    }
    Value::Object(fields)
}

fn message_result(id: i64, chat_id: &Value, text: Option<&Value>) -> Value {
    let mut m = json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": { "id": chat_id, "type": "private", "first_name": "Test" },
        "from": { "id": 123456, "is_bot": true, "first_name": "Coach", "username": BOT_USERNAME },
    });
    if let Some(text) = text {
        m["text"] = text.clone();
    }
    m
}

async fn handle(
    State(api): State<BotApi>,
    Path((bot, method)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = match content_type.split_once("boundary=") {
        // Methods that may carry files (setWebhook, sendPhoto, …) come as multipart.
        Some((_, boundary)) => multipart_fields(&body, boundary.trim_matches('"')),
        None => serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    // Bot API method names are case-insensitive (teloxide sends `SendMessage`): record the
    // documented spelling, `sendMessage`.
    let method = {
        let mut chars = method.chars();
        chars
            .next()
            .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
            .unwrap_or_default()
    };
    let token = bot.strip_prefix("bot").unwrap_or_default().to_owned();
    if token != TOKEN {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "ok": false, "error_code": 401, "description": "Unauthorized" })),
        );
    }
    let offset = body["offset"].as_i64();
    let timeout = body["timeout"].as_u64().unwrap_or(0);
    {
        let mut inner = api.inner.lock().expect("lock");
        inner.calls.push(Call {
            method: method.clone(),
            token,
            body: body.clone(),
            at: std::time::Instant::now(),
        });
        if let Some(Some((status, envelope))) = inner
            .failures
            .get_mut(&method)
            .and_then(VecDeque::pop_front)
        {
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                axum::Json(envelope),
            );
        }
    }
    let webhook_active = api.inner.lock().expect("lock").webhook.is_some();
    let ok = |result: Value| {
        (
            StatusCode::OK,
            axum::Json(json!({ "ok": true, "result": result })),
        )
    };
    match method.as_str() {
        "getMe" => ok(json!({
            "id": 123456, "is_bot": true, "first_name": "Coach", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false,
        })),
        "sendMessage" | "sendPhoto" | "sendDocument" | "sendVideo" | "sendAudio" | "sendVoice"
        | "sendSticker" | "sendAnimation" => {
            let id = {
                let mut inner = api.inner.lock().expect("lock");
                inner.next_message_id += 1;
                inner.next_message_id
            };
            ok(message_result(id, &body["chat_id"], body.get("text")))
        }
        "setWebhook" => {
            // An empty URL removes the webhook, as in the Bot API.
            let url = body["url"].as_str().unwrap_or_default().to_owned();
            api.inner.lock().expect("lock").webhook = (!url.is_empty()).then_some(url);
            ok(json!(true))
        }
        "deleteWebhook" => {
            api.inner.lock().expect("lock").webhook = None;
            ok(json!(true))
        }
        "getFile" => ok(json!({
            "file_id": body["file_id"], "file_unique_id": "u1", "file_size": FILE_BYTES.len(),
            "file_path": format!("photos/{}.jpg", body["file_id"].as_str().unwrap_or("x")),
        })),
        "getUpdates" if webhook_active => (
            StatusCode::CONFLICT,
            axum::Json(json!({ "ok": false, "error_code": 409,
                "description": "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first" })),
        ),
        "getUpdates" => {
            // A long poll: answer as soon as there is something after `offset`, or after a
            // short while (the real one waits up to `timeout` seconds).
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(timeout.min(1) * 300);
            let replay = {
                let mut inner = api.inner.lock().expect("lock");
                let replay = inner.replays > 0 && !inner.updates.is_empty();
                if replay {
                    inner.replays -= 1;
                }
                replay
            };
            loop {
                let pending: Vec<Value> = api
                    .inner
                    .lock()
                    .expect("lock")
                    .updates
                    .iter()
                    .filter(|u| {
                        replay || offset.is_none_or(|o| u["update_id"].as_i64().unwrap_or(0) >= o)
                    })
                    .cloned()
                    .collect();
                if !pending.is_empty() || tokio::time::Instant::now() >= deadline {
                    return ok(Value::Array(pending));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        _ => ok(json!(true)),
    }
}
