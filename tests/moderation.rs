//! Moderation, hand-off and tickets (issue "Moderation, hand-off and tickets"), on both stores,
//! through the front door: the policy API, messages on the `api` channel and on Telegram (the
//! local Bot API stand-in), the flag queue and its verdicts, tickets. The bot here echoes the
//! question, so a test decides what its answers say.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::telegram::{BotApi, TOKEN};
use common::{Backend, TestApp};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use switchboard::core::{Role, TenantSlug};

both_backends!(
    a_crisis_gets_the_safe_message_an_urgent_ticket_and_a_person,
    a_shadow_rule_records_and_answers_then_acts_when_turned_on,
    held_answers_are_released_edited_or_never_sent,
    a_blocked_contact_gets_nothing_until_unblocked,
    tickets_by_api_keep_their_sla,
    roles_and_tenants_keep_the_queue_private,
    asking_for_a_person_hands_over_with_a_ticket,
    no_answer_and_repeated_fallbacks_hand_over,
    a_silent_hand_off_goes_back_to_the_bot,
    program_messages_pass_the_policy_before_they_are_sent,
    hand_offs_outside_business_hours_say_when_a_person_is_back_and_people_are_assigned,
    a_flagged_contact_with_a_ticket_links_its_other_app,
);

/// Answers "echo: <question>".
struct Echo;

