//! The WhatsApp webhook through the front door, driven by real Cloud API payloads
//! (channels/whatsapp/tests/fixtures, attribution in SOURCES.md there).

mod common;

use std::sync::Arc;

use common::graph::{graph_stand_in, graph_stand_in_with_reads};
use common::{Backend, TestApp};
use serde_json::{Value, json};

/// The app secret of the pywa signature vector, so its signed body verifies as it is.
const APP_SECRET: &str = "1222e786b144d0e85b9f365372d93676";
const VERIFY_TOKEN: &str = "meatyhamhock";

both_backends!(
    handshake_echoes_the_challenge_only_for_the_verify_token,
    signed_messages_are_stored_once_and_answered,
    a_bad_signature_or_body_stores_nothing,
    replies_go_out_through_the_graph_api_and_statuses_only_move_forward,
    outside_the_24_hour_window_a_template_or_a_visible_failure,
    a_status_that_beats_the_send_answer_is_applied_when_the_id_arrives,
    media_is_a_reference_fetched_from_the_graph_api,
);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/channels/whatsapp/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture as if just sent: its messages carry the current time (and, given one, a new id).
fn fresh(name: &str, id: Option<&str>) -> Vec<u8> {
    let mut payload: Value =
        serde_json::from_slice(&fixture(&format!("pywa/{name}.json"))).expect("json");
    let now = (switchboard::store::now_ms() / 1000).to_string();
    if let Some(m) = payload["entry"][0]["changes"][0]["value"]["messages"].get_mut(0) {
        m["timestamp"] = json!(now);
        if let Some(id) = id {
            m["id"] = json!(id);
        }
    }
    serde_json::to_vec(&payload).expect("json")
}

fn sign(body: &[u8]) -> String {
    switchboard_channel_api::outbound::sign(APP_SECRET, body)
}

/// Connects a WhatsApp channel; returns its webhook path.
async fn connect(app: &TestApp) -> String {
    connect_to(app, "http://127.0.0.1:9/v21.0").await
}

async fn connect_to(app: &TestApp, graph_url: &str) -> String {
    connect_with(app, graph_url, json!({})).await
}

async fn connect_with(app: &TestApp, graph_url: &str, templates: Value) -> String {
    connect_number(app, graph_url, templates, "1122334455667").await
}

async fn connect_number(app: &TestApp, graph_url: &str, templates: Value, phone: &str) -> String {
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "whatsapp", "config": {
            "phone_number_id": phone, "access_token": "EAAtest",
            "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN,
            "graph_url": graph_url, "templates": templates } }))
        .send()
        .await
        .expect("connect");
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.expect("json");
    let url = body["webhook_url"].as_str().expect("webhook url");
    let id = body["channel_id"].as_str().expect("id");
    assert!(url.ends_with(&format!("/webhooks/whatsapp/{id}")), "{url}");
    format!("/webhooks/whatsapp/{id}")
}

