//! Model servers for tests.
//!
//! - [`StandIn`]: a scripted Ollama-API server (`/api/chat`, `/api/tags`, `/api/embed`) that
//!   serves Ollama's own documented payloads (tests/fixtures/ollama) byte for byte, in chunks
//!   cut where the test says, records every request, and can fail, hang or stream slowly. It
//!   checks *our* handling of the protocol and of failures; the real model is below.
//! - [`real_models`]: the real small model (SmolLM2-135M-Instruct under llama.cpp's server, and
//!   the Ollama-API adapter `tests/support/ollama_adapter.py` in front of it, with
//!   all-MiniLM-L6-v2 embeddings) that `.ci/llm-setup` starts. `None` with a printed notice when
//!   not configured; a panic when `SWITCHBOARD_TEST_REQUIRE_LLM` is set (CI).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Reads a fixture from tests/fixtures/ollama.
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/ollama/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the stand-in does with the next `/api/chat`.
#[derive(Debug, Clone)]
pub enum Script {
    /// Serve these bytes as the NDJSON body, one chunk per write, `delay` apart.
    Bytes(Vec<Vec<u8>>, Duration),
    /// Answer with this status and JSON body.
    Status(u16, Value),
    /// Take the request and never answer.
    Hang,
}

#[derive(Default)]
struct Inner {
    scripts: VecDeque<Script>,
    /// Used when no script is queued.
    default: Option<Script>,
    chats: Vec<Value>,
}

/// A scripted Ollama server on a local port.
#[derive(Clone)]
pub struct StandIn {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

/// An Ollama NDJSON stream saying `pieces` (one line each) and then `done`.
pub fn answer_stream(pieces: &[&str]) -> Vec<u8> {
    let mut body = String::new();
    for piece in pieces {
        body.push_str(
            &json!({"model": "stand-in", "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": piece}, "done": false})
            .to_string(),
        );
        body.push('\n');
    }
    body.push_str(
        &json!({"model": "stand-in", "created_at": "2023-08-04T19:22:45.499127Z",
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
            "prompt_eval_count": 26, "eval_count": pieces.len()})
        .to_string(),
    );
    body.push('\n');
    body.into_bytes()
}

/// `bytes` cut into pieces of `size` bytes (so lines, JSON strings and UTF-8 characters are
/// split across network writes).
pub fn cut(bytes: &[u8], size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(size.max(1)).map(<[u8]>::to_vec).collect()
}

impl StandIn {
    pub async fn start() -> StandIn {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/api/chat", post(chat))
            .route("/api/tags", get(tags))
            .route("/api/embed", post(embed))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            url: format!("http://{addr}"),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, script: Script) {
        self.lock().scripts.push_back(script);
    }

    pub fn set_default(&self, script: Script) {
        self.lock().default = Some(script);
    }

    /// The `/api/chat` request bodies received, in order.
    pub fn chats(&self) -> Vec<Value> {
        self.lock().chats.clone()
    }
}

async fn chat(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> Response {
    let script = {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .chats
            .push(serde_json::from_str(&body).unwrap_or(Value::Null));
        inner
            .scripts
            .pop_front()
            .or_else(|| inner.default.clone())
            .unwrap_or_else(|| {
                Script::Bytes(
                    vec![answer_stream(&["Sleep ", "well ", "[1]."])],
                    Duration::ZERO,
                )
            })
    };
    match script {
        Script::Status(status, body) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response(),
        Script::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Script::Bytes(chunks, delay) => {
            let stream = futures::stream::unfold(
                (chunks.into_iter(), delay, true),
                |(mut chunks, delay, first)| async move {
                    let chunk = chunks.next()?;
                    if !first && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk)),
                        (chunks, delay, false),
                    ))
                },
            );
            Response::builder()
                .header("content-type", "application/x-ndjson")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

async fn tags() -> Response {
    let body: Value = serde_json::from_str(&fixture("tags_response.json")).unwrap_or(Value::Null);
    axum::Json(body).into_response()
}

/// Ollama's documented embed answer, one (fixture) vector per input.
async fn embed(axum::Json(request): axum::Json<Value>) -> Response {
    let mut body: Value =
        serde_json::from_str(&fixture("embed_single_response.json")).unwrap_or(Value::Null);
    let vector = body["embeddings"][0].clone();
    let n = match &request["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    body["embeddings"] = Value::Array(vec![vector; n]);
    axum::Json(body).into_response()
}

/// Where the real small model is served.
#[derive(Debug, Clone)]
pub struct RealModels {
    /// llama.cpp's OpenAI-compatible server.
    pub openai_url: String,
    pub openai_model: String,
    /// The Ollama-API adapter in front of it (and of the embedding model).
    pub ollama_url: String,
    pub ollama_model: String,
    pub embed_model: String,
}

/// The real model servers, if configured (`.ci/llm-setup` writes the variables).
pub fn real_models(test: &str) -> Option<RealModels> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("SWITCHBOARD_TEST_OPENAI_URL"),
        var("SWITCHBOARD_TEST_OLLAMA_URL"),
    ) {
        (Some(openai_url), Some(ollama_url)) => Some(RealModels {
            openai_url,
            openai_model: var("SWITCHBOARD_TEST_OPENAI_MODEL").unwrap_or_else(|| "smollm2".into()),
            ollama_url,
            ollama_model: var("SWITCHBOARD_TEST_OLLAMA_MODEL").unwrap_or_else(|| "smollm2".into()),
            embed_model: var("SWITCHBOARD_TEST_EMBED_MODEL").unwrap_or_else(|| "all-minilm".into()),
        }),
        _ if var("SWITCHBOARD_TEST_REQUIRE_LLM").is_some() => panic!(
            "{test}: SWITCHBOARD_TEST_REQUIRE_LLM is set but SWITCHBOARD_TEST_OPENAI_URL / SWITCHBOARD_TEST_OLLAMA_URL are not (run .ci/llm-setup and source its env file)"
        ),
        _ => {
            eprintln!(
                "NOTICE: {test} skipped: no real model server (run .ci/llm-setup, then `source /var/tmp/switchboard-llm/env`)"
            );
            None
        }
    }
}