#[async_trait::async_trait]
impl switchboard::answer::Responder for Echo {
    async fn respond(
        &self,
        turn: &switchboard::answer::Turn,
    ) -> anyhow::Result<switchboard::answer::Answer> {
        Ok(switchboard::answer::Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("echo: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

async fn spawn(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |_| {}, Some(Arc::new(Echo))).await
}

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn put_policy(app: &TestApp, policy: Value) -> Value {
    let (status, body) = call(
        app,
        &app.admin_key,
        Method::PUT,
        "/v1/moderation/policy",
        Some(policy),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Connects a Telegram channel (webhook secret `s3cret`) on the Bot API stand-in `api`; the
/// webhook's path.
async fn connect_telegram(app: &TestApp, api: &BotApi) -> String {
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "telegram", "config": {
            "bot_token": TOKEN, "webhook_secret": "s3cret", "mode": "webhook", "api_url": api.base } }))
        .send()
        .await
        .expect("connect");
    assert_eq!(res.status(), 201);
    let channel: Value = res.json().await.expect("json");
    format!(
        "/webhooks/telegram/{}",
        channel["channel_id"].as_str().expect("id")
    )
}

async fn moderator(app: &TestApp) -> String {
    app.store
        .create_key(&TenantSlug::parse("acme").expect("slug"), Role::Moderator)
        .await
        .expect("moderator key")
}

async fn flags(app: &TestApp, key: &str, status: &str) -> Vec<Value> {
    let (code, body) = call(
        app,
        key,
        Method::GET,
        &format!("/v1/flags?status={status}"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body["flags"].as_array().cloned().unwrap_or_default()
}

/// The tickets of a conversation, newest first.
async fn conversation_tickets(app: &TestApp, key: &str, conversation: &str) -> Value {
    let path = format!("/v1/tickets?conversation_id={conversation}");
    let (code, tickets) = call(app, key, Method::GET, &path, None).await;
    assert_eq!(code, 200, "{tickets}");
    tickets
}

/// `SELECT COUNT(*) AS n …` with one parameter.
async fn count(app: &TestApp, sql: &'static str, param: &str) -> i64 {
    sqlx::query(sql)
        .bind(param)
        .fetch_one(app.store.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n")
}

async fn conversation_status(app: &TestApp, conversation: &str) -> String {
    sqlx::query("SELECT status FROM conversation WHERE id = $1")
        .bind(conversation)
        .fetch_one(app.store.pool())
        .await
        .expect("conversation")
        .try_get("status")
        .expect("status")
}

/// A self-harm message: the safe message with the resources at once (nothing from the bot), an
/// urgent ticket, the conversation with a person, the contact's pending nudges cancelled; the
/// flag keeps the message and the spans that matched.
async fn a_crisis_gets_the_safe_message_an_urgent_ticket_and_a_person(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let first = app.send("cara", "hi", json!({ "wait": true })).await;
    let conversation = first["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    assert_eq!(first["reply"]["text"], "echo: hi");
    // Enrolled in a program whose first inactivity nudge is pending.
    let (status, program) = call(&app, &app.admin_key, Method::POST, "/v1/programs", Some(json!({
        "name": "Sleep", "channels": ["api"],
        "inactivity": { "after": "1d", "nudges": ["Still there?"] },
        "steps": [ { "id": "w", "type": "wait", "for": "7d" }, { "id": "m", "type": "message", "text": "Week one done" } ] }))).await;
    assert_eq!(status, 201, "{program}");
    let program = program["id"].as_str().expect("id").to_owned();
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::POST,
        &format!("/v1/programs/{program}/publish"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let contact: String = sqlx::query("SELECT contact_id FROM conversation WHERE id = $1")
        .bind(&conversation)
        .fetch_one(app.store.pool())
        .await
        .expect("contact")
        .try_get("contact_id")
        .expect("contact_id");
    let (status, body) = call(
        &app,
        &app.admin_key,
        Method::POST,
        &format!("/v1/programs/{program}/enrollments"),
        Some(json!({ "contact_id": contact })),
    )
    .await;
    assert!(status == 201 || status == 200, "{body}");
    let pending_nudges = || async {
        count(&app, "SELECT COUNT(*) AS n FROM fire WHERE contact_id = $1 AND kind = 'nudge' AND status = 'pending'", &contact).await
    };
    assert_eq!(pending_nudges().await, 1);

    let crisis = app
        .send(
            "cara",
            "I want to end it. I can't do this anymore",
            json!({ "wait": true }),
        )
        .await;
    let text = crisis["reply"]["text"].as_str().expect("a reply");
    assert!(text.contains("You don't have to face it alone"), "{text}");
    assert!(text.contains("findahelpline.com"), "the resources: {text}");
    assert!(!text.starts_with("echo:"));
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    assert_eq!(pending_nudges().await, 0, "nudges paused");
    let moderator = moderator(&app).await;
    let (code, tickets) = call(
        &app,
        &moderator,
        Method::GET,
        "/v1/tickets?priority=urgent",
        None,
    )
    .await;
    assert_eq!(code, 200, "{tickets}");
    let tickets = tickets["tickets"].as_array().cloned().unwrap_or_default();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    assert_eq!(tickets[0]["source"], "crisis");
    assert_eq!(tickets[0]["status"], "open");
    assert_eq!(tickets[0]["conversation_id"], conversation.as_str());
    assert_eq!(tickets[0]["sla"]["first_response_breached"], false);
    let open = flags(&app, &moderator, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["action"], "crisis");
    assert_eq!(
        open[0]["evidence"]["text"],
        "I want to end it. I can't do this anymore"
    );
    let hit = &open[0]["evidence"]["hits"][0];
    assert_eq!(hit["rule"], "crisis");
    // "want to end it" is characters 2..16.
    assert_eq!(hit["spans"][0], json!([2, 16]), "{hit}");
    assert_eq!(tickets[0]["flag_id"], open[0]["id"]);
    // With a person now: the bot says nothing more.
    let later = app.send("cara", "hello?", json!({ "wait": true })).await;
    assert!(later.get("reply").is_none_or(Value::is_null), "{later}");
    // The person answers: the ticket's first response is met.
    assert_eq!(
        app.agent_message(
            &conversation,
            json!({ "text": "I'm here. Can you tell me where you are?" })
        )
        .await,
        201
    );
    let (_, ticket) = call(
        &app,
        &moderator,
        Method::GET,
        &format!("/v1/tickets/{}", tickets[0]["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert!(ticket["sla"]["first_response_at"].is_string(), "{ticket}");
    app.stop().await;
}

/// A rule in shadow mode records what it finds and changes nothing; turned on, it holds the
/// message for a person. The moderator's verdict is recorded and measured.
async fn a_shadow_rule_records_and_answers_then_acts_when_turned_on(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let rule = |shadow: bool| {
        json!({ "rules": [ { "id": "insults", "words": ["idiot", "useless bot"],
        "action": "hold", "shadow": shadow, "applies_to": "inbound", "category": "harassment" } ] })
    };
    let saved = put_policy(&app, rule(true)).await;
    assert_eq!(saved["version"], 1);
    let reply = app
        .send("dan", "you idiot, that's wrong", json!({ "wait": true }))
        .await;
    assert_eq!(
        reply["reply"]["text"], "echo: you idiot, that's wrong",
        "answered as usual"
    );
    let conversation = reply["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let moderator = moderator(&app).await;
    let shadow = flags(&app, &moderator, "shadow").await;
    assert_eq!(shadow.len(), 1, "{shadow:?}");
    assert_eq!(shadow[0]["shadow"], true);
    assert_eq!(shadow[0]["action"], "hold", "what it would have done");
    assert_eq!(shadow[0]["policy_version"], 1);
    assert_eq!(shadow[0]["evidence"]["hits"][0]["spans"][0], json!([4, 9]));
    assert_eq!(conversation_status(&app, &conversation).await, "bot");
    assert!(flags(&app, &moderator, "open").await.is_empty());

    let saved = put_policy(&app, rule(false)).await;
    assert_eq!(saved["version"], 2);
    let held = app
        .send("dan", "useless bot", json!({ "wait": true }))
        .await;
    assert!(held.get("reply").is_none_or(Value::is_null), "held: {held}");
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let open = flags(&app, &moderator, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (
            open[0]["action"].as_str(),
            open[0]["policy_version"].as_i64()
        ),
        (Some("hold"), Some(2))
    );
    let tickets = conversation_tickets(&app, &moderator, &conversation).await;
    assert_eq!(
        tickets["tickets"][0]["source"], "moderation_hold",
        "{tickets}"
    );
    // The moderator finds it harmless: the conversation goes back to the bot.
    let id = open[0]["id"].as_str().expect("id");
    let (code, judged) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "approve" })),
    )
    .await;
    assert_eq!(code, 200, "{judged}");
    assert_eq!(judged["status"], "approved");
    assert!(judged["verdict_by"].is_string());
    let (code, again) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "reject" })),
    )
    .await;
    assert_eq!(code, 409, "one verdict per flag: {again}");
    assert_eq!(conversation_status(&app, &conversation).await, "bot");
    let reply = app.send("dan", "ok thanks", json!({ "wait": true })).await;
    assert_eq!(reply["reply"]["text"], "echo: ok thanks");
    // The verdict is audited and measured: the rule's one judged hit was wrong.
    let (_, stats) = call(&app, &moderator, Method::GET, "/v1/moderation/stats", None).await;
    let insults = stats["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["rule"] == "insults"))
        .cloned()
        .expect("the rule's stats");
    assert_eq!(
        (
            insults["hits"].as_i64(),
            insults["shadow_hits"].as_i64(),
            insults["judged"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(insults["precision"], 0.0);
    let audited: i64 = count(
        &app,
        "SELECT COUNT(*) AS n FROM event WHERE kind = 'flag.verdict' AND subject = $1",
        id,
    )
    .await;
    assert_eq!(audited, 1);
    // The evidence cannot be changed, not even in SQL.
    let tampered = sqlx::query("UPDATE flag SET evidence = '{}' WHERE id = $1")
        .bind(id)
        .execute(app.store.pool())
        .await;
    assert!(tampered.is_err(), "the evidence is immutable");
    // A policy that does not validate names its problems.
    let (code, body) = call(&app, &app.admin_key, Method::PUT, "/v1/moderation/policy",
        Some(json!({ "rules": [ { "id": "r", "regex": "(", "action": "hold" } ], "classifier": { "timeout_ms": 5 } }))).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_policy");
    assert!(
        body["error"]["errors"]
            .as_array()
            .is_some_and(|e| e.len() >= 2),
        "{body}"
    );
    app.stop().await;
}

/// A bot answer an outbound rule holds is not sent; edited and approved it reaches Telegram
/// once; a rejected one never does.
async fn held_answers_are_released_edited_or_never_sent(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let path = connect_telegram(&app, &api).await;
    put_policy(&app, json!({ "rules": [ { "id": "secrets", "words": ["secret"], "action": "hold", "applies_to": "outbound" } ] })).await;
    let update = |id: i64, text: &str| {
        json!({ "update_id": id, "message": {
        "message_id": id, "date": 1_700_000_000,
        "chat": { "id": 4242, "type": "private", "first_name": "Eve" },
        "from": { "id": 4242, "is_bot": false, "first_name": "Eve" }, "text": text } })
    };
    let post = |body: Value| {
        let req = app
            .http
            .post(format!("{}{path}", app.base))
            .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
            .json(&body);
        async move { req.send().await.expect("webhook").status().as_u16() }
    };
    let moderator = moderator(&app).await;
    assert_eq!(post(update(1, "tell me the secret")).await, 200);
    let held = common::eventually(
        "the held answer's flag",
        Duration::from_secs(20),
        || async {
            let open = flags(&app, &moderator, "open").await;
            (open.len() == 1).then_some(open)
        },
    )
    .await;
    assert_eq!(held[0]["direction"], "outbound");
    assert_eq!(held[0]["evidence"]["answer"], "echo: tell me the secret");
    assert_eq!(held[0]["evidence"]["question"], "tell me the secret");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        api.texts().is_empty(),
        "nothing sent while held: {:?}",
        api.texts()
    );
    let id = held[0]["id"].as_str().expect("id");
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "edit" })),
    )
    .await;
    assert_eq!(code, 400, "edit needs text: {body}");
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "edit", "text": "That stays between you and your coach." })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let texts = common::eventually(
        "the edited answer on Telegram",
        Duration::from_secs(20),
        || async {
            let texts = api.texts();
            (!texts.is_empty()).then_some(texts)
        },
    )
    .await;
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].1, "That stays between you and your coach.");

    assert_eq!(post(update(2, "another secret please")).await, 200);
    let second = common::eventually("the second flag", Duration::from_secs(20), || async {
        let open = flags(&app, &moderator, "open").await;
        (open.len() == 1).then_some(open)
    })
    .await;
    let id = second[0]["id"].as_str().expect("id");
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "reject" })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts = api.texts();
    assert_eq!(
        texts.len(),
        1,
        "the rejected answer never went out: {texts:?}"
    );
    assert!(
        !texts.iter().any(|(_, t)| t.contains("secret")),
        "{texts:?}"
    );
    app.stop().await;
}

