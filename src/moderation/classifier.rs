//! The classifier on the tenant's model: the message and a list of categories (Llama
//! Guard-style) go to the chat model, which answers in JSON with the categories that apply and
//! a score for each. The answer is constrained to a JSON Schema where the server supports it
//! (Ollama's `format`, OpenAI's `response_format`), and read leniently where it does not.
//!
//! Whatever happens is recorded, never hidden: an answer that cannot be read, a model that is
//! slower than the policy's `timeout_ms`, down or absent all leave the turn to the rules alone,
//! and the [`Classification`] (kept in a flag's evidence) says which it was, with the prompt and
//! the model's raw output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use minijinja::Environment;
use serde::Serialize;
use serde_json::{Value, json};

use crate::llm::guard::Guarded;
use crate::llm::{ChatMessage, ChatRequest, LlmError, Role};

/// The classifier's name and version, recorded with each result (a new prompt is a new version).
pub const NAME: &str = "switchboard-llm-classifier/1";

/// The longest answer the model may give, in tokens (a list of a few categories with scores).
const MAX_TOKENS: u32 = 120;

/// The most characters of a message the model is shown (the rest is cut, and that is recorded).
const MAX_INPUT_CHARS: usize = 2000;

/// The most characters of the model's raw output kept in the evidence.
const MAX_RAW_CHARS: usize = 4000;

/// What each category means, as the model is told (short: small models follow short lists best).
pub fn description(category: &str) -> &'static str {
    match category {
        "violence" => "threats to hurt or kill someone",
        "self_harm" => "wanting to die, suicide, hurting oneself",
        "sexual" => "sexual content",
        "hate" => "slurs or attacks on a group of people",
        "harassment" => "insulting or bullying the reader",
        "illegal" => "help with crimes like drugs, weapons, hacking, theft",
        "pii" => "someone's private data: phone numbers, addresses, card numbers",
        _ => "",
    }
}

/// How a classification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The model answered and the answer was read.
    Ok,
    /// No answer within the policy's `timeout_ms`: rules only.
    Timeout,
    /// The model answered something that is not the JSON asked for: rules only.
    Unparsable,
    /// The model server failed or is unreachable (or its circuit breaker is open): rules only.
    Down,
    /// The gateway has no chat model configured: rules only.
    NoModel,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Timeout => "timeout",
            Status::Unparsable => "unparsable",
            Status::Down => "down",
            Status::NoModel => "no_model",
        }
    }
}

/// One classification, as kept in a flag's evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub name: &'static str,
    /// `provider model at url`.
    pub model: String,
    pub status: Status,
    /// `true` unless the status is `ok`: the decision was the rules' alone.
    pub rules_only: bool,
    /// The messages the model was given.
    pub prompt: Vec<ChatMessage>,
    /// What the model answered, as it is (cut at 4,000 characters).
    pub raw: Option<String>,
    /// Per category the model named, its score (0–1).
    pub scores: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// Time the turn waited for it.
    pub latency_ms: u64,
    /// The message was longer than the model is shown (2,000 characters).
    pub truncated: bool,
}

/// The classifier: the gateway's chat model behind its guard, and the prompt.
pub struct Classifier {
    model: Arc<Guarded>,
    env: Environment<'static>,
}

