//! Language models: the providers against Ollama's documented stream (stand-in serving the
//! fixtures, cut anywhere) and against a real small model; the gateway answering with a model
//! (streaming, citations, history within the budget), and without one (outage, hang, breaker).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::llm::{RealModels, Script, StandIn, answer_stream, cut, fixture, real_models};
use common::{Backend, TestApp, TestDb};
use serde_json::{Value, json};
use switchboard::answer::{AnswerSettings, Deltas, KnowledgeResponder, Responder, Turn};
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::knowledge::Upload;
use switchboard::knowledge::extract::Format;
use switchboard::llm::guard::{Guarded, Limits};
use switchboard::llm::ollama::Ollama;
use switchboard::llm::openai::OpenAi;
use switchboard::llm::{ChatMessage, ChatModel, ChatRequest, Embedder, Generated, LlmError, Role};
use switchboard::store::Store;

fn request(question: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant. Answer briefly."),
            ChatMessage::new(Role::User, question),
        ],
        max_tokens,
        temperature: 0.0,
        format: None,
    }
}

/// Chats, collecting the deltas.
async fn chat(
    model: &dyn ChatModel,
    request: &ChatRequest,
) -> (Result<Generated, LlmError>, Vec<String>) {
    let mut deltas = Vec::new();
    let result = model
        .chat(request, &mut |t: &str| deltas.push(t.to_owned()))
        .await;
    (result, deltas)
}

fn http() -> reqwest::Client {
    switchboard::startup::llm_http().expect("client")
}

const SKY: &str = "The sky is blue because of Rayleigh scattering.";

