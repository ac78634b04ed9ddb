//! Ollama's native API: `/api/chat` (NDJSON stream), `/api/embed`, `/api/tags`.
//!
//! Written on reqwest rather than `ollama-rs`: its 0.3 stream (the newest on crates.io) decodes
//! each network chunk on its own, so a chunk ending inside a UTF-8 character is dropped whole,
//! and a mid-stream `{"error": …}` line is printed to stderr and skipped, so a failed generation
//! looks like a short, complete one. Both cases are tests here.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::lines::LineBuffer;
use super::{ChatModel, ChatRequest, Embedder, Generated, LlmError, OnDelta};

pub struct Ollama {
    http: reqwest::Client,
    base: String,
    model: String,
}

impl Ollama {
    pub fn new(http: reqwest::Client, url: &str, model: &str) -> Ollama {
        Ollama {
            http,
            base: url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
        }
    }
}

/// One line of `/api/chat`'s stream (or its whole non-streamed answer).
#[derive(Debug, Deserialize)]
struct ChatLine {
    #[serde(default)]
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
}

#[async_trait]
impl ChatModel for Ollama {
    async fn chat(
        &self,
        request: &ChatRequest,
        on_delta: &mut dyn OnDelta,
    ) -> Result<Generated, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
            "stream": true,
            "options": {
                "num_predict": request.max_tokens,
                "temperature": request.temperature,
            },
        });
        if let Some(schema) = &request.format {
            body["format"] = schema.clone();
        }
        let mut response = super::send(
            self.http
                .post(format!("{}/api/chat", self.base))
                .json(&body),
        )
        .await?;
        let mut buffer = LineBuffer::new();
        let mut text = String::new();
        loop {
            let chunk = response.chunk().await.map_err(LlmError::from_reqwest)?;
            let lines = match &chunk {
                Some(bytes) => buffer.push(bytes)?,
                None => buffer.finish()?.into_iter().collect(),
            };
            for line in lines {
                if line.trim().is_empty() {
                    continue;
                }
                let parsed: ChatLine = serde_json::from_str(&line)
                    .map_err(|e| LlmError::Protocol(format!("an NDJSON line: {e}")))?;
                if let Some(error) = parsed.error {
                    return Err(LlmError::Stream(error));
                }
                if let Some(message) = parsed.message
                    && !message.content.is_empty()
                {
                    on_delta.delta(&message.content);
                    text.push_str(&message.content);
                }
                if parsed.done {
                    return Ok(Generated {
                        text,
                        finish_reason: parsed.done_reason,
                        prompt_tokens: parsed.prompt_eval_count,
                        completion_tokens: parsed.eval_count,
                    });
                }
            }
            if chunk.is_none() {
                return Err(LlmError::Truncated);
            }
        }
    }

    async fn check(&self) -> Result<(), LlmError> {
        let response = super::send(self.http.get(format!("{}/api/tags", self.base))).await?;
        #[derive(Deserialize)]
        struct Tags {
            models: Vec<Tag>,
        }
        #[derive(Deserialize)]
        struct Tag {
            name: String,
        }
        let tags: Tags = response
            .json()
            .await
            .map_err(|e| LlmError::Protocol(e.to_string()))?;
        // `llama3.2` is `llama3.2:latest`.
        let wanted = if self.model.contains(':') {
            self.model.clone()
        } else {
            format!("{}:latest", self.model)
        };
        if tags
            .models
            .iter()
            .any(|t| t.name == self.model || t.name == wanted)
        {
            Ok(())
        } else {
            Err(LlmError::Status {
                status: 404,
                message: format!(
                    "model {:?} is not on the server (ollama pull {})",
                    self.model, self.model
                ),
            })
        }
    }

    fn describe(&self) -> String {
        format!("ollama model {} at {}", self.model, self.base)
    }
}

#[async_trait]
impl Embedder for Ollama {
    async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let response = super::send(
            self.http
                .post(format!("{}/api/embed", self.base))
                .json(&json!({ "model": self.model, "input": inputs, "truncate": true })),
        )
        .await?;
        #[derive(Deserialize)]
        struct Embeddings {
            embeddings: Vec<Vec<f32>>,
        }
        let answer: Embeddings = response
            .json()
            .await
            .map_err(|e| LlmError::Protocol(format!("/api/embed: {e}")))?;
        super::one_per_input(answer.embeddings, inputs.len(), "/api/embed")
    }

    fn model(&self) -> &str {
        &self.model
    }
}