/// A `block` rule blocks the contact: no answer, its program stopped; unblocked by a
/// moderator, it is answered again.
async fn a_blocked_contact_gets_nothing_until_unblocked(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    put_policy(&app, json!({ "rules": [ { "id": "threats", "regex": "(?i)\\bi will (hurt|find) you\\b", "action": "block", "category": "violence" } ] })).await;
    let first = app.send("mal", "hello", json!({ "wait": true })).await;
    assert_eq!(first["reply"]["text"], "echo: hello");
    let threat = app
        .send("mal", "I will find you", json!({ "wait": true }))
        .await;
    assert!(threat.get("reply").is_none_or(Value::is_null), "{threat}");
    let after = app
        .send("mal", "hello again", json!({ "wait": true }))
        .await;
    assert!(
        after.get("reply").is_none_or(Value::is_null),
        "blocked: {after}"
    );
    let moderator = moderator(&app).await;
    let open = flags(&app, &moderator, "open").await;
    assert_eq!(
        open.len(),
        1,
        "one flag (the later message is not checked, only ignored): {open:?}"
    );
    assert_eq!(open[0]["action"], "block");
    let id = open[0]["id"].as_str().expect("id");
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "unblock" })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let back = app.send("mal", "sorry", json!({ "wait": true })).await;
    assert_eq!(back["reply"]["text"], "echo: sorry");
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{id}/verdict"),
        Some(json!({ "action": "shrug" })),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    app.stop().await;
}