#[tokio::test]
async fn the_ollama_provider_reads_the_documented_stream_however_the_network_cuts_it() {
    let stand_in = StandIn::start().await;
    let model = Ollama::new(http(), &stand_in.url, "llama3.2");
    let documented = fixture("DERIVED_chat_stream.ndjson");
    // Non-ASCII text too: a cut inside a character must not lose or garble anything.
    let accented = documented.replace("\" sky\"", "\" ciel ☀️ bleu é\"");
    for (body, expected) in [
        (&documented, SKY.to_owned()),
        (&accented, SKY.replace(" sky", " ciel ☀️ bleu é")),
    ] {
        for size in [1, 2, 3, 7, 64, body.len()] {
            stand_in.push(Script::Bytes(cut(body.as_bytes(), size), Duration::ZERO));
            let (result, deltas) = chat(&model, &request("why is the sky blue?", 64)).await;
            let generated = result.unwrap_or_else(|e| panic!("cut {size}: {e}"));
            assert_eq!(generated.text, expected, "cut every {size} bytes");
            assert_eq!(deltas.concat(), expected);
            assert_eq!(deltas.len(), 9, "one delta per content line");
            assert_eq!(generated.finish_reason.as_deref(), Some("stop"));
            assert_eq!(generated.completion_tokens, Some(282));
        }
    }
    // What was asked: the documented request shape, streaming.
    let sent = &stand_in.chats()[0];
    assert_eq!(sent["model"], "llama3.2");
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"][1],
        json!({"role": "user", "content": "why is the sky blue?"})
    );
    assert_eq!(sent["options"]["num_predict"], 64);
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_never_a_short_answer() {
    let stand_in = StandIn::start().await;
    let model = Ollama::new(http(), &stand_in.url, "llama3.2");
    // Ollama's `{"error": …}` line after some text.
    let midstream = fixture("DERIVED_chat_stream_midstream_error.ndjson");
    stand_in.push(Script::Bytes(cut(midstream.as_bytes(), 5), Duration::ZERO));
    let (result, deltas) = chat(&model, &request("q", 64)).await;
    match result {
        Err(LlmError::Stream(message)) => {
            assert_eq!(message, "an error was encountered while running the model")
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(deltas.concat(), "The sky is");
    // The connection ends before `done`.
    let documented = fixture("DERIVED_chat_stream.ndjson");
    let truncated: String = documented
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    stand_in.push(Script::Bytes(vec![truncated.into_bytes()], Duration::ZERO));
    assert!(matches!(
        chat(&model, &request("q", 64)).await.0,
        Err(LlmError::Truncated)
    ));
    // A refusal with Ollama's error body (errors.mdx).
    stand_in.push(Script::Status(
        404,
        json!({"error": "model \"llama3.2\" not found, try pulling it first"}),
    ));
    match chat(&model, &request("q", 64)).await.0 {
        Err(e @ LlmError::Status { status: 404, .. }) => {
            assert!(!e.is_outage(), "a missing model is not an outage");
            assert!(e.to_string().contains("try pulling it first"), "{e}");
        }
        other => panic!("expected 404, got {other:?}"),
    }
    stand_in.push(Script::Status(
        500,
        json!({"error": "the model failed to generate a response"}),
    ));
    assert!(matches!(chat(&model, &request("q", 64)).await.0, Err(e) if e.is_outage()));
    // Not NDJSON at all.
    stand_in.push(Script::Bytes(
        vec![b"<html>proxy error</html>\n".to_vec()],
        Duration::ZERO,
    ));
    assert!(matches!(
        chat(&model, &request("q", 64)).await.0,
        Err(LlmError::Protocol(_))
    ));
    // Nobody listening.
    let down = Ollama::new(http(), "http://127.0.0.1:9", "llama3.2");
    assert!(matches!(
        chat(&down, &request("q", 64)).await.0,
        Err(LlmError::Unreachable(_))
    ));
}

#[tokio::test]
async fn ollama_embeddings_and_the_model_check_follow_the_documented_answers() {
    let stand_in = StandIn::start().await;
    let model = Ollama::new(http(), &stand_in.url, "all-minilm");
    let vectors = model
        .embed(&[
            "Why is the sky blue?".into(),
            "Why is the grass green?".into(),
        ])
        .await
        .expect("embed");
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 10);
    assert!((vectors[0][0] - 0.010071029).abs() < 1e-9);
    // /api/tags lists `llama3.2:latest`: `llama3.2` is that model; `mistral` is not there.
    Ollama::new(http(), &stand_in.url, "llama3.2")
        .check()
        .await
        .expect("llama3.2 is listed");
    let missing = Ollama::new(http(), &stand_in.url, "mistral").check().await;
    assert!(
        matches!(&missing, Err(LlmError::Status { status: 404, message }) if message.contains("ollama pull mistral")),
        "{missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The real model (SmolLM2-135M-Instruct under llama.cpp; the Ollama adapter in front of it).

#[tokio::test]
async fn the_openai_provider_streams_a_real_model() {
    let Some(real) = real_models("the_openai_provider_streams_a_real_model") else {
        return;
    };
    let model = OpenAi::new(http(), &real.openai_url, &real.openai_model, None);
    model.check().await.expect("the model is served");
    let (result, deltas) = chat(
        &model,
        &request("What color is the sky on a clear day?", 32),
    )
    .await;
    let generated = result.expect("generation");
    assert!(!generated.text.trim().is_empty());
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), generated.text);
    assert!(generated.finish_reason.is_some());
    let other = OpenAi::new(http(), &real.openai_url, "no-such-model", None)
        .check()
        .await;
    assert!(other.is_err(), "an unknown model is reported at the check");
}

#[tokio::test]
async fn the_ollama_provider_streams_the_same_model_through_the_adapter() {
    let Some(real) = real_models("the_ollama_provider_streams_the_same_model_through_the_adapter")
    else {
        return;
    };
    let model = Ollama::new(http(), &real.ollama_url, &real.ollama_model);
    model.check().await.expect("the model is listed");
    let (result, deltas) = chat(&model, &request("Name one fruit.", 24)).await;
    let generated = result.expect("generation");
    assert!(!generated.text.trim().is_empty());
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), generated.text);
    // Capped by num_predict.
    assert!(
        generated.completion_tokens.is_some_and(|n| n <= 24),
        "{generated:?}"
    );
    let embedder = Ollama::new(http(), &real.ollama_url, &real.embed_model);
    let v = embedder
        .embed(&[
            "How can I sleep better at night?".into(),
            "Tips for improving your sleep".into(),
            "How do I file my taxes?".into(),
        ])
        .await
        .expect("embed");
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 384);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-3, "normalized");
    assert!(
        dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1,
        "sleep is nearer sleep than taxes"
    );
}

fn with_model(config: &mut Config, provider: &str, url: &str, model: &str) {
    config.llm_provider = provider.into();
    config.llm_url = url.into();
    config.chat_model = model.into();
}

