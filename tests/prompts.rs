//! Prompt templates per tenant: `GET`/`PUT`/`DELETE /v1/prompts`, checked before saving, used by
//! the bot at once (here the replies that need no model: `no_answer` and `fallback`).

mod common;

use common::{Backend, TestApp};
use serde_json::{Value, json};

async fn put(app: &TestApp, key: &str, name: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .put(format!("{}/v1/prompts/{name}", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete(app: &TestApp, name: &str) -> u16 {
    app.http
        .delete(format!("{}/v1/prompts/{name}", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("DELETE")
        .status()
        .as_u16()
}

async fn reply(app: &TestApp, text: &str) -> String {
    let reply = app.send("ana", text, json!({"wait": true})).await;
    reply["reply"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn tenants_override_prompt_templates_and_broken_ones_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (status, listed) = app.get(&app.admin_key, "/v1/prompts").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["prompts"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["persona", "answer", "no_answer", "fallback"]);
    assert!(
        listed["prompts"]
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["source"] == "builtin"))
    );

    // Refused: syntax, unknown variables, unknown names, empty output, the widget key.
    let (status, body) = put(&app, &app.admin_key, "persona", json!({"body": "{% if %}"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_template"))
    );
    let (status, body) = put(
        &app,
        &app.admin_key,
        "persona",
        json!({"body": "Hi {{ asistant }}"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("undefined")),
        "{body}"
    );
    assert_eq!(
        put(&app, &app.admin_key, "greeting", json!({"body": "hi"}))
            .await
            .0,
        404
    );
    assert_eq!(
        put(&app, &app.admin_key, "fallback", json!({"body": "  "}))
            .await
            .0,
        400
    );
    assert_eq!(
        put(&app, &app.admin_key, "persona", json!({"text": "x"}))
            .await
            .0,
        400
    );
    assert_eq!(
        put(&app, &app.widget_key, "persona", json!({"body": "x"}))
            .await
            .0,
        403
    );

    // The tenant's own "no answer" policy, used at once: no documents, then nothing matching.
    let policy = "{% if reason == 'no_documents' %}Nothing here yet.{% else %}That is not in {{ assistant }}'s notes; ask a coach with /human.{% endif %}";
    let (status, _) = put(&app, &app.admin_key, "no_answer", json!({"body": policy})).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply(&app, "When should I stop drinking coffee?").await,
        "Nothing here yet."
    );
    let response = app
        .http
        .post(format!("{}/v1/knowledge/documents", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({"title": "Sleep", "content": "## Caffeine\n\nStop coffee by early afternoon.", "format": "markdown"}))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201);
    assert_eq!(
        reply(&app, "Which zeppelin flies highest?").await,
        "That is not in Acme's notes; ask a coach with /human."
    );
    // The quoted answer's wording (no model in these tests) is the tenant's too.
    let (status, _) = put(
        &app,
        &app.admin_key,
        "fallback",
        json!({"body": "Closest passage ({{ source.title }}): {{ source.text }}"}),
    )
    .await;
    assert_eq!(status, 200);
    let text = reply(&app, "When should I stop drinking coffee?").await;
    assert!(text.starts_with("Closest passage (Sleep): "), "{text}");
    assert!(text.contains("Stop coffee by early afternoon."), "{text}");
    let (_, listed) = app.get(&app.admin_key, "/v1/prompts").await;
    let sources: Vec<&str> = listed["prompts"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["source"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(sources, ["builtin", "builtin", "tenant", "tenant"]);

    // Back to the built-in template.
    assert_eq!(delete(&app, "fallback").await, 204);
    assert_eq!(delete(&app, "fallback").await, 404);
    let text = reply(&app, "When should I stop drinking coffee?").await;
    assert!(text.starts_with("From “Sleep"), "{text}");
    app.stop().await;
}

both_backends!(tenants_override_prompt_templates_and_broken_ones_are_refused);