/// Tickets by API: one open ticket per conversation, status and assignee changes with notes,
/// first-response and resolution targets by priority with breach flags, filters, validation.
async fn tickets_by_api_keep_their_sla(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let moderator = moderator(&app).await;
    let sent = app
        .send("ivy", "my order never came", json!({ "wait": true }))
        .await;
    let conversation = sent["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let (code, ticket) = call(&app, &moderator, Method::POST, "/v1/tickets",
        Some(json!({ "subject": "Missing order", "priority": "high", "conversation_id": conversation, "note": "Customer waited 2 weeks" }))).await;
    assert_eq!(code, 201, "{ticket}");
    let id = ticket["id"].as_str().expect("id").to_owned();
    assert_eq!(ticket["status"], "open");
    assert_eq!(ticket["priority"], "high");
    assert!(
        ticket["contact_id"].is_string(),
        "the conversation's contact: {ticket}"
    );
    // High: first response within an hour, resolution within 8.
    let created = ticket["created_at"]
        .as_str()
        .expect("created")
        .parse::<jiff::Timestamp>()
        .expect("ts");
    let due = ticket["sla"]["first_response_due_at"]
        .as_str()
        .expect("due")
        .parse::<jiff::Timestamp>()
        .expect("ts");
    assert_eq!(due.as_millisecond() - created.as_millisecond(), 3_600_000);
    let (code, same) = call(
        &app,
        &moderator,
        Method::POST,
        "/v1/tickets",
        Some(json!({ "subject": "Again", "conversation_id": conversation })),
    )
    .await;
    assert_eq!(
        (code, same["id"].as_str()),
        (200, Some(id.as_str())),
        "one open ticket per conversation"
    );
    let (code, patched) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/tickets/{id}"),
        Some(json!({ "status": "pending", "assignee": "mod-1", "note": "Asked the warehouse" })),
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(
        (patched["status"].as_str(), patched["assignee"].as_str()),
        (Some("pending"), Some("mod-1"))
    );
    let (_, full) = call(
        &app,
        &moderator,
        Method::GET,
        &format!("/v1/tickets/{id}"),
        None,
    )
    .await;
    let notes: Vec<&str> = full["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n["text"].as_str())
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert_eq!(notes[0], "Customer waited 2 weeks");
    assert!(notes[1].starts_with("Raised again"), "{notes:?}");
    assert_eq!(notes[2], "Asked the warehouse");
    // Past its targets with no answer: both breached.
    sqlx::query("UPDATE ticket SET first_response_due_at = 1, resolution_due_at = 2 WHERE id = $1")
        .bind(&id)
        .execute(app.store.pool())
        .await
        .expect("backdate");
    let (_, late) = call(
        &app,
        &moderator,
        Method::GET,
        "/v1/tickets?status=pending",
        None,
    )
    .await;
    assert_eq!(
        late["tickets"][0]["sla"]["first_response_breached"], true,
        "{late}"
    );
    assert_eq!(late["tickets"][0]["sla"]["resolution_breached"], true);
    let (_, none) = call(
        &app,
        &moderator,
        Method::GET,
        "/v1/tickets?status=open",
        None,
    )
    .await;
    assert_eq!(none["tickets"].as_array().map(Vec::len), Some(0));
    let (code, solved) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/tickets/{id}"),
        Some(json!({ "status": "solved", "assignee": null })),
    )
    .await;
    assert_eq!(code, 200, "{solved}");
    assert!(
        solved["solved_at"].is_string() && solved["assignee"].is_null(),
        "{solved}"
    );
    for (body, what) in [
        (json!({ "subject": "x", "priority": "asap" }), "priority"),
        (json!({ "subject": "" }), "subject"),
        (
            json!({ "subject": "x", "conversation_id": "nope" }),
            "conversation",
        ),
        (json!({ "subject": "x", "colour": "red" }), "unknown field"),
    ] {
        let (code, body) = call(&app, &moderator, Method::POST, "/v1/tickets", Some(body)).await;
        assert!(code == 400 || code == 404, "{what}: {code} {body}");
    }
    let (code, _) = call(
        &app,
        &moderator,
        Method::PATCH,
        "/v1/tickets/nope",
        Some(json!({ "status": "closed" })),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/tickets/{id}"),
        Some(json!({ "status": "done" })),
    )
    .await;
    assert_eq!(code, 400);
    app.stop().await;
}