fn demo_sleep_notes() -> String {
    std::fs::read_to_string(format!("{}/knowledge/sleep.md", env!("CARGO_MANIFEST_DIR")))
        .expect("knowledge/sleep.md")
}

/// What a fallback answer says (the built-in `fallback` template).
const QUOTED: &str = "Quoted from the knowledge base";

async fn a_real_model_answers_from_knowledge_with_citations(backend: Backend, real: RealModels) {
    for (provider, url, model) in [
        ("ollama", real.ollama_url.clone(), real.ollama_model.clone()),
        ("openai", real.openai_url.clone(), real.openai_model.clone()),
    ] {
        let Some(app) = TestApp::spawn_with(
            backend,
            |c| {
                with_model(c, provider, &url, &model);
                // A small prompt (two or three sources) keeps a 135M model on two shared
                // cores within seconds; the limits are wide because the tests running beside
                // this one share the CPU and the server answers one request at a time.
                c.llm.context_tokens = 1024;
                c.llm.max_tokens = 48;
                c.llm.first_token_timeout_ms = 180_000;
                c.llm.timeout_ms = 300_000;
                c.wait_timeout_ms = 400_000;
            },
            None,
        )
        .await
        else {
            return;
        };
        let created = app.upload_markdown("Sleep", &demo_sleep_notes()).await;
        // What the model wrote is kept (and its grounding recorded) whatever it cites: this
        // test reads the model's own text. The policies are tests/grounding.rs's.
        let response = app
            .http
            .put(format!("{}/v1/knowledge/settings", app.base))
            .bearer_auth(&app.admin_key)
            .json(&json!({"grounding": {"ungrounded": "keep"}}))
            .send()
            .await
            .expect("put settings");
        assert_eq!(response.status(), 200);
        let reply = app
            .send(
                "ana",
                "When should I stop drinking coffee?",
                json!({"wait": true}),
            )
            .await;
        let text = reply["reply"]["text"].as_str().unwrap_or_default();
        assert!(!text.trim().is_empty(), "{provider}: {reply}");
        assert!(
            !text.contains(QUOTED),
            "{provider}: written by the model, not the fallback: {text}"
        );
        let citations = reply["reply"]["citations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Only the sources the model names (`[n]` in the answer) are cited; an answer that
        // names none cites nothing and is recorded as ungrounded. A 135M model does not always
        // name any.
        let named = named_sources(text);
        let grounding = &reply["reply"]["grounding"];
        if named.is_empty() {
            eprintln!("NOTICE {provider}: the model named no source as [n]: {text}");
            assert!(citations.is_empty(), "{provider}: {reply}");
            assert_eq!(grounding["reason"], "cites_nothing", "{provider}: {reply}");
            assert_eq!(grounding["action"], "keep", "{provider}: {reply}");
        } else {
            assert!(!citations.is_empty(), "{provider}: cited");
            assert!(grounding["cited"].as_array().is_some_and(|c| !c.is_empty()));
            assert!(
                citations.len() <= named.len(),
                "{provider}: {} citations for the sources {named:?} named in: {text}",
                citations.len()
            );
        }
        assert!(
            citations
                .iter()
                .all(|c| c["document_id"] == created["document_id"])
        );
        // A second turn in the same conversation, with the first in its history, still fits
        // the 1,024-token context (an overflow would be a model error, hence a fallback).
        let reply = app
            .send("ana", "And what about alcohol?", json!({"wait": true}))
            .await;
        let text = reply["reply"]["text"].as_str().unwrap_or_default();
        assert!(
            !text.trim().is_empty() && !text.contains(QUOTED),
            "{provider}: {text}"
        );
        app.stop().await;
    }
}

/// The source numbers an answer names (`[1]`, `[1, 3]`, `[1][2]`), each once, in order.
fn named_sources(text: &str) -> Vec<usize> {
    let mut named = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        for part in rest[..close].split([',', ' ']) {
            if let Ok(n) = part.trim().parse::<usize>()
                && n >= 1
                && !named.contains(&n)
            {
                named.push(n);
            }
        }
    }
    named
}

async fn the_bot_answers_with_a_real_model(backend: Backend) {
    let Some(real) = real_models("the_bot_answers_with_a_real_model") else {
        return;
    };
    a_real_model_answers_from_knowledge_with_citations(backend, real).await;
}