impl Classifier {
    pub fn new(model: Arc<Guarded>) -> anyhow::Result<Classifier> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template("classifier", include_str!("../../prompts/classifier.jinja"))?;
        Ok(Classifier { model, env })
    }

    /// The messages the model gets for `text` and the categories asked about.
    pub fn prompt(&self, text: &str, categories: &[&str]) -> (Vec<ChatMessage>, bool) {
        let listed: Vec<Value> = categories
            .iter()
            .map(|c| json!({ "name": c, "description": description(c) }))
            .collect();
        let system = self
            .env
            .get_template("classifier")
            .and_then(|t| t.render(json!({ "categories": listed })))
            .unwrap_or_else(|e| {
                // The template is built in and tested; this cannot happen short of a bug.
                tracing::error!(error = %e, "the built-in classifier prompt does not render");
                String::new()
            });
        let truncated = text.chars().count() > MAX_INPUT_CHARS;
        let shown: String = text.chars().take(MAX_INPUT_CHARS).collect();
        (
            vec![
                ChatMessage::new(Role::System, system.trim_end()),
                ChatMessage::new(Role::User, shown),
            ],
            truncated,
        )
    }

    /// Classifies `text` against `categories`, waiting at most `timeout`.
    pub async fn classify(
        &self,
        text: &str,
        categories: &[&str],
        timeout: Duration,
    ) -> Classification {
        let (prompt, truncated) = self.prompt(text, categories);
        let request = ChatRequest {
            messages: prompt.clone(),
            max_tokens: MAX_TOKENS,
            temperature: 0.0,
            format: Some(schema(categories)),
        };
        let started = Instant::now();
        let answered =
            tokio::time::timeout(timeout, self.model.chat(&request, &mut |_: &str| {})).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let mut out = Classification {
            name: NAME,
            model: self.model.model().describe(),
            status: Status::Ok,
            rules_only: false,
            prompt,
            raw: None,
            scores: BTreeMap::new(),
            error: None,
            latency_ms,
            truncated,
        };
        let outcome = match answered {
            Err(_) => Err((Status::Timeout, format!("no answer within {timeout:?}"))),
            Ok(Err(LlmError::Timeout(limit))) => Err((
                Status::Timeout,
                format!("the model's own limit ({limit:?}) passed"),
            )),
            Ok(Err(e)) => Err((Status::Down, e.to_string())),
            Ok(Ok(generated)) => {
                out.raw = Some(generated.text.chars().take(MAX_RAW_CHARS).collect());
                parse(&generated.text, categories).map_err(|e| (Status::Unparsable, e))
            }
        };
        match outcome {
            Ok(scores) => out.scores = scores,
            Err((status, error)) => {
                out.status = status;
                out.rules_only = true;
                out.error = Some(error);
            }
        }
        metrics::counter!("switchboard_classifier_total", "status" => out.status.as_str())
            .increment(1);
        metrics::histogram!("switchboard_classifier_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }
}

/// A classification that could not run: the gateway has no chat model.
pub fn no_model() -> Classification {
    Classification {
        name: NAME,
        model: String::new(),
        status: Status::NoModel,
        rules_only: true,
        prompt: Vec::new(),
        raw: None,
        scores: BTreeMap::new(),
        error: Some("no chat model is configured (SWITCHBOARD_LLM_URL)".into()),
        latency_ms: 0,
        truncated: false,
    }
}

/// The JSON Schema of the answer: `{"label": "safe" or one of the categories, "confidence": 0–1}`
/// — one label, as Llama Guard answers, which even a very small model can follow.
pub fn schema(categories: &[&str]) -> Value {
    let mut labels = vec!["safe"];
    labels.extend_from_slice(categories);
    json!({
        "type": "object",
        "properties": {
            "label": { "type": "string", "enum": labels },
            "confidence": { "type": "number", "minimum": 0, "maximum": 1 },
        },
        "required": ["label", "confidence"],
    })
}

/// Reads the model's answer: the first JSON object in it (models without schema support wrap
/// it in prose or a code fence), in any of the shapes models give — `{"label": "hate",
/// "confidence": 0.9}` (the one asked for; `safe` names none), `{"categories": [{"category",
/// "score"}]}`, `{"categories": ["hate"]}`, `{"categories": {"hate": 0.9}}` or `{"hate": 0.9,
/// "violence": false}`. Only the categories
/// asked about count; a score is clamped to 0–1 (`true` is 1); a category named without a
/// score counts as 1. Anything else is an error saying what was wrong.
pub fn parse(raw: &str, categories: &[&str]) -> Result<BTreeMap<String, f64>, String> {
    let start = raw
        .find('{')
        .ok_or_else(|| "no JSON object in the answer".to_owned())?;
    // serde_json refuses nesting deeper than 128 levels, so a hostile answer cannot recurse.
    let mut stream = serde_json::Deserializer::from_str(&raw[start..]).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return Err(format!("the answer's JSON does not parse: {e}")),
        None => return Err("no JSON object in the answer".into()),
    };
    let known = |name: &str| categories.contains(&name);
    let score = |v: &Value| -> Option<f64> {
        match v {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0)),
            _ => None,
        }
    };
    let mut scores = BTreeMap::new();
    let mut add = |name: &str, s: f64| {
        if known(name) {
            let entry = scores.entry(name.to_owned()).or_insert(0.0_f64);
            *entry = entry.max(s);
        }
    };
    let Value::Object(object) = value else {
        return Err("the answer is not a JSON object".into());
    };
    if let Some(label) = object.get("label") {
        let label = label
            .as_str()
            .ok_or_else(|| "\"label\" is not a string".to_owned())?;
        let confidence = match object.get("confidence").or_else(|| object.get("score")) {
            None => 1.0,
            Some(v) => score(v).ok_or_else(|| "the confidence is not a number".to_owned())?,
        };
        if label != "safe" {
            if !known(label) {
                return Err(format!(
                    "{label:?} is neither \"safe\" nor a category asked about"
                ));
            }
            add(label, confidence);
        }
        return Ok(scores);
    }
    match object.get("categories") {
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(name) => add(name, 1.0),
                    Value::Object(o) => {
                        let name = o
                            .get("category")
                            .or_else(|| o.get("name"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| "a listed category has no name".to_owned())?;
                        let s = match o.get("score") {
                            None => 1.0,
                            Some(v) => score(v)
                                .ok_or_else(|| format!("the score of {name:?} is not a number"))?,
                        };
                        add(name, s);
                    }
                    _ => return Err("a listed category is neither a name nor an object".into()),
                }
            }
        }
        Some(Value::Object(map)) => {
            for (name, v) in map {
                add(
                    name,
                    score(v).ok_or_else(|| format!("the score of {name:?} is not a number"))?,
                );
            }
        }
        Some(_) => return Err("\"categories\" is neither a list nor an object".into()),
        None => {
            let named: Vec<_> = object.iter().filter(|(k, _)| known(k)).collect();
            if named.is_empty() {
                return Err("the answer names no category and has no \"categories\"".into());
            }
            for (name, v) in named {
                add(
                    name,
                    score(v).ok_or_else(|| format!("the score of {name:?} is not a number"))?,
                );
            }
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 3] = ["violence", "hate", "self_harm"];

    #[test]
    fn reads_the_shape_asked_for_and_the_ones_models_give() {
        let s = parse(r#"{ "label" : "violence", "confidence": 0.5 }"#, &ALL).expect("parses");
        assert_eq!(s, BTreeMap::from([("violence".to_owned(), 0.5)]));
        let s = parse(r#"{"label": "safe", "confidence": 1}"#, &ALL).expect("parses");
        assert!(s.is_empty());
        let s = parse(r#"{"label": "hate"}"#, &ALL).expect("parses");
        assert_eq!(s["hate"], 1.0);
        let s = parse(
            r#"{"categories": [{"category": "violence", "score": 0.92}]}"#,
            &ALL,
        )
        .expect("parses");
        assert_eq!(s, BTreeMap::from([("violence".to_owned(), 0.92)]));
        let s = parse(r#"{"categories": []}"#, &ALL).expect("parses");
        assert!(s.is_empty());
        let s = parse(r#"{"categories": ["hate"]}"#, &ALL).expect("parses");
        assert_eq!(s["hate"], 1.0);
        let s = parse(r#"{"categories": {"hate": 0.3, "violence": true}}"#, &ALL).expect("parses");
        assert_eq!((s["hate"], s["violence"]), (0.3, 1.0));
        let s = parse(r#"{"self_harm": "0.8", "violence": false}"#, &ALL).expect("parses");
        assert_eq!((s["self_harm"], s["violence"]), (0.8, 0.0));
        // Wrapped in prose and a code fence, with a trailing remark.
        let s = parse(
            "Sure! ```json\n{\"categories\": [{\"category\": \"hate\", \"score\": 7}]}\n``` Hope that helps.",
            &ALL,
        )
        .expect("parses");
        assert_eq!(s["hate"], 1.0, "clamped to 1");
        // Categories not asked about are ignored; duplicates keep the highest score.
        let s = parse(
            r#"{"categories": [{"category": "spam", "score": 1}, {"category": "hate", "score": 0.2}, {"category": "hate", "score": 0.6}]}"#,
            &ALL,
        )
        .expect("parses");
        assert_eq!(s, BTreeMap::from([("hate".to_owned(), 0.6)]));
    }

    #[test]
    fn what_cannot_be_read_is_an_error_that_says_why() {
        for (raw, why) in [
            ("I think it is fine.", "no JSON object"),
            ("{\"categories\": [", "does not parse"),
            ("{\"categories\": 3}", "neither a list nor an object"),
            ("{\"verdict\": \"safe\"}", "names no category"),
            ("{\"categories\": [{\"score\": 1}]}", "has no name"),
            (
                "{\"categories\": [{\"category\": \"hate\", \"score\": \"high\"}]}",
                "not a number",
            ),
            ("{\"categories\": [[1]]}", "neither a name nor an object"),
            (
                "{\"label\": \"spam\", \"confidence\": 1}",
                "neither \"safe\" nor a category",
            ),
            ("{\"label\": 3}", "not a string"),
        ] {
            let e = parse(raw, &ALL).expect_err(raw);
            assert!(e.contains(why), "{raw}: {e}");
        }
    }

    #[test]
    fn hostile_answers_fail_cleanly() {
        // 100,000 levels of nesting: serde_json's recursion limit refuses it, no stack overflow.
        let deep = format!(
            "{{\"categories\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(&deep, &ALL).is_err());
        // NaN and huge numbers are not scores.
        assert!(parse(r#"{"hate": 1e999}"#, &ALL).is_err());
        // A long run of braces with no JSON is read in linear time (one pass from the first).
        let braces = "{".repeat(200_000);
        let started = Instant::now();
        assert!(parse(&braces, &ALL).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_prompt_lists_each_category_with_its_meaning_and_cuts_long_messages() {
        let model = crate::llm::chat_model(
            reqwest::Client::new(),
            &crate::llm::Endpoint {
                provider: crate::llm::Provider::Ollama,
                url: "http://127.0.0.1:9".into(),
                api_key: None,
            },
            "m",
        );
        let classifier = Classifier::new(Arc::new(Guarded::new(
            model,
            crate::llm::guard::Limits::default(),
        )))
        .expect("the built-in prompt compiles");
        let (prompt, truncated) = classifier.prompt("hello", &["violence", "hate"]);
        assert!(!truncated);
        assert!(prompt[0].content.contains("- safe: an ordinary message"));
        assert!(
            prompt[0]
                .content
                .contains("- violence: threats to hurt or kill someone")
        );
        assert!(prompt[0].content.contains("- hate: slurs or attacks"));
        assert!(!prompt[0].content.contains("self_harm"));
        assert_eq!(prompt[1].content, "hello");
        let (prompt, truncated) = classifier.prompt(&"é".repeat(5000), &["hate"]);
        assert!(truncated);
        assert_eq!(prompt[1].content.chars().count(), 2000);
    }
}
