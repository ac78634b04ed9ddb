//! Knowledge through the front door, on SQLite and PostgreSQL with the real embedded Qdrant Edge:
//! upload (JSON and multipart), idempotent re-upload, replacement, deletion with its vectors, the
//! retrieval debugger, tenant isolation, vectors surviving a restart, and the bot answering from
//! the knowledge (quoted passage with a citation) when no language model is connected.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::answer::prompts::{self, Prompts};
use switchboard::core::TenantSlug;

use common::{Backend, TestApp, urlencode};

const SLEEP: &str = "# Sleep for energy\n\n## Caffeine\n\nStop coffee by early afternoon: caffeine stays in the body for many hours.\n\n## Wake-up time\n\nWake up at the same time every day, weekends included.";

async fn upload_json(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/knowledge/documents", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads the sleep notes as admin; the answer body.
async fn upload_sleep(app: &TestApp) -> Value {
    let doc = json!({"title": "Sleep", "content": SLEEP, "format": "markdown"});
    let (status, body) = upload_json(app, &app.admin_key, doc).await;
    assert!(status == 201 || status == 200, "{status}: {body}");
    body
}

async fn search(app: &TestApp, key: &str, q: &str) -> Vec<Value> {
    let (status, body) = app
        .get(key, &format!("/v1/knowledge/search?q={}&k=5", urlencode(q)))
        .await;
    assert_eq!(status, 200, "{body}");
    body["hits"].as_array().cloned().unwrap_or_default()
}

/// The tenant's points in the vector index itself (search shows only chunks SQL still has, so it
/// cannot tell whether a document's vectors were deleted).
async fn indexed_points(app: &TestApp) -> usize {
    app.knowledge
        .index()
        .count(&app.tenant_id)
        .await
        .expect("count the index")
}

async fn documents_are_stored_once_replaced_when_changed_and_deleted_with_their_vectors(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.admin_key.clone();
    // Whatever the tenant's index holds before (nothing, for a new tenant) stays as it is.
    let before = indexed_points(&app).await;
    let doc = json!({"title": "Sleep", "content": SLEEP, "format": "markdown"});
    let (status, created) = upload_json(&app, &key, doc.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "created");
    assert!(created["chunks"].as_i64().unwrap_or(0) >= 2, "{created}");
    let id = created["document_id"].as_str().expect("id").to_owned();
    let chunks = created["chunks"].as_u64().expect("chunks") as usize;
    assert_eq!(
        indexed_points(&app).await,
        before + chunks,
        "one point per chunk"
    );

    // The same content again: nothing added.
    let (status, again) = upload_json(&app, &key, doc).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("unchanged")));
    assert_eq!(again["document_id"], id.as_str());
    assert_eq!(indexed_points(&app).await, before + chunks);

    let hits = search(&app, &key, "how late can I drink coffee?").await;
    assert!(!hits.is_empty());
    assert_eq!(hits[0]["document_id"], id.as_str());
    assert_eq!(hits[0]["title"], "Sleep");
    assert!(
        hits[0]["text"].as_str().unwrap_or("").contains("caffeine"),
        "{hits:?}"
    );
    assert!(hits[0]["score"].as_f64().unwrap_or(0.0) > 0.0);

    // Changed content under the same title replaces the chunks (and their vectors).
    let changed = json!({"title": "Sleep", "format": "markdown",
        "content": "# Sleep\n\nA dark, cool bedroom helps. Keep naps under twenty minutes."});
    let (status, replaced) = upload_json(&app, &key, changed).await;
    assert_eq!(
        (status, replaced["status"].as_str()),
        (201, Some("replaced"))
    );
    assert_eq!(replaced["document_id"], id.as_str());
    assert!(
        search(&app, &key, "coffee caffeine").await.is_empty(),
        "old chunks gone"
    );
    // Gone from the index itself, not only hidden from search: only the new chunks' points.
    let new_chunks = replaced["chunks"].as_u64().expect("chunks") as usize;
    assert!(new_chunks >= 1, "{replaced}");
    assert_eq!(
        indexed_points(&app).await,
        before + new_chunks,
        "the old version's vectors were deleted"
    );
    assert_eq!(search(&app, &key, "naps").await.len(), 1);
    let (_, list) = app.get(&key, "/v1/knowledge/documents").await;
    assert_eq!(list["documents"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["documents"][0]["indexed"], true);

    // Deleted: gone from the list and from retrieval.
    let delete = |id: String| {
        app.http
            .delete(format!("{}/v1/knowledge/documents/{id}", app.base))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(delete(id.clone()).await.expect("delete").status(), 204);
    assert!(search(&app, &key, "naps").await.is_empty());
    assert_eq!(
        indexed_points(&app).await,
        before,
        "a deleted document's vectors are deleted from the index"
    );
    assert_eq!(delete(id).await.expect("delete").status(), 404);
    let (_, list) = app.get(&key, "/v1/knowledge/documents").await;
    assert_eq!(list["documents"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

async fn uploads_are_checked_and_files_keep_their_format(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.admin_key.clone();
    let multipart = |name: &'static str, bytes: &'static [u8]| {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
        app.http
            .post(format!("{}/v1/knowledge/documents", app.base))
            .bearer_auth(&key)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    let html = b"<html><head><title>Focus at work</title><script>evil()</script></head><body><h1>Focus</h1><p>Work in fifty-minute blocks, then take a short break.</p></body></html>";
    let response = multipart("focus.html", html).await.expect("upload");
    assert_eq!(response.status(), 201);
    let hits = search(&app, &key, "break blocks").await;
    assert_eq!(hits[0]["title"], "Focus at work");
    assert!(!hits[0]["text"].as_str().unwrap_or("").contains("evil"));
    // A PDF (written by ReportLab): its text layer, headings and paragraphs, is what is found.
    let pdf: &'static [u8] = include_bytes!("fixtures/knowledge/stress-breathing.pdf");
    let response = multipart("stress-breathing.pdf", pdf)
        .await
        .expect("upload");
    assert_eq!(response.status(), 201);
    let hits = search(&app, &key, "long slow exhale heart rate").await;
    assert!(
        hits[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("two short inhales through the nose"),
        "{hits:?}"
    );
    let (_, list) = app.get(&key, "/v1/knowledge/documents").await;
    assert!(
        list["documents"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["format"] == "pdf"))
    );
    // Damaged, truncated or not a PDF at all: 400 with the reason, nothing stored.
    for bad in [&b"%PDF-1.4"[..], &pdf[..pdf.len() / 2], b"hello"] {
        let part = reqwest::multipart::Part::bytes(bad.to_vec()).file_name("bad.pdf");
        let response = app
            .http
            .post(format!("{}/v1/knowledge/documents", app.base))
            .bearer_auth(&key)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unreadable_pdf");
    }
    let (_, list) = app.get(&key, "/v1/knowledge/documents").await;
    assert_eq!(list["documents"].as_array().map(Vec::len), Some(2));
    let (status, _) = upload_json(&app, &key, json!({"content": "x", "format": "pdf"})).await;
    assert_eq!(status, 400, "PDFs come as files, not JSON text");
    let (status, body) =
        upload_json(&app, &key, json!({"title": "Blank", "content": "  \n "})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("empty_document"))
    );
    let (status, _) = upload_json(&app, &key, json!({"content": "x", "format": "docx"})).await;
    assert_eq!(status, 400);
    let (status, _) = upload_json(&app, &app.widget_key, json!({"content": "x"})).await;
    assert_eq!(status, 403, "the public widget key cannot upload");
    let (status, body) = app.get(&key, "/v1/knowledge/search").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("missing_query"))
    );
    app.stop().await;
}

async fn tenants_never_see_each_others_knowledge(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let other = app
        .store
        .create_tenant(&TenantSlug::parse("globex").expect("slug"), "Globex")
        .await
        .expect("tenant");
    let (_, ours) = upload_json(
        &app,
        &app.admin_key,
        json!({"title": "Secret plan", "content": "The zeppelin launch is on Friday."}),
    )
    .await;
    assert_eq!(search(&app, &app.admin_key, "zeppelin").await.len(), 1);
    assert!(search(&app, &other.admin_key, "zeppelin").await.is_empty());
    let stolen = app
        .http
        .delete(format!(
            "{}/v1/knowledge/documents/{}",
            app.base,
            ours["document_id"].as_str().unwrap_or("")
        ))
        .bearer_auth(&other.admin_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(stolen.status(), 404);
    assert_eq!(search(&app, &app.admin_key, "zeppelin").await.len(), 1);
    app.stop().await;
}

async fn the_index_survives_a_restart(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    upload_sleep(&app).await;
    let app = app.restart().await;
    let hits = search(&app, &app.admin_key, "caffeine afternoon").await;
    assert!(!hits.is_empty(), "vectors lost across a restart");
    app.stop().await;
}

async fn the_bot_answers_from_knowledge_with_a_citation_when_no_model_is_connected(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // No documents yet: the honest "no knowledge" reply.
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    assert_eq!(reply["reply"]["text"], no_answer("no_documents"));
    let created = upload_sleep(&app).await;
    let reply = app
        .send(
            "ana",
            "When should I stop drinking coffee?",
            json!({"wait": true}),
        )
        .await;
    let text = reply["reply"]["text"].as_str().unwrap_or("");
    assert!(text.contains("Stop coffee by early afternoon"), "{text}");
    assert!(
        text.contains("no language model"),
        "marked as a quote: {text}"
    );
    let citations = &reply["reply"]["citations"];
    assert_eq!(citations[0]["document_id"], created["document_id"]);
    assert_eq!(citations[0]["title"], "Sleep");
    // The widget lists it under the answer as "[1] Sleep — Caffeine".
    assert_eq!(citations[0]["n"], 1, "{citations}");
    assert_eq!(citations[0]["section"], "Caffeine", "{citations}");
    // Stored with the reply and returned by the API.
    let conversation = reply["conversation_id"].as_str().expect("conversation");
    let messages = app.messages(conversation).await;
    let stored = messages
        .iter()
        .rev()
        .find(|m| m["author"] == "bot")
        .expect("reply");
    assert_eq!(stored["citations"][0]["title"], "Sleep");
    // Nothing relevant: said so, nothing invented.
    let reply = app
        .send(
            "ana",
            "Which zeppelin flies highest?",
            json!({"wait": true}),
        )
        .await;
    assert_eq!(reply["reply"]["text"], no_answer("no_match"));
    assert_eq!(reply["reply"]["citations"], json!([]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    app.stop().await;
}

both_backends!(
    documents_are_stored_once_replaced_when_changed_and_deleted_with_their_vectors,
    uploads_are_checked_and_files_keep_their_format,
    tenants_never_see_each_others_knowledge,
    the_index_survives_a_restart,
    the_bot_answers_from_knowledge_with_a_citation_when_no_model_is_connected,
);

/// The built-in `no_answer` reply for `reason`.
fn no_answer(reason: &str) -> String {
    let mut context = prompts::sample_context("no_answer");
    context.reason = Some(reason.into());
    Prompts::default()
        .render("no_answer", &context)
        .expect("the built-in template renders")
}