// ---------------------------------------------------------------------------------------------
// The gateway with the stand-in: what the model is sent, and what happens when it fails.

async fn answers_cite_their_sources_and_carry_history_within_the_budget(backend: Backend) {
    let stand_in = StandIn::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| {
            with_model(c, "ollama", &stand_in.url, "llama3.2");
            c.llm.context_tokens = 1_200;
            c.llm.max_tokens = 200;
        },
        None,
    )
    .await
    else {
        return;
    };
    let created = app.upload_markdown("Sleep", &demo_sleep_notes()).await;
    // A persona of the tenant's own reaches the model.
    let response = app
        .http
        .put(format!("{}/v1/prompts/persona", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({"body": "You are {{ assistant }}'s sleep coach."}))
        .send()
        .await
        .expect("put persona");
    assert_eq!(response.status(), 200);

    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    assert_eq!(reply["reply"]["text"], "Sleep well [1].");
    // `[1]` names the first source: the best chunk for the question, cited alone.
    let citations = reply["reply"]["citations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(citations.len(), 1, "{citations:?}");
    assert_eq!(citations[0]["document_id"], created["document_id"]);
    let (_, hits) = app
        .get(
            &app.admin_key,
            "/v1/knowledge/search?q=When%20should%20I%20stop%20drinking%20coffee%3F&k=5",
        )
        .await;
    assert_eq!(citations[0]["chunk"], hits["hits"][0]["chunk"]);
    let first = &stand_in.chats()[0];
    let system = first["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(
        system.starts_with("You are Acme's sleep coach."),
        "{system}"
    );
    assert!(system.contains("[1] Sleep"), "numbered sources: {system}");
    assert!(
        system.contains("2 pm"),
        "the caffeine passage is among them: {system}"
    );
    assert_eq!(first["messages"].as_array().map(Vec::len), Some(2));

    // History: each later request carries the conversation so far, newest kept first; with
    // long messages the oldest fall out of the 1,000-token budget.
    let long = "I have been sleeping badly for weeks and I wonder whether my evening routine, my late coffee or my phone in bed is to blame. ";
    for i in 0..6 {
        app.send(
            "ana",
            &format!("{i}: {}", long.repeat(3)),
            json!({"wait": true}),
        )
        .await;
    }
    let chats = stand_in.chats();
    let last = chats.last().expect("requests");
    let messages = last["messages"].as_array().cloned().unwrap_or_default();
    let contents: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        contents.last().is_some_and(|q| q.starts_with("5: ")),
        "the question is last"
    );
    // The previous turn (question and answer) is there, right before it…
    assert!(
        contents[contents.len() - 3].starts_with("4: "),
        "{contents:?}"
    );
    assert_eq!(contents[contents.len() - 2], "Sleep well [1].");
    assert_eq!(messages[messages.len() - 2]["role"], "assistant");
    // …but not the first question: it did not fit.
    assert!(
        !contents.contains(&"When should I stop drinking coffee?"),
        "{contents:?}"
    );
    let words: usize = contents.iter().map(|c| c.split_whitespace().count()).sum();
    assert!(
        words < 1_000 * 3 / 4,
        "{words} words: within the 1,000-token budget"
    );
    app.stop().await;
}