async fn post(app: &TestApp, path: &str, body: Vec<u8>, signature: Option<String>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    let res = req.send().await.expect("post");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn handshake_echoes_the_challenge_only_for_the_verify_token(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let path = connect(&app).await;
    let get = |query: String| {
        let url = format!("{}{path}?{query}", app.base);
        let http = app.http.clone();
        async move {
            let res = http.get(url).send().await.expect("get");
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }
    };
    let ok = get(format!(
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!(ok, (200, "1158201444".to_owned()));
    let wrong = get("hub.mode=subscribe&hub.challenge=1&hub.verify_token=WRONG".into()).await;
    assert_eq!(wrong.0, 403);
    let unsubscribe = get(format!(
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!(unsubscribe.0, 403);
    let res = app
        .http
        .get(format!(
            "{}/webhooks/whatsapp/no-such-channel?hub.mode=subscribe",
            app.base
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
}

async fn signed_messages_are_stored_once_and_answered(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // The number the pywa-signed payload is addressed to.
    let path = connect_number(
        &app,
        "http://127.0.0.1:9/v21.0",
        json!({}),
        "277321005464405",
    )
    .await;
    // The exact bytes pywa signed, redelivered five times at once.
    let body = fixture("meta_x_hub_signature_256.body.bin");
    let vector: Value =
        serde_json::from_slice(&fixture("meta_x_hub_signature_256.json")).expect("vector");
    let header = vector["expected_header"]
        .as_str()
        .expect("header")
        .to_owned();
    assert_eq!(sign(&body), header);
    let app = Arc::new(app);
    let posts = (0..5).map(|_| {
        let app = app.clone();
        let (path, body, header) = (path.clone(), body.clone(), header.clone());
        tokio::spawn(async move { post(&app, &path, body, Some(header)).await })
    });
    for result in futures::future::join_all(posts).await {
        let (status, body) = result.expect("task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messages"], 1);
    }
    let (_, list) = app
        .get(&app.admin_key, "/v1/conversations?channel=whatsapp")
        .await;
    let conversations = list["conversations"].as_array().expect("list");
    assert_eq!(conversations.len(), 1, "{list}");
    assert_eq!(conversations[0]["contact_external_id"], "972544401243");
    let id = conversations[0]["id"].as_str().expect("id").to_owned();
    let messages = common::eventually("answered", std::time::Duration::from_secs(20), || async {
        let m = app.messages(&id).await;
        (m.len() == 2).then_some(m)
    })
    .await;
    assert_eq!(messages[0]["text"], "Hey there! I am using PyWa.");
    assert_eq!(messages[1]["author"], "bot");

    // A batch of other real payloads: media, a reaction, a status, a notice — one POST each.
    let other_number = connect(&app).await;
    for name in [
        "message__image",
        "message__reaction",
        "message_status__read",
        "account_update__account_deleted",
    ] {
        // pywa's payloads share the id `wamid.xyzxyz`; as one sender's distinct messages they
        // need their own ids (with the same id, the second would rightly be a redelivery).
        let body = fresh(name, Some(&format!("wamid.{name}")));
        let (status, result) = post(&app, &other_number, body.clone(), Some(sign(&body))).await;
        assert_eq!(status, 200, "{name}: {result}");
    }
    // The image and the reaction are stored with their kind, the reaction pointing at its target.
    let (_, list) = app
        .get(&app.admin_key, "/v1/conversations?channel=whatsapp")
        .await;
    let other = list["conversations"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["contact_external_id"] == "972987654321")
        })
        .and_then(|c| c["id"].as_str())
        .expect("the second contact's conversation")
        .to_owned();
    let kinds: Vec<String> = app
        .messages(&other)
        .await
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .filter_map(|m| m["kind"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["image", "reaction"]);
}

async fn a_bad_signature_or_body_stores_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let path = connect(&app).await;
    let body = fixture("pywa/message__text.json");
    let (status, err) = post(&app, &path, body.clone(), Some("sha256=00ff".into())).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (401, &json!("invalid_signature"))
    );
    let (status, _) = post(&app, &path, body.clone(), None).await;
    assert_eq!(status, 401);
    let mut tampered = body.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    assert_ne!(tampered, body);
    let (status, _) = post(&app, &path, tampered, Some(sign(&body))).await;
    assert_eq!(status, 401, "the signature covers the raw bytes");
    let garbage = b"{\"object\":\"whatsapp_business_account\",\"entry\":".to_vec();
    let (status, err) = post(&app, &path, garbage.clone(), Some(sign(&garbage))).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &json!("invalid_payload"))
    );
    let (status, _) = post(
        &app,
        "/webhooks/whatsapp/no-such-channel",
        body.clone(),
        Some(sign(&body)),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(&app, "/webhooks/fax/x", body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 404);
    let (_, list) = app.get(&app.admin_key, "/v1/conversations").await;
    assert_eq!(list["conversations"], json!([]), "nothing stored");
}

async fn replies_go_out_through_the_graph_api_and_statuses_only_move_forward(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (graph, sent, reads) = graph_stand_in_with_reads().await;
    let path = connect_to(&app, &graph).await;
    let body = fresh("message__text", None);
    let (status, _) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200);
    common::eventually(
        "reply sent to the Graph API",
        std::time::Duration::from_secs(20),
        || async { (!sent.lock().expect("lock").is_empty()).then_some(()) },
    )
    .await;
    let (auth, reply) = sent.lock().expect("lock")[0].clone();
    assert_eq!(auth, "Bearer EAAtest");
    assert_eq!(reply["messaging_product"], "whatsapp");
    assert_eq!(reply["to"], "972987654321");
    assert_eq!(reply["type"], "text");
    assert!(
        reply["text"]["body"]
            .as_str()
            .is_some_and(|t| t.contains("no knowledge")),
        "{reply}"
    );
    // The inbound message was marked read, with a typing indicator, while the bot answered.
    let inbound_id = serde_json::from_slice::<Value>(&body).expect("json")["entry"][0]["changes"]
        [0]["value"]["messages"][0]["id"]
        .clone();
    common::eventually(
        "read receipt",
        std::time::Duration::from_secs(10),
        || async {
            reads
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, r)| {
                    r["message_id"] == inbound_id && r["typing_indicator"]["type"] == "text"
                })
                .then_some(())
        },
    )
    .await;

    let conversation = app.first_conversation("whatsapp").await;
    let reply_status = || async {
        let m = app.messages(&conversation).await;
        m.get(1)
            .and_then(|r| r["status"].as_str().map(str::to_owned))
    };
    common::eventually(
        "reply marked sent",
        std::time::Duration::from_secs(20),
        || async { (reply_status().await.as_deref() == Some("sent")).then_some(()) },
    )
    .await;

    // Meta reports `read`, then (late) `delivered`: the message stays `read`.
    for state in ["read", "delivered"] {
        let mut report: Value =
            serde_json::from_slice(&fixture("pywa/message_status__read.json")).expect("json");
        let s = &mut report["entry"][0]["changes"][0]["value"]["statuses"][0];
        s["id"] = json!("wamid.out-1");
        s["status"] = json!(state);
        let body = serde_json::to_vec(&report).expect("json");
        let (status, result) = post(&app, &path, body.clone(), Some(sign(&body))).await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["statuses"], 1);
    }
    assert_eq!(reply_status().await.as_deref(), Some("read"));

    // Meta fails it afterwards: the reply is `failed` and a dead letter with Meta's reason.
    let mut report: Value =
        serde_json::from_slice(&fixture("pywa/message_status__failed.json")).expect("json");
    report["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!("wamid.out-1");
    let body = serde_json::to_vec(&report).expect("json");
    let (status, _) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200);
    assert_eq!(reply_status().await.as_deref(), Some("failed"));
    let dead = app.dead_letters().await;
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("130472")),
        "{dead:?}"
    );

    // One status this adapter does not know does not sink the rest of the POST.
    let mut mixed: Value =
        serde_json::from_slice(&fresh("message__text", Some("wamid.next"))).expect("json");
    mixed["entry"][0]["changes"][0]["value"]["statuses"] = json!([{ "id": "wamid.out-1", "status": "deleted", "timestamp": "1", "recipient_id": "1" }]);
    let body = serde_json::to_vec(&mixed).expect("json");
    let (status, result) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (result["messages"].clone(), result["notices"].clone()),
        (json!(1), json!(1))
    );

    // A payload for another number of the same Meta app is not this channel's.
    let mut elsewhere: Value =
        serde_json::from_slice(&fresh("message__text", Some("wamid.elsewhere"))).expect("json");
    elsewhere["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = json!("999");
    let body = serde_json::to_vec(&elsewhere).expect("json");
    let (status, result) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (result["messages"].clone(), result["notices"].clone()),
        (json!(0), json!(1))
    );
}

