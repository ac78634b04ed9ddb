//! OpenAI-compatible servers (llama.cpp, vLLM, LM Studio, OpenAI itself):
//! `/v1/chat/completions` streamed as server-sent events, `/v1/embeddings`, `/v1/models`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::lines::LineBuffer;
use super::{ChatModel, ChatRequest, Embedder, Generated, LlmError, OnDelta};

pub struct OpenAi {
    http: reqwest::Client,
    /// Ends in `/v1`.
    base: String,
    model: String,
    api_key: Option<String>,
}

impl OpenAi {
    pub fn new(http: reqwest::Client, url: &str, model: &str, api_key: Option<String>) -> OpenAi {
        let url = url.trim_end_matches('/');
        let base = if url.ends_with("/v1") {
            url.to_owned()
        } else {
            format!("{url}/v1")
        };
        OpenAi {
            http,
            base,
            model: model.to_owned(),
            api_key,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[async_trait]
impl ChatModel for OpenAi {
    async fn chat(
        &self,
        request: &ChatRequest,
        on_delta: &mut dyn OnDelta,
    ) -> Result<Generated, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
            "stream": true,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        if let Some(schema) = &request.format {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": { "name": "answer", "schema": schema },
            });
        }
        let mut response = super::send(
            self.request(reqwest::Method::POST, "/chat/completions")
                .json(&body),
        )
        .await?;
        let mut buffer = LineBuffer::new();
        let mut generated = Generated {
            text: String::new(),
            finish_reason: None,
            prompt_tokens: None,
            completion_tokens: None,
        };
        let mut event_is_error = false;
        loop {
            let chunk = response.chunk().await.map_err(LlmError::from_reqwest)?;
            let lines = match &chunk {
                Some(bytes) => buffer.push(bytes)?,
                None => buffer.finish()?.into_iter().collect(),
            };
            for line in lines {
                if line.is_empty() {
                    event_is_error = false;
                    continue;
                }
                if let Some(event) = line.strip_prefix("event:") {
                    event_is_error = event.trim() == "error";
                    continue;
                }
                // Comments (`: ping`) and fields other than data are ignored, as SSE says.
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    return Ok(generated);
                }
                let value: serde_json::Value = serde_json::from_str(data)
                    .map_err(|e| LlmError::Protocol(format!("an SSE data line: {e}")))?;
                if event_is_error || value.get("error").is_some_and(|e| !e.is_null()) {
                    return Err(LlmError::Stream(super::error_message(&value)));
                }
                let parsed: Chunk = serde_json::from_value(value)
                    .map_err(|e| LlmError::Protocol(format!("an SSE chunk: {e}")))?;
                if parsed.error.is_some() {
                    return Err(LlmError::Stream("error in stream".into()));
                }
                for choice in parsed.choices {
                    if let Some(content) = choice.delta.and_then(|d| d.content)
                        && !content.is_empty()
                    {
                        on_delta.delta(&content);
                        generated.text.push_str(&content);
                    }
                    if choice.finish_reason.is_some() {
                        generated.finish_reason = choice.finish_reason;
                    }
                }
                if let Some(usage) = parsed.usage {
                    generated.prompt_tokens = usage.prompt_tokens;
                    generated.completion_tokens = usage.completion_tokens;
                }
            }
            if chunk.is_none() {
                // Some servers end without `[DONE]`; a finish reason says the answer is whole.
                return if generated.finish_reason.is_some() {
                    Ok(generated)
                } else {
                    Err(LlmError::Truncated)
                };
            }
        }
    }

    async fn check(&self) -> Result<(), LlmError> {
        let response = super::send(self.request(reqwest::Method::GET, "/models")).await?;
        #[derive(Deserialize)]
        struct Models {
            #[serde(default)]
            data: Vec<Model>,
        }
        #[derive(Deserialize)]
        struct Model {
            id: String,
        }
        let models: Models = response
            .json()
            .await
            .map_err(|e| LlmError::Protocol(e.to_string()))?;
        if models.data.is_empty() || models.data.iter().any(|m| m.id == self.model) {
            Ok(())
        } else {
            Err(LlmError::Status {
                status: 404,
                message: format!("model {:?} is not served there", self.model),
            })
        }
    }

    fn describe(&self) -> String {
        format!("OpenAI-compatible model {} at {}", self.model, self.base)
    }
}

#[async_trait]
impl Embedder for OpenAi {
    async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let response = super::send(
            self.request(reqwest::Method::POST, "/embeddings")
                .json(&json!({ "model": self.model, "input": inputs })),
        )
        .await?;
        #[derive(Deserialize)]
        struct Embeddings {
            data: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            #[serde(default)]
            index: usize,
            embedding: Vec<f32>,
        }
        let mut answer: Embeddings = response
            .json()
            .await
            .map_err(|e| LlmError::Protocol(format!("/embeddings: {e}")))?;
        answer.data.sort_by_key(|item| item.index);
        let vectors = answer.data.into_iter().map(|item| item.embedding).collect();
        super::one_per_input(vectors, inputs.len(), "/embeddings")
    }

    fn model(&self) -> &str {
        &self.model
    }
}