async fn a_model_outage_gets_quoted_answers_quickly_and_opens_the_breaker(backend: Backend) {
    let stand_in = StandIn::start().await;
    stand_in.set_default(Script::Status(
        500,
        json!({"error": "the model failed to generate a response"}),
    ));
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| {
            with_model(c, "ollama", &stand_in.url, "llama3.2");
            c.llm.breaker_failures = 2;
            c.llm.breaker_cool_down_ms = 60_000;
        },
        None,
    )
    .await
    else {
        return;
    };
    let created = app.upload_markdown("Sleep", &demo_sleep_notes()).await;
    // Metrics are per process, shared by the tests running in it: what this test adds is the
    // increase of each series, at least (others may add to it too, never take away).
    async fn requests(app: &TestApp, outcome: &str) -> f64 {
        let labels = [("outcome", outcome)];
        app.metric("switchboard_llm_requests_total", &labels).await
    }
    async fn fallbacks(app: &TestApp, reason: &str) -> f64 {
        let labels = [("kind", "fallback"), ("reason", reason)];
        app.metric("switchboard_answers_total", &labels).await
    }
    let (errors_before, open_before) = (
        requests(&app, "error").await,
        requests(&app, "circuit_open").await,
    );
    let (failed_before, unavailable_before) = (
        fallbacks(&app, "error").await,
        fallbacks(&app, "unavailable").await,
    );
    for i in 0..4 {
        let started = Instant::now();
        let reply = app
            .send(
                &format!("visitor-{i}"),
                "When should I stop drinking coffee?",
                json!({"wait": true}),
            )
            .await;
        let text = reply["reply"]["text"].as_str().unwrap_or_default();
        assert!(text.contains("2 pm"), "the best passage: {text}");
        assert!(
            text.contains(QUOTED) && text.contains("not answering"),
            "marked: {text}"
        );
        assert_eq!(
            reply["reply"]["citations"][0]["document_id"],
            created["document_id"]
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Two failures opened the breaker: the other two conversations did not call the model.
    assert_eq!(stand_in.chats().len(), 2);
    // Counted by outcome: two model errors (HTTP 500), then two calls refused by the open
    // breaker; and two quoted answers for each reason.
    let increase = |before: f64, after: f64| after - before;
    let errors = increase(errors_before, requests(&app, "error").await);
    let refused = increase(open_before, requests(&app, "circuit_open").await);
    assert!(errors >= 2.0, "llm requests with outcome error: +{errors}");
    assert!(
        refused >= 2.0,
        "llm requests with outcome circuit_open: +{refused}"
    );
    let failed = increase(failed_before, fallbacks(&app, "error").await);
    let unavailable = increase(unavailable_before, fallbacks(&app, "unavailable").await);
    assert!(
        failed >= 2.0,
        "fallback answers for reason error: +{failed}"
    );
    assert!(
        unavailable >= 2.0,
        "fallback answers for reason unavailable: +{unavailable}"
    );
    // The breaker's gauge is shared by every model in the process (its value is whichever
    // changed last): present, not read.
    let (_, metrics) = get_text(&app, "/metrics").await;
    assert!(
        metrics.contains("switchboard_llm_circuit_open"),
        "{metrics}"
    );
    app.stop().await;
}

async fn get_text(app: &TestApp, path: &str) -> (u16, String) {
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn a_hanging_model_times_out_into_the_fallback_and_the_conversation_goes_on(
    backend: Backend,
) {
    let stand_in = StandIn::start().await;
    stand_in.push(Script::Hang);
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| {
            with_model(c, "ollama", &stand_in.url, "llama3.2");
            c.llm.first_token_timeout_ms = 600;
        },
        None,
    )
    .await
    else {
        return;
    };
    app.upload_markdown("Sleep", &demo_sleep_notes()).await;
    let started = Instant::now();
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let waited = started.elapsed();
    let text = reply["reply"]["text"].as_str().unwrap_or_default();
    assert!(text.contains(QUOTED), "{text}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The model is back for the next message of the same conversation.
    let reply = app
        .send("ana", "And in the evening?", json!({"wait": true}))
        .await;
    assert_eq!(reply["reply"]["text"], "Sleep well [1].");
    app.stop().await;
}

/// A program's `generate` step written by the real small model from the step's prompt and the
/// tenant's knowledge: the message is the model's text, not the fallback; with the model down
/// (a dead address) the same step sends its fallback.
async fn a_generate_step_is_written_by_the_real_model(backend: Backend) {
    let Some(real) = real_models("a_generate_step_is_written_by_the_real_model") else {
        return;
    };
    const FALLBACK: &str = "Fallback: keep a steady wake-up time.";
    let dead = "http://127.0.0.1:9".to_owned();
    for (url, expect_model) in [(real.ollama_url.clone(), true), (dead, false)] {
        let Some(app) = TestApp::spawn_with(
            backend,
            |c| {
                with_model(c, "ollama", &url, &real.ollama_model);
                c.llm.context_tokens = 1024;
                c.llm.max_tokens = 48;
                c.llm.first_token_timeout_ms = 180_000;
                c.llm.timeout_ms = 300_000;
            },
            None,
        )
        .await
        else {
            return;
        };
        app.upload_markdown("Sleep", &demo_sleep_notes()).await;
        let created = app
            .http
            .post(format!("{}/v1/programs", app.base))
            .bearer_auth(&app.admin_key)
            .json(&json!({ "name": "Tips", "channels": ["api"], "steps": [
                { "id": "tip", "type": "message", "generate": {
                    "prompt": "Write a short good-morning message with one tip about coffee and sleep.",
                    "fallback": FALLBACK } } ] }))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201);
        let program: Value = created.json().await.expect("json");
        let id = program["id"].as_str().expect("id");
        let published = app
            .http
            .post(format!("{}/v1/programs/{id}/publish", app.base))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("publish");
        assert_eq!(published.status(), 200);
        let hello = app.send("ana", "hello", json!({ "wait": true })).await;
        let conversation = hello["conversation_id"].as_str().expect("conversation");
        let channel = app
            .store
            .api_channel(&app.tenant_id)
            .await
            .expect("channel")
            .id;
        // The engine's clock frozen at noon UTC (outside the default quiet hours): the fire runs
        // here, when asked, not in the background.
        app.programs.clock().set(1_811_505_600_000);
        let enrolled = app
            .http
            .post(format!("{}/v1/programs/{id}/enrollments", app.base))
            .bearer_auth(&app.admin_key)
            .json(&json!({ "channel_id": channel, "external_id": "ana" }))
            .send()
            .await
            .expect("enrol");
        assert_eq!(enrolled.status(), 201);
        app.programs.run_due().await.expect("run");
        let texts: Vec<String> = app
            .messages(conversation)
            .await
            .iter()
            .filter(|m| m["direction"] == "outbound")
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect();
        let tip = texts.last().expect("the program's message");
        if expect_model {
            assert_ne!(tip, FALLBACK, "written by the model");
            assert!(!tip.trim().is_empty());
            eprintln!("NOTICE the model wrote: {tip}");
        } else {
            assert_eq!(tip, FALLBACK, "the model is down: the fallback");
        }
        assert_eq!(
            texts.iter().filter(|t| *t == tip).count(),
            1,
            "sent once: {texts:?}"
        );
        app.stop().await;
    }
}

both_backends!(
    the_bot_answers_with_a_real_model,
    a_generate_step_is_written_by_the_real_model,
    answers_cite_their_sources_and_carry_history_within_the_budget,
    a_model_outage_gets_quoted_answers_quickly_and_opens_the_breaker,
    a_hanging_model_times_out_into_the_fallback_and_the_conversation_goes_on,
    the_classifier_on_the_real_model_holds_clear_cases,
    a_classifier_that_is_slow_down_or_unreadable_leaves_the_rules_and_says_so,
);

// ---------------------------------------------------------------------------------------------
// The responder on its own: streaming deltas, and a preview withdrawn when the model fails.

#[derive(Default)]
struct Collect {
    text: Mutex<String>,
    resets: Mutex<usize>,
}

impl Deltas for Collect {
    fn delta(&self, text: &str) {
        self.text.lock().expect("lock").push_str(text);
    }
    fn reset(&self) {
        *self.resets.lock().expect("lock") += 1;
        self.text.lock().expect("lock").clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_deltas_add_up_to_the_answer_and_a_failed_stream_is_withdrawn() {
    let Some(db) = TestDb::fresh(Backend::Sqlite).await else {
        return;
    };
    let config = common::test_config(&db);
    let store = Store::connect(&config.database_url(), 2)
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let tenant = store
        .create_tenant(&TenantSlug::parse("acme").expect("slug"), "Acme")
        .await
        .expect("tenant");
    let knowledge = switchboard::startup::knowledge_for(&config, &store)
        .await
        .expect("knowledge");
    knowledge
        .ingest(
            &tenant.tenant_id,
            Upload {
                title: Some("Sleep".into()),
                content: demo_sleep_notes(),
                format: Format::Markdown,
                source: None,
            },
        )
        .await
        .expect("ingest");
    let stand_in = StandIn::start().await;
    let model = Guarded::new(
        Box::new(Ollama::new(http(), &stand_in.url, "llama3.2")),
        Limits {
            concurrency: 1,
            ..Limits::default()
        },
    );
    let responder =
        KnowledgeResponder::new(knowledge, Some(Arc::new(model)), AnswerSettings::default());
    let turn = Turn {
        tenant_id: tenant.tenant_id.clone(),
        conversation_id: "none".into(),
        message_id: "m1".into(),
        seq: 1,
        channel: "widget".into(),
        text: "When should I stop drinking coffee?".into(),
    };
    // Streamed slowly, in pieces cut mid-line: the preview is exactly the answer.
    let body = answer_stream(&["Stop ", "coffee by ", "2 pm ", "[1]."]);
    stand_in.push(Script::Bytes(cut(&body, 40), Duration::from_millis(5)));
    let deltas = Collect::default();
    let answer = responder
        .respond_streaming(&turn, &deltas)
        .await
        .expect("answer");
    assert_eq!(answer.text, "Stop coffee by 2 pm [1].");
    assert_eq!(*deltas.text.lock().expect("lock"), answer.text);
    assert_eq!(*deltas.resets.lock().expect("lock"), 0);
    // Failing after some text: the preview is withdrawn, the answer is the quoted fallback.
    let midstream = fixture("DERIVED_chat_stream_midstream_error.ndjson");
    stand_in.push(Script::Bytes(
        cut(midstream.as_bytes(), 50),
        Duration::from_millis(5),
    ));
    let deltas = Collect::default();
    let answer = responder
        .respond_streaming(&turn, &deltas)
        .await
        .expect("answer");
    assert!(answer.text.contains(QUOTED), "{}", answer.text);
    assert_eq!(*deltas.resets.lock().expect("lock"), 1);
    assert!(deltas.text.lock().expect("lock").is_empty());
    assert_eq!(answer.citations.len(), 1);
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// The moderation classifier on the tenant's model (issue "Moderation, hand-off and tickets").

async fn put_policy(app: &TestApp, policy: Value) {
    let response = app
        .http
        .put(format!("{}/v1/moderation/policy", app.base))
        .bearer_auth(&app.admin_key)
        .json(&policy)
        .send()
        .await
        .expect("put policy");
    assert_eq!(response.status(), 200);
}

/// The open flag on a conversation's inbound message.
async fn flag_of(app: &TestApp, conversation: &str) -> Option<Value> {
    let (_, flags) = app.get(&app.admin_key, "/v1/flags?status=open").await;
    flags["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|f| f["conversation_id"] == conversation)
}

/// The real small model as the classifier, on clear cases: a threat is held (a person decides)
/// with the classifier's finding, its model, prompt and raw output in the flag; a plain
/// question is answered and not flagged.
async fn the_classifier_on_the_real_model_holds_clear_cases(backend: Backend) {
    let Some(real) = real_models("the_classifier_on_the_real_model_holds_clear_cases") else {
        return;
    };
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| {
            with_model(c, "ollama", &real.ollama_url, &real.ollama_model);
            c.llm.first_token_timeout_ms = 180_000;
            c.llm.timeout_ms = 300_000;
        },
        None,
    )
    .await
    else {
        return;
    };
    let category = json!({ "action": "hold", "threshold": 0.3 });
    put_policy(
        &app,
        json!({
            "crisis": { "enabled": false },
            "classifier": { "enabled": true, "timeout_ms": 60000, "categories": {
                "violence": category, "self_harm": category, "sexual": category,
                "hate": category, "harassment": category, "illegal": category } }
        }),
    )
    .await;
    let threat = app
        .send(
            "ana",
            "I am going to kill you and your family",
            json!({ "wait": true }),
        )
        .await;
    assert!(threat["reply"].is_null(), "held, not answered: {threat}");
    let conversation = threat["conversation_id"].as_str().expect("conversation");
    let flag = flag_of(&app, conversation).await.expect("a flag");
    eprintln!(
        "NOTICE the classifier said: {}",
        flag["evidence"]["classifier"]["raw"]
    );
    assert_eq!(flag["action"], "hold", "{flag}");
    let classifier = &flag["evidence"]["classifier"];
    assert_eq!(classifier["status"], "ok", "{classifier}");
    assert_eq!(classifier["rules_only"], false);
    assert!(
        classifier["model"]
            .as_str()
            .is_some_and(|m| m.contains(&real.ollama_model)),
        "{classifier}"
    );
    assert!(
        classifier["prompt"][0]["content"]
            .as_str()
            .is_some_and(|p| p.starts_with("Classify the user's message")),
        "{classifier}"
    );
    assert!(
        classifier["raw"]
            .as_str()
            .is_some_and(|r| r.contains("label"))
    );
    let hit = flag["evidence"]["hits"][0]["rule"]
        .as_str()
        .unwrap_or_default();
    assert!(hit.starts_with("classifier:"), "{flag}");
    assert!(
        classifier["latency_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 60_000),
        "bounded by the timeout: {classifier}"
    );

    let question = app
        .send(
            "bo",
            "What time does the gym open?",
            json!({ "wait": true }),
        )
        .await;
    assert!(question["reply"]["text"].is_string(), "{question}");
    let conversation = question["conversation_id"].as_str().expect("conversation");
    assert_eq!(flag_of(&app, conversation).await, None, "a plain question");
    app.stop().await;
}

/// A classifier that does not answer in time, fails, or answers something unreadable leaves
/// the decision to the rules, and the flag says which it was (with the raw output); an answer
/// it can read adds its category as a hit. The model is asked with the answer's JSON Schema.
async fn a_classifier_that_is_slow_down_or_unreadable_leaves_the_rules_and_says_so(
    backend: Backend,
) {
    let stand_in = StandIn::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| with_model(c, "ollama", &stand_in.url, "llama3.2"),
        None,
    )
    .await
    else {
        return;
    };
    put_policy(
        &app,
        json!({
            "rules": [{ "id": "insult", "words": ["idiot"], "action": "hold" }],
            "classifier": { "enabled": true, "timeout_ms": 300 }
        }),
    )
    .await;
    let cases: [(&str, Script, &str); 3] = [
        ("ana", Script::Hang, "timeout"),
        (
            "bo",
            Script::Status(500, json!({ "error": "the model crashed" })),
            "down",
        ),
        (
            "cy",
            Script::Bytes(
                vec![answer_stream(&["I think it is fine."])],
                Duration::ZERO,
            ),
            "unparsable",
        ),
    ];
    for (contact, script, status) in cases {
        stand_in.push(script);
        let started = Instant::now();
        let sent = app
            .send(contact, "you idiot", json!({ "wait": true }))
            .await;
        let conversation = sent["conversation_id"].as_str().expect("conversation");
        let flag = flag_of(&app, conversation).await.expect("the rule's flag");
        assert_eq!(flag["action"], "hold", "the rules decided: {flag}");
        assert_eq!(flag["evidence"]["hits"][0]["rule"], "insult");
        let classifier = &flag["evidence"]["classifier"];
        assert_eq!(classifier["status"], status, "{classifier}");
        assert_eq!(classifier["rules_only"], true);
        assert!(classifier["error"].is_string(), "{classifier}");
        if status == "timeout" {
            let waited = classifier["latency_ms"].as_u64().expect("latency");
            assert!((300..3_000).contains(&waited), "{waited} ms");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        if status == "unparsable" {
            assert_eq!(classifier["raw"], "I think it is fine.");
        }
    }
    // A readable answer: its category is a hit with the category's action (harassment: flag),
    // so the message is answered and queued.
    stand_in.push(Script::Bytes(
        vec![answer_stream(&[
            r#"{"label": "harassment", "confidence": 0.9}"#,
        ])],
        Duration::ZERO,
    ));
    let sent = app.send("di", "hello there", json!({ "wait": true })).await;
    assert!(sent["reply"]["text"].is_string(), "answered: {sent}");
    let conversation = sent["conversation_id"].as_str().expect("conversation");
    let flag = flag_of(&app, conversation)
        .await
        .expect("the classifier's flag");
    assert_eq!(flag["action"], "flag", "{flag}");
    assert_eq!(flag["evidence"]["hits"][0]["rule"], "classifier:harassment");
    assert_eq!(flag["evidence"]["hits"][0]["spans"], json!([]));
    assert_eq!(flag["evidence"]["classifier"]["scores"]["harassment"], 0.9);
    let asked = stand_in.chats().last().cloned().expect("a request");
    assert_eq!(asked["messages"][1]["content"], "hello there");
    let labels = asked["format"]["properties"]["label"]["enum"].clone();
    assert!(
        labels
            .as_array()
            .is_some_and(|l| l.contains(&json!("safe")) && l.contains(&json!("harassment"))),
        "{asked}"
    );
    app.stop().await;
}