/// A creator key cannot read flags or tickets; another tenant's flag or ticket is a 404.
async fn roles_and_tenants_keep_the_queue_private(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    put_policy(
        &app,
        json!({ "rules": [ { "id": "r", "words": ["spam"], "action": "flag" } ] }),
    )
    .await;
    let flagged = app
        .send("sam", "buy spam now", json!({ "wait": true }))
        .await;
    assert_eq!(
        flagged["reply"]["text"], "echo: buy spam now",
        "a flag answers"
    );
    let moderator = moderator(&app).await;
    let mut open = flags(&app, &moderator, "open").await;
    // The rule covers both directions: the question and the answer that repeats it.
    assert_eq!(open.len(), 2, "{open:?}");
    open.sort_by_key(|f| f["direction"].as_str().map(str::to_owned));
    assert_eq!(
        (open[0]["direction"].as_str(), open[1]["direction"].as_str()),
        (Some("inbound"), Some("outbound"))
    );
    let flag_id = open[0]["id"].as_str().expect("id").to_owned();
    let (code, ticket) = call(
        &app,
        &moderator,
        Method::POST,
        "/v1/tickets",
        Some(json!({ "subject": "Check sam" })),
    )
    .await;
    assert_eq!(code, 201, "{ticket}");
    let ticket_id = ticket["id"].as_str().expect("id").to_owned();
    let creator = app
        .store
        .create_key(&TenantSlug::parse("acme").expect("slug"), Role::Creator)
        .await
        .expect("creator key");
    for path in [
        "/v1/flags".to_owned(),
        format!("/v1/flags/{flag_id}"),
        "/v1/tickets".to_owned(),
        "/v1/moderation/stats".to_owned(),
    ] {
        let (code, _) = call(&app, &creator, Method::GET, &path, None).await;
        assert_eq!(code, 403, "{path}");
    }
    let (code, _) = call(&app, &moderator, Method::GET, "/v1/moderation/policy", None).await;
    assert_eq!(code, 403, "the policy is the admin's");
    let other = app
        .store
        .create_tenant(&TenantSlug::parse("globex").expect("slug"), "Globex")
        .await
        .expect("tenant");
    for path in [
        format!("/v1/flags/{flag_id}"),
        format!("/v1/tickets/{ticket_id}"),
    ] {
        let (code, _) = call(&app, &other.admin_key, Method::GET, &path, None).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, _) = call(
        &app,
        &other.admin_key,
        Method::POST,
        &format!("/v1/flags/{flag_id}/verdict"),
        Some(json!({ "action": "block" })),
    )
    .await;
    assert_eq!(code, 404);
    let (_, list) = call(
        &app,
        &other.admin_key,
        Method::GET,
        "/v1/flags?status=open",
        None,
    )
    .await;
    assert_eq!(list["flags"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

/// "Can I talk to a real person?" hands the conversation over with a ticket and tells the
/// contact; so does `/human`. With the policy's `on_request` off, the bot answers as usual.
async fn asking_for_a_person_hands_over_with_a_ticket(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let moderator = moderator(&app).await;
    let asked = app
        .send(
            "pia",
            "can I talk to a real person please?",
            json!({ "wait": true }),
        )
        .await;
    let conversation = asked["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    assert!(
        asked["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("a person from the team")),
        "{asked}"
    );
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let tickets = conversation_tickets(&app, &moderator, &conversation).await;
    assert_eq!(tickets["tickets"][0]["source"], "request", "{tickets}");
    assert!(
        flags(&app, &moderator, "open").await.is_empty(),
        "asking is not an offence"
    );
    // A person answers and hands back; asking again opens a new ticket after the first is solved.
    let id = tickets["tickets"][0]["id"].as_str().expect("id").to_owned();
    let (code, _) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/tickets/{id}"),
        Some(json!({ "status": "solved" })),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(
        &app,
        &app.admin_key,
        Method::PATCH,
        &format!("/v1/conversations/{conversation}"),
        Some(json!({ "status": "bot" })),
    )
    .await;
    assert_eq!(code, 200);
    let slash = app.send("pia", "/human", json!({ "wait": true })).await;
    assert!(
        slash["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("a person")),
        "{slash}"
    );
    let (_, tickets) = call(
        &app,
        &moderator,
        Method::GET,
        &format!("/v1/tickets?conversation_id={conversation}&status=open"),
        None,
    )
    .await;
    assert_eq!(
        tickets["tickets"].as_array().map(Vec::len),
        Some(1),
        "{tickets}"
    );
    assert_eq!(tickets["tickets"][0]["source"], "command");
    // Turned off: the same words are just a question for the bot.
    put_policy(&app, json!({ "handoff": { "on_request": false } })).await;
    let plain = app
        .send(
            "quin",
            "can I talk to a real person please?",
            json!({ "wait": true }),
        )
        .await;
    assert_eq!(
        plain["reply"]["text"],
        "echo: can I talk to a real person please?"
    );
    app.stop().await;
}

/// With the real knowledge responder (no model): a question outside the knowledge is handed to a
/// person under `handoff.no_answer` (ticket, `human`, the contact told); under
/// `handoff.after_fallbacks: 2`, the second quoted fallback in a row hands over, and an answer
/// from the knowledge in between starts the count again.
async fn no_answer_and_repeated_fallbacks_hand_over(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let moderator = moderator(&app).await;
    put_policy(&app, json!({ "handoff": { "no_answer": true } })).await;
    let asked = app
        .send(
            "ola",
            "what is the capital of Peru?",
            json!({ "wait": true }),
        )
        .await;
    let conversation = asked["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let text = asked["reply"]["text"].as_str().expect("a reply");
    assert!(text.contains("a person from the team"), "told: {text}");
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let tickets = conversation_tickets(&app, &moderator, &conversation).await;
    assert_eq!(tickets["tickets"][0]["source"], "no_answer", "{tickets}");

    // Knowledge, but no model: every answer is a quoted fallback.
    let doc = json!({ "title": "Sleep", "format": "markdown", "content":
        "# Sleep\n\n## Caffeine\n\nStop coffee by early afternoon: caffeine stays in the body for many hours." });
    let (code, body) = call(
        &app,
        &app.admin_key,
        Method::POST,
        "/v1/knowledge/documents",
        Some(doc),
    )
    .await;
    assert!(code == 201 || code == 200, "{body}");
    put_policy(&app, json!({ "handoff": { "after_fallbacks": 2 } })).await;
    let first = app
        .send("uma", "when should I stop coffee?", json!({ "wait": true }))
        .await;
    let conversation = first["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let first_text = first["reply"]["text"].as_str().expect("a reply");
    assert!(
        !first_text.contains("a person from the team"),
        "one fallback is not enough: {first_text}"
    );
    assert_eq!(conversation_status(&app, &conversation).await, "bot");
    let second = app
        .send("uma", "and caffeine at night?", json!({ "wait": true }))
        .await;
    let second_text = second["reply"]["text"].as_str().expect("a reply");
    assert!(
        second_text.contains("a person from the team"),
        "the second hands over: {second_text}"
    );
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let tickets = conversation_tickets(&app, &moderator, &conversation).await;
    assert_eq!(tickets["tickets"][0]["source"], "fallbacks", "{tickets}");
    let count: i64 = sqlx::query("SELECT fallbacks FROM conversation WHERE id = $1")
        .bind(&conversation)
        .fetch_one(app.store.pool())
        .await
        .expect("conversation")
        .try_get("fallbacks")
        .expect("fallbacks");
    assert_eq!(count, 0, "the count starts again after a hand-off");
    app.stop().await;
}

/// With `handoff.timeout_minutes`, a conversation whose person stays silent goes back to the
/// bot; a person who wrote recently keeps it.
async fn a_silent_hand_off_goes_back_to_the_bot(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    put_policy(&app, json!({ "handoff": { "timeout_minutes": 30 } })).await;
    let asked = app.send("rey", "/human", json!({ "wait": true })).await;
    let conversation = asked["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let now = switchboard::store::now_ms();
    assert_eq!(
        app.moderation.resume_stale(now).await.expect("sweep"),
        0,
        "not yet"
    );
    let backdate = |minutes: i64| {
        sqlx::query("UPDATE conversation SET handed_off_at = $1 WHERE id = $2")
            .bind(now - minutes * 60_000)
            .bind(conversation.clone())
            .execute(app.store.pool())
    };
    backdate(31).await.expect("backdate");
    assert_eq!(app.moderation.resume_stale(now).await.expect("sweep"), 1);
    assert_eq!(conversation_status(&app, &conversation).await, "bot");
    let events: i64 = count(
        &app,
        "SELECT COUNT(*) AS n FROM event WHERE kind = 'conversation.handback' AND subject = $1",
        &conversation,
    )
    .await;
    assert_eq!(events, 1);
    let back = app
        .send("rey", "hello again", json!({ "wait": true }))
        .await;
    assert_eq!(back["reply"]["text"], "echo: hello again");
    // Handed over again; a person wrote a minute ago: it stays with them.
    app.send("rey", "/human", json!({ "wait": true })).await;
    assert_eq!(
        app.agent_message(
            &conversation,
            json!({ "text": "Hi, I'm Ana from the team." })
        )
        .await,
        201
    );
    backdate(45).await.expect("backdate");
    assert_eq!(
        app.moderation
            .resume_stale(switchboard::store::now_ms())
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(conversation_status(&app, &conversation).await, "human");
    let (code, body) = call(
        &app,
        &app.admin_key,
        Method::PUT,
        "/v1/moderation/policy",
        Some(json!({ "handoff": { "timeout_minutes": 100000 } })),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    app.stop().await;
}

/// Publishes a one-step-after-another program of plain messages on the `api` channel and enrols
/// `external_id` (who has written first, so its conversation exists); returns the conversation.
async fn enrol_in_messages(app: &TestApp, texts: &[&str], external_id: &str) -> String {
    let steps: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "id": format!("m{i}"), "type": "message", "text": t }))
        .collect();
    let (code, program) = call(
        app,
        &app.admin_key,
        Method::POST,
        "/v1/programs",
        Some(json!({ "name": "Tips", "channels": ["api"], "steps": steps })),
    )
    .await;
    assert_eq!(code, 201, "{program}");
    let id = program["id"].as_str().expect("id").to_owned();
    let (code, body) = call(
        app,
        &app.admin_key,
        Method::POST,
        &format!("/v1/programs/{id}/publish"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let hello = app
        .send(external_id, "hello", json!({ "wait": true }))
        .await;
    let conversation = hello["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let channel = app
        .store
        .api_channel(&app.tenant_id)
        .await
        .expect("channel")
        .id;
    let (code, body) = call(
        app,
        &app.admin_key,
        Method::POST,
        &format!("/v1/programs/{id}/enrollments"),
        Some(json!({ "channel_id": channel, "external_id": external_id })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    conversation
}

/// The conversation's outbound texts as its transcript shows them.
async fn outbound_texts(app: &TestApp, conversation: &str) -> Vec<String> {
    app.messages(conversation)
        .await
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

/// Program messages pass the tenant's outbound rules before they are sent: a `hold` keeps the
/// message back (stored outside the transcript, not delivered) with a flag in the queue, a
/// `flag` sends it and queues it; a moderator's edit sends the held message once, as edited, at
/// the end of the conversation; a rejected one is never sent.
async fn program_messages_pass_the_policy_before_they_are_sent(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let moderator = moderator(&app).await;
    put_policy(
        &app,
        json!({ "rules": [
            { "id": "cure", "words": ["miracle cure"], "action": "hold", "applies_to": "outbound" },
            { "id": "pills", "words": ["sleeping pills"], "action": "flag", "applies_to": "outbound" }
        ]}),
    )
    .await;
    // Noon UTC: outside the default quiet hours, so the fires run when asked.
    app.programs.clock().set(1_811_505_600_000);
    let texts = [
        "Day 1: try our miracle cure tonight.",
        "Day 1: go easy on sleeping pills.",
    ];
    let ana = enrol_in_messages(&app, &texts, "ana").await;
    app.programs.run_due().await.expect("run");
    let sent = outbound_texts(&app, &ana).await;
    assert!(sent.contains(&texts[1].to_owned()), "{sent:?}");
    assert!(
        !sent.iter().any(|t| t.contains("miracle")),
        "a held program message is not in the transcript: {sent:?}"
    );
    let deliveries = |text: &'static str| {
        let app = &app;
        async move {
            count(
                app,
                "SELECT COUNT(*) AS n FROM delivery WHERE body LIKE $1",
                text,
            )
            .await
        }
    };
    assert_eq!(deliveries("%miracle%").await, 0, "nothing of it is queued");
    assert_eq!(deliveries("%sleeping pills%").await, 1);
    let queue = flags(&app, &moderator, "open").await;
    assert_eq!(queue.len(), 2, "{queue:#?}");
    let held = queue
        .iter()
        .find(|f| f["action"] == "hold")
        .expect("the held message's flag")
        .clone();
    assert_eq!(held["direction"], "outbound");
    assert_eq!(held["evidence"]["source"], "program");
    assert_eq!(held["evidence"]["step"], "m0");
    assert_eq!(held["evidence"]["withheld"], "held");
    assert_eq!(held["evidence"]["text"], texts[0]);
    assert_eq!(held["evidence"]["hits"][0]["rule"], "cure");
    assert_eq!(held["evidence"]["hits"][0]["spans"], json!([[15, 27]]));
    let flagged = queue
        .iter()
        .find(|f| f["action"] == "flag")
        .expect("the flagged message's flag");
    assert!(flagged["evidence"]["withheld"].is_null(), "{flagged}");
    // The conversation stays with the bot: a program message is not the contact's doing.
    assert_eq!(conversation_status(&app, &ana).await, "bot");

    // Edited and sent: once, last in the conversation, as edited.
    let (code, body) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{}/verdict", held["id"].as_str().expect("id")),
        Some(json!({ "action": "edit", "text": "Day 1: try a warm bath tonight." })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let sent = outbound_texts(&app, &ana).await;
    assert_eq!(
        sent.last().map(String::as_str),
        Some("Day 1: try a warm bath tonight."),
        "{sent:?}"
    );
    assert_eq!(deliveries("%warm bath%").await, 1);
    assert_eq!(deliveries("%miracle%").await, 0);
    let seqs: Vec<i64> = app
        .messages(&ana)
        .await
        .iter()
        .filter_map(|m| m["seq"].as_i64())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "the numbering has no gap"
    );
    // Twice → 409, and nothing is sent again.
    let (code, _) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{}/verdict", held["id"].as_str().expect("id")),
        Some(json!({ "action": "approve" })),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(deliveries("%warm bath%").await, 1);

    // Another contact's held message, rejected: never sent.
    let bo = enrol_in_messages(&app, &["Bo: a miracle cure awaits."], "bo").await;
    app.programs.run_due().await.expect("run");
    let queue = flags(&app, &moderator, "open").await;
    let held = queue
        .iter()
        .find(|f| f["evidence"]["text"] == "Bo: a miracle cure awaits.")
        .expect("bo's flag")
        .clone();
    let (code, _) = call(
        &app,
        &moderator,
        Method::POST,
        &format!("/v1/flags/{}/verdict", held["id"].as_str().expect("id")),
        Some(json!({ "action": "reject" })),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        !outbound_texts(&app, &bo)
            .await
            .iter()
            .any(|t| t.contains("miracle"))
    );
    assert_eq!(deliveries("%miracle%").await, 0);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM message WHERE text = $1 AND status = 'rejected'",
            "Bo: a miracle cure awaits.",
        )
        .await,
        1
    );
    app.stop().await;
}

/// Outside the team's hours the contact is told when a person will be back (the tenant's
/// closed message, with the next opening in its time zone); inside them, the usual message. A
/// moderator assigns a conversation (to themself with `me`, or to another staff key), which
/// hands it over and assigns its ticket; `?assignee=me` lists theirs; a key that is not staff
/// cannot be assigned.
async fn hand_offs_outside_business_hours_say_when_a_person_is_back_and_people_are_assigned(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let moderator = moderator(&app).await;
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_zero_offset() as usize;
    // Open all day tomorrow only.
    let tomorrow = DAYS[(today + 1) % 7];
    put_policy(
        &app,
        json!({ "handoff": { "business_hours": {
            "timezone": "UTC",
            "days": { tomorrow: "00:00-24:00" },
            "closed_message": "We're away; a person will answer from {{ next_open }}."
        }}}),
    )
    .await;
    let asked = app
        .send(
            "ivy",
            "can I talk to a real person?",
            json!({ "wait": true }),
        )
        .await;
    assert_eq!(
        asked["reply"]["text"], "We're away; a person will answer from tomorrow 00:00 (UTC).",
        "{asked}"
    );
    let slash = app.send("jo", "/human", json!({ "wait": true })).await;
    assert_eq!(
        slash["reply"]["text"],
        "We're away; a person will answer from tomorrow 00:00 (UTC)."
    );
    // Open today, all day: the usual message.
    put_policy(
        &app,
        json!({ "handoff": { "message": "A person will answer shortly.", "business_hours": {
            "timezone": "UTC", "days": { DAYS[today]: "00:00-24:00" } }}}),
    )
    .await;
    let asked = app
        .send(
            "kim",
            "can I talk to a real person?",
            json!({ "wait": true }),
        )
        .await;
    assert_eq!(asked["reply"]["text"], "A person will answer shortly.");
    // Invalid hours are refused with their paths.
    let (code, body) = call(
        &app,
        &app.admin_key,
        Method::PUT,
        "/v1/moderation/policy",
        Some(
            json!({ "handoff": { "business_hours": { "timezone": "Nowhere/Here",
            "days": { "mon": "18:00-09:00" } } } }),
        ),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let text = body.to_string();
    assert!(text.contains("handoff.business_hours.timezone"), "{text}");
    assert!(text.contains("handoff.business_hours.days.mon"), "{text}");

    // Assignment: a bot conversation assigned to "me" goes to the moderator, with its ticket.
    let lee = app.send("lee", "hi", json!({ "wait": true })).await;
    let lee = lee["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let (code, ticket) = call(
        &app,
        &moderator,
        Method::POST,
        "/v1/tickets",
        Some(json!({ "conversation_id": lee, "subject": "Check in on Lee" })),
    )
    .await;
    assert_eq!(code, 201, "{ticket}");
    let (code, assigned) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({ "assignee": "me" })),
    )
    .await;
    assert_eq!(code, 200, "{assigned}");
    assert_eq!(assigned["status"], "human");
    let me = assigned["assignee"].as_str().expect("assignee").to_owned();
    let (_, mine) = app.get(&moderator, "/v1/conversations?assignee=me").await;
    assert_eq!(
        mine["conversations"].as_array().map(Vec::len),
        Some(1),
        "{mine}"
    );
    assert_eq!(mine["conversations"][0]["id"], lee.as_str());
    assert_eq!(mine["conversations"][0]["assignee"], me.as_str());
    let tickets = conversation_tickets(&app, &moderator, &lee).await;
    assert_eq!(tickets["tickets"][0]["assignee"], me.as_str(), "{tickets}");
    // Ticket figures per priority: four hand-offs and Lee's, none past its targets yet.
    let (_, stats) = app.get(&moderator, "/v1/moderation/stats").await;
    let normal = stats["tickets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["priority"] == "normal"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(normal["total"], 4, "{stats}");
    assert_eq!(normal["unresolved"], 4);
    assert_eq!(normal["first_response_breached"], 0);
    assert_eq!(normal["resolution_breached"], 0);
    // Not a staff key: refused. Unassigned with null; handed back, the assignee goes too.
    let (code, body) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({ "assignee": "no-such-key" })),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({ "assignee": null })),
    )
    .await;
    assert_eq!(
        (code, body["assignee"].clone()),
        (200, Value::Null),
        "{body}"
    );
    call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({ "assignee": "me" })),
    )
    .await;
    let (code, body) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({ "status": "bot" })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["assignee"], Value::Null, "{body}");
    let (code, _) = call(
        &app,
        &moderator,
        Method::PATCH,
        &format!("/v1/conversations/{lee}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 400, "nothing to change");
    let (code, _) = call(
        &app,
        &moderator,
        Method::PATCH,
        "/v1/conversations/nope",
        Some(json!({ "assignee": "me" })),
    )
    .await;
    assert_eq!(code, 404);
    app.stop().await;
}

/// A person whose chat was flagged and has a ticket links it to their other app: the flag and
/// the ticket move to the one contact with the rest of the history (deleting the merged contact
/// must not trip over rows that still name it).
async fn a_flagged_contact_with_a_ticket_links_its_other_app(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let path = connect_telegram(&app, &api).await;
    put_policy(
        &app,
        json!({ "rules": [ { "id": "insults", "words": ["idiot"], "action": "flag" } ] }),
    )
    .await;
    let moderator = moderator(&app).await;
    // On the API channel: a flagged message, and a ticket about the conversation.
    let sent = app.send("zoe", "you idiot", json!({ "wait": true })).await;
    let conversation = sent["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    // The question, and the echo that repeats it.
    let open = flags(&app, &moderator, "open").await;
    assert_eq!(open.len(), 2, "{open:?}");
    let merged = open[0]["contact_id"].as_str().expect("contact").to_owned();
    let (code, ticket) = call(
        &app,
        &moderator,
        Method::POST,
        "/v1/tickets",
        Some(json!({ "subject": "Rude", "conversation_id": conversation })),
    )
    .await;
    assert_eq!(code, 201, "{ticket}");
    assert_eq!(ticket["contact_id"], merged.as_str(), "{ticket}");
    // On Telegram: a code; the API contact redeems it and is merged into the Telegram one.
    let update = json!({ "update_id": 1, "message": {
        "message_id": 1, "date": 1_700_000_000,
        "chat": { "id": 4343, "type": "private", "first_name": "Zoe" },
        "from": { "id": 4343, "is_bot": false, "first_name": "Zoe" }, "text": "/link" } });
    let res = app
        .http
        .post(format!("{}{path}", app.base))
        .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
        .json(&update)
        .send()
        .await
        .expect("webhook");
    assert_eq!(res.status(), 200);
    let reply = common::eventually("the link code", Duration::from_secs(20), || async {
        api.calls("sendMessage")
            .first()
            .and_then(|c| c.body["text"].as_str().map(str::to_owned))
    })
    .await;
    let code = common::link_code(&reply).unwrap_or_else(|| panic!("no code in {reply:?}"));
    let linked = app
        .send("zoe", &format!("/link {code}"), json!({ "wait": true }))
        .await;
    assert!(
        linked["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Linked")),
        "{linked}"
    );
    let (status, contact) = app
        .get(&app.admin_key, &format!("/v1/contacts/{merged}"))
        .await;
    assert_eq!(status, 404, "the merged contact is gone: {contact}");
    let open = flags(&app, &moderator, "open").await;
    let kept = open[0]["contact_id"].as_str().expect("contact").to_owned();
    assert_ne!(kept, merged);
    assert!(
        open.len() >= 2 && open.iter().all(|f| f["contact_id"] == kept.as_str()),
        "{open:?}"
    );
    let (code, tickets) = call(
        &app,
        &moderator,
        Method::GET,
        &format!("/v1/tickets/{}", ticket["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_eq!(code, 200, "{tickets}");
    assert_eq!(tickets["contact_id"], kept.as_str(), "{tickets}");
    let (status, view) = app
        .get(&app.admin_key, &format!("/v1/contacts/{kept}"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["contact"]["identities"].as_array().map(Vec::len),
        Some(2),
        "{view}"
    );
    app.stop().await;
}
