//! Language models: chat generation and embeddings over HTTP, from Ollama or any
//! OpenAI-compatible server.
//!
//! Where it sits: a side path used by the answer responder ([`crate::answer`]) and by knowledge
//! retrieval (embeddings). Nothing here knows about tenants or conversations: a provider turns a
//! list of chat messages into streamed text, or texts into vectors, and reports failures as
//! [`LlmError`] so callers can fall back. Timeouts, the circuit breaker and the concurrency limit
//! live in [`guard`], around whichever provider is configured.
//!
//! Both providers are written on `reqwest` with their streams parsed line by line
//! ([`lines::LineBuffer`]): a network chunk may end anywhere, even inside a UTF-8 character, and
//! an error may arrive after some text (Ollama's `{"error": …}` line, an SSE `error` event). A
//! stream that ends without the provider's end marker is an error, never a short answer.

pub mod guard;
pub mod lines;
pub mod ollama;
pub mod openai;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Longest answer, in the model's tokens.
    pub max_tokens: u32,
    pub temperature: f32,
    /// A JSON Schema the answer must follow (Ollama's `format`, OpenAI's `response_format`);
    /// servers that support it constrain the generation to it.
    pub format: Option<serde_json::Value>,
}

/// What a finished generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    /// `stop`, `length`, … as the provider says.
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Why a model gave no (complete) answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the model server is unreachable: {0}")]
    Unreachable(String),
    #[error("the model server answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the model failed while answering: {0}")]
    Stream(String),
    #[error("the model's stream ended before its end marker")]
    Truncated,
    #[error("the model's answer could not be read: {0}")]
    Protocol(String),
    #[error("no answer from the model within {0:?}")]
    Timeout(Duration),
    #[error("the model is not being called: {0}")]
    Unavailable(&'static str),
}

impl LlmError {
    /// Whether the failure says something about the server's health (and so counts toward
    /// opening the circuit breaker). A request the server refused as malformed does not.
    pub fn is_outage(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status >= 500 || *status == 429,
            LlmError::Unavailable(_) => false,
            _ => true,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> LlmError {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            LlmError::Unreachable(without_url(&e))
        } else if e.is_decode() || e.is_body() {
            LlmError::Stream(without_url(&e))
        } else {
            LlmError::Protocol(without_url(&e))
        }
    }
}

/// A reqwest error's text with the URL left out (it may carry credentials in a query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The message of a provider's error body: Ollama's `{"error": "…"}`, OpenAI's
/// `{"error": {"message": …}}`, or the error value as it is.
pub(crate) fn error_message(value: &serde_json::Value) -> String {
    let error = value.get("error").unwrap_or(value);
    error
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string())
}

/// Sends a request; a transport failure or a non-2xx answer (with the provider's message, or
/// the start of the body) is the error.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
    let response = request.send().await.map_err(LlmError::from_reqwest)?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .map(|v| error_message(&v))
        .unwrap_or_else(|_| body.chars().take(200).collect());
    Err(LlmError::Status { status, message })
}

/// One vector per input, or a protocol error naming the endpoint.
pub(crate) fn one_per_input<T>(
    vectors: Vec<T>,
    inputs: usize,
    endpoint: &str,
) -> Result<Vec<T>, LlmError> {
    if vectors.len() == inputs {
        Ok(vectors)
    } else {
        Err(LlmError::Protocol(format!(
            "{endpoint} returned {} vectors for {inputs} inputs",
            vectors.len()
        )))
    }
}

/// Receives the answer's text as it is generated.
pub trait OnDelta: Send {
    fn delta(&mut self, text: &str);
}

impl<F: FnMut(&str) + Send> OnDelta for F {
    fn delta(&mut self, text: &str) {
        self(text)
    }
}

/// A chat model behind a server.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Generates an answer, handing each piece of text to `on_delta` as it arrives. The pieces
    /// add up to the returned text. No timeout of its own: callers bound it ([`guard`]).
    async fn chat(
        &self,
        request: &ChatRequest,
        on_delta: &mut dyn OnDelta,
    ) -> Result<Generated, LlmError>;

    /// Whether the server answers and has the model (for the start-up line and readiness).
    async fn check(&self) -> Result<(), LlmError>;

    /// `provider model at url`, for logs.
    fn describe(&self) -> String;
}

/// An embedding model behind a server.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// One vector per input, in order.
    async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError>;

    /// The model's name (stored beside the vectors: another model means re-embedding).
    fn model(&self) -> &str;
}

/// Which server protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Ollama,
    OpenAi,
}

impl Provider {
    pub fn parse(name: &str) -> Option<Provider> {
        match name {
            "ollama" => Some(Provider::Ollama),
            "openai" => Some(Provider::OpenAi),
            _ => None,
        }
    }
}

/// Where the models are and which to use.
#[derive(Clone)]
pub struct Endpoint {
    pub provider: Provider,
    /// Base URL: `http://host:11434` for Ollama, `http://host:8000` (with or without `/v1`) for
    /// OpenAI-compatible servers.
    pub url: String,
    /// Bearer token for OpenAI-compatible servers that want one.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.provider)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The chat model of `endpoint`.
pub fn chat_model(http: reqwest::Client, endpoint: &Endpoint, model: &str) -> Box<dyn ChatModel> {
    match endpoint.provider {
        Provider::Ollama => Box::new(ollama::Ollama::new(http, &endpoint.url, model)),
        Provider::OpenAi => Box::new(openai::OpenAi::new(
            http,
            &endpoint.url,
            model,
            endpoint.api_key.clone(),
        )),
    }
}

/// The embedding model of `endpoint`.
pub fn embedder(http: reqwest::Client, endpoint: &Endpoint, model: &str) -> Box<dyn Embedder> {
    match endpoint.provider {
        Provider::Ollama => Box::new(ollama::Ollama::new(http, &endpoint.url, model)),
        Provider::OpenAi => Box::new(openai::OpenAi::new(
            http,
            &endpoint.url,
            model,
            endpoint.api_key.clone(),
        )),
    }
}