async fn outside_the_24_hour_window_a_template_or_a_visible_failure(backend: Backend) {
    // Store the messages without answering them yet, then age the conversations by 25 hours.
    let Some(app) = TestApp::spawn_with(backend, |c| c.workers = false, None).await else {
        return;
    };
    let (graph, sent) = graph_stand_in().await;
    // Two numbers: one with a re-engagement template, one without.
    let with_template = connect_with(&app, &graph, json!({ "reengage": "hello_world" })).await;
    let without = connect_number(&app, &graph, json!({}), "2233445566778").await;
    for (path, phone) in [
        (&with_template, "1122334455667"),
        (&without, "2233445566778"),
    ] {
        let mut payload: Value =
            serde_json::from_slice(&fresh("message__text", None)).expect("json");
        payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = json!(phone);
        let body = serde_json::to_vec(&payload).expect("json");
        let (status, _) = post(&app, path, body.clone(), Some(sign(&body))).await;
        assert_eq!(status, 200);
    }
    let day_and_an_hour_ago = switchboard::store::now_ms() - 25 * 3600 * 1000;
    sqlx::query("UPDATE conversation SET last_inbound_at = $1")
        .bind(day_and_an_hour_ago)
        .execute(app.store.pool())
        .await
        .expect("age");
    let app = app.restart().await;

    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "only the number without a template fails");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("24-hour")),
        "{dead:?}"
    );
    common::eventually(
        "the template send",
        std::time::Duration::from_secs(20),
        || async { (!sent.lock().expect("lock").is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = sent.lock().expect("lock").clone();
    assert_eq!(
        sent.len(),
        1,
        "no free-form text outside the window: {sent:?}"
    );
    assert_eq!(sent[0].1["type"], "template");
    assert_eq!(sent[0].1["template"]["name"], "hello_world");
    app.stop().await;
}

async fn a_status_that_beats_the_send_answer_is_applied_when_the_id_arrives(backend: Backend) {
    // Stored, not yet answered: Meta's `read` for our (future) message arrives first.
    let Some(app) = TestApp::spawn_with(backend, |c| c.workers = false, None).await else {
        return;
    };
    let (graph, sent) = graph_stand_in().await;
    let path = connect_to(&app, &graph).await;
    let body = fresh("message__text", None);
    let (status, _) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200);
    let mut report: Value =
        serde_json::from_slice(&fixture("pywa/message_status__read.json")).expect("json");
    report["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!("wamid.out-1");
    let early = serde_json::to_vec(&report).expect("json");
    let (status, result) = post(&app, &path, early.clone(), Some(sign(&early))).await;
    assert_eq!((status, result["statuses"].clone()), (200, json!(1)));

    let app = app.restart().await;
    common::eventually("reply sent", std::time::Duration::from_secs(20), || async {
        (!sent.lock().expect("lock").is_empty()).then_some(())
    })
    .await;
    let conversation = app.first_conversation("whatsapp").await;
    common::eventually(
        "the held report applied",
        std::time::Duration::from_secs(20),
        || async {
            let m = app.messages(&conversation).await;
            (m.get(1).and_then(|r| r["status"].as_str()) == Some("read")).then_some(())
        },
    )
    .await;
    app.stop().await;
}

async fn media_is_a_reference_fetched_from_the_graph_api(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (graph, _sent) = graph_stand_in().await;
    let path = connect_to(&app, &graph).await;
    let body = fresh("message__image", None);
    let (status, _) = post(&app, &path, body.clone(), Some(sign(&body))).await;
    assert_eq!(status, 200);
    let conversation = app.first_conversation("whatsapp").await;
    let message = app.messages(&conversation).await[0].clone();
    assert_eq!(message["attachments"][0]["reference"], "65463453");
    let id = message["id"].as_str().expect("id");
    let (status, content_type, bytes) = app.attachment(&app.admin_key, id, 0).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(bytes, common::graph::MEDIA_BYTES);
}
