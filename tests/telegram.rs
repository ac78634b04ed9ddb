//! The Telegram channel through the front door: webhook and long polling against a local Bot API
//! stand-in (tests/common/telegram.rs), driven by real Update payloads
//! (channels/telegram/tests/fixtures, attribution in SOURCES.md there).

mod common;

use std::time::Duration;

use common::telegram::{BOT_USERNAME, BotApi, TOKEN};
use common::{Backend, TestApp};
use serde_json::{Value, json};
use switchboard::registry::TELEGRAM_TYPING_AFTER as TYPING_AFTER;

const SECRET: &str = "s3cret_token-1";

both_backends!(
    webhook_updates_are_verified_stored_once_and_answered,
    bot_api_errors_retry_wait_or_dead_letter_with_the_reason,
    polling_acknowledges_and_answers_each_update_once,
    groups_are_answered_only_when_addressed,
    commands_hand_off_and_agent_buttons,
    a_contact_links_telegram_and_whatsapp_into_one_history,
    a_photo_is_a_reference_fetched_through_get_file,
    with_a_public_url_the_webhook_is_registered_with_the_secret,
    a_slow_answer_keeps_the_typing_indicator_alive,
    sends_to_one_chat_are_paced,
    refused_markup_goes_plain_and_a_moved_group_is_followed,
);

/// Answers after a pause, like a model generating.
struct Slow;

#[async_trait::async_trait]
impl switchboard::answer::Responder for Slow {
    async fn respond(
        &self,
        turn: &switchboard::answer::Turn,
    ) -> anyhow::Result<switchboard::answer::Answer> {
        tokio::time::sleep(Duration::from_millis(4_600)).await;
        Ok(switchboard::answer::Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("slowly: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/channels/telegram/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&raw).expect("fixture JSON")
}

fn text_update(update_id: i64, chat_id: i64, text: &str) -> Value {
    json!({ "update_id": update_id, "message": {
        "message_id": update_id, "date": 1_700_000_000,
        "chat": { "id": chat_id, "type": "private", "first_name": "Ann" },
        "from": { "id": chat_id, "is_bot": false, "first_name": "Ann" },
        "text": text } })
}

/// Connects a Telegram channel on the stand-in; returns (channel id, webhook path, response).
async fn connect(app: &TestApp, api: &BotApi, mode: &str) -> (String, String, Value) {
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "telegram", "config": {
            "bot_token": TOKEN, "webhook_secret": SECRET, "mode": mode, "api_url": api.base } }))
        .send()
        .await
        .expect("connect");
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.expect("json");
    let id = body["channel_id"].as_str().expect("id").to_owned();
    (id.clone(), format!("/webhooks/telegram/{id}"), body)
}

async fn post(app: &TestApp, path: &str, body: &Value, secret: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("json"));
    if let Some(secret) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    let res = req.send().await.expect("post");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn conversations(app: &TestApp) -> Vec<Value> {
    let (_, list) = app
        .get(&app.admin_key, "/v1/conversations?channel=telegram")
        .await;
    list["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Telegram refuses our HTML once ("can't parse entities"): the same words go again unformatted,
/// at once, as one delivery. A group that became a supergroup: the reply follows it to its new id.
async fn refused_markup_goes_plain_and_a_moved_group_is_followed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    api.fail_next(
        "sendMessage",
        1,
        400,
        json!({ "ok": false, "error_code": 400,
                "description": "Bad Request: can't parse entities: Unsupported start tag \"b\" at byte offset 0" }),
    );
    let (status, _) = post(&app, &path, &text_update(1, 42, "a < b?"), Some(SECRET)).await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 2, "the plain retry").await;
    let sends = api.calls("sendMessage");
    assert_eq!(sends[0].body["parse_mode"], "HTML", "{:?}", sends[0].body);
    assert!(
        sends[1].body.get("parse_mode").is_none(),
        "{:?}",
        sends[1].body
    );
    assert!(texts[1].1.contains("no knowledge"), "{texts:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.texts().len(), 2, "one refusal, one delivery");
    let (_, dead) = app.get(&app.admin_key, "/v1/deliveries?status=dead").await;
    assert_eq!(dead["deliveries"], json!([]), "no dead letter");

    let supergroup = -1_001_234_567_i64;
    api.fail_next(
        "sendMessage",
        1,
        400,
        json!({ "ok": false, "error_code": 400,
                "description": "Bad Request: group chat was upgraded to a supergroup chat",
                "parameters": { "migrate_to_chat_id": supergroup } }),
    );
    let (status, _) = post(&app, &path, &text_update(2, 43, "hello"), Some(SECRET)).await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 4, "the reply at the new id").await;
    assert_eq!(texts[2].0, "43");
    assert_eq!(texts[3].0, supergroup.to_string(), "{texts:?}");
    assert_eq!(texts[3].1, texts[2].1);
    let (_, dead) = app.get(&app.admin_key, "/v1/deliveries?status=dead").await;
    assert_eq!(dead["deliveries"], json!([]), "no dead letter");
    app.stop().await;
}

async fn wait_texts(api: &BotApi, n: usize, what: &str) -> Vec<(String, String)> {
    common::eventually(what, Duration::from_secs(20), || async {
        let texts = api.texts();
        (texts.len() >= n).then_some(texts)
    })
    .await
}

async fn webhook_updates_are_verified_stored_once_and_answered(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, connected) = connect(&app, &api, "webhook").await;
    assert_eq!(
        api.calls("getMe").len(),
        1,
        "the token is checked on connect"
    );
    // No public URL configured: nothing registered, and the answer says so.
    assert_eq!(connected["webhook_registered"], false);
    // Credentials are sealed at rest: neither the token nor the secret is in the database.
    let stored: String = sqlx::query_scalar("SELECT config FROM channel WHERE kind = 'telegram'")
        .fetch_one(app.store.pool())
        .await
        .expect("config");
    assert!(
        !stored.contains("TEST-token") && !stored.contains(SECRET) && stored.contains("enc:v1:"),
        "{stored}"
    );

    // Telegram's own guide example (no chat.type, no is_bot): `/start` from chat 1111111.
    let update = fixture("official_docs/update__message_with_text.json");
    for secret in [None, Some("wrong"), Some("s3cret_token-")] {
        let (status, body) = post(&app, &path, &update, secret).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_signature");
    }
    assert!(conversations(&app).await.is_empty(), "nothing stored");
    let (status, body) = post(&app, &path, &json!({ "message": {} }), Some(SECRET)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_payload"))
    );

    // Five concurrent redeliveries of the update: one message, one reply.
    let sends = (0..5).map(|_| post(&app, &path, &update, Some(SECRET)));
    for (status, body) in futures::future::join_all(sends).await {
        assert_eq!(status, 200, "{body}");
    }
    let texts = wait_texts(&api, 1, "the /start reply").await;
    assert_eq!(texts[0].0, "1111111");
    assert_eq!(texts[0].1, switchboard::commands::WELCOME);
    let send = &api.calls("sendMessage")[0];
    assert_eq!(send.body["parse_mode"], "HTML");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.texts().len(), 1, "answered once");
    let conversation = app.first_conversation("telegram").await;
    let messages = app.messages(&conversation).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["kind"], "command");

    // A question the bot answers at once: no typing action (Telegram recommends it only for
    // answers that take a noticeable time; `a_slow_answer_keeps_the_typing_indicator_alive`).
    let posted = std::time::Instant::now();
    let (status, _) = post(
        &app,
        &path,
        &text_update(20, 1111111, "is 2 < 3 & 4 > 1?"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 2, "the answer").await;
    assert!(texts[1].1.contains("no knowledge"), "{texts:?}");
    let answered = api.calls("sendMessage")[1].at - posted;
    tokio::time::sleep(TYPING_AFTER + Duration::from_millis(300)).await;
    let typing = api.calls("sendChatAction");
    // Never before the answer took that long (a loaded machine may take longer).
    assert!(
        typing.iter().all(|c| c.at - posted >= TYPING_AFTER),
        "typing sent {:?} after the question",
        typing.iter().map(|c| c.at - posted).collect::<Vec<_>>()
    );
    if answered < TYPING_AFTER {
        assert!(
            typing.is_empty(),
            "answered in {answered:?}, yet typing was sent"
        );
    }

    // Text with `<`, `>` and `&` (an agent writes it) reaches Telegram as escaped HTML: only
    // our own markup (`**bold**`) becomes a tag; what looks like a tag or an entity stays text.
    assert_eq!(
        app.agent_message(
            &conversation,
            json!({ "text": "Is 2 < 3 & 4 > 1? **Yes.** <b>not bold</b> &amp; <script>x</script>" })
        )
        .await,
        201
    );
    let texts = wait_texts(&api, 3, "the agent's message").await;
    assert_eq!(
        texts[2].1,
        "Is 2 &lt; 3 &amp; 4 &gt; 1? <b>Yes.</b> &lt;b&gt;not bold&lt;/b&gt; &amp;amp; \
         &lt;script&gt;x&lt;/script&gt;"
    );
    let sends = api.calls("sendMessage");
    assert_eq!(sends[2].body["parse_mode"], "HTML", "{:?}", sends[2].body);
}

async fn bot_api_errors_retry_wait_or_dead_letter_with_the_reason(backend: Backend) {
    // Retry-after is capped at the longest back-off: room for Telegram's 1 s here.
    let tweak = |c: &mut switchboard::config::Config| c.outbox.max_delay_ms = 3_000;
    let Some(app) = TestApp::spawn_with(backend, tweak, None).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    // Rate-limited once (teloxide's own retry_after fixture), then a 502: retried, sent once.
    let retry_after = fixture("teloxide/request__retry_after.json");
    let mut wait_one = retry_after.clone();
    wait_one["parameters"]["retry_after"] = json!(1);
    wait_one["error_code"] = json!(429);
    api.fail_next("sendMessage", 1, 429, wait_one);
    api.fail_next(
        "sendMessage",
        1,
        502,
        json!({ "ok": false, "error_code": 502, "description": "Bad Gateway" }),
    );
    let (status, _) = post(&app, &path, &text_update(1, 42, "hello"), Some(SECRET)).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let texts = wait_texts(&api, 3, "delivery after 429 and 502").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retry_after (1 s) honoured"
    );
    assert_eq!(texts.len(), 3, "two refused attempts and one delivery");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.texts().len(), 3, "no extra sends");

    // A very long answer is split at Telegram's 4,096 characters. (An agent writes it.)
    let conversation = app.first_conversation("telegram").await;
    let long = format!("{}\n\n{}", "a".repeat(4000), "b".repeat(300));
    assert_eq!(
        app.agent_message(&conversation, json!({ "text": long }))
            .await,
        201
    );
    let texts = wait_texts(&api, 5, "both halves").await;
    assert_eq!(texts[3].1, "a".repeat(4000));
    assert_eq!(texts[4].1, "b".repeat(300));
    // The same, but Telegram fails the second half once: the retry resumes after the first half
    // instead of sending it again.
    api.pass_next("sendMessage", 1);
    api.fail_next(
        "sendMessage",
        1,
        502,
        json!({ "ok": false, "error_code": 502, "description": "Bad Gateway" }),
    );
    let long = format!("{}\n\n{}", "c".repeat(4000), "d".repeat(300));
    assert_eq!(
        app.agent_message(&conversation, json!({ "text": long }))
            .await,
        201
    );
    let texts = wait_texts(&api, 8, "the halves, one retried").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts = if api.texts().len() > texts.len() {
        api.texts()
    } else {
        texts
    };
    let count = |t: &str| texts.iter().filter(|(_, x)| x == t).count();
    assert_eq!(
        count(&"c".repeat(4000)),
        1,
        "the accepted half is not sent again"
    );
    assert_eq!(count(&"d".repeat(300)), 2, "the refused half is sent again");

    // The person blocks the bot: Telegram says so on the next send → a dead letter with the
    // reason, no retries.
    api.fail_next(
        "sendMessage",
        1,
        403,
        json!({ "ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user" }),
    );
    let (status, _) = post(
        &app,
        &path,
        &text_update(2, 42, "still there?"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let dead = common::eventually("dead letter", Duration::from_secs(20), || async {
        let dead = app.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("blocked")),
        "{dead:?}"
    );
    assert_eq!(dead[0]["attempts"], 1, "a block is not retried");

    // Telegram's my_chat_member update (teloxide's fixture, re-addressed to this bot and chat):
    // the contact is unreachable, so the next reply is not even attempted.
    let mut blocked = fixture("teloxide/update__issue_523.json");
    blocked["update_id"] = json!(3);
    blocked["my_chat_member"]["chat"]["id"] = json!(42);
    blocked["my_chat_member"]["new_chat_member"]["user"]["id"] = json!(123456);
    let (status, body) = post(&app, &path, &blocked, Some(SECRET)).await;
    assert_eq!((status, body["notices"].clone()), (200, json!(1)));
    let before = api.texts().len();
    let (status, _) = post(
        &app,
        &path,
        &text_update(4, 42, "hello again"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    common::eventually("second dead letter", Duration::from_secs(20), || async {
        let dead = app.dead_letters().await;
        dead.iter()
            .any(|d| {
                d["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("unreachable"))
            })
            .then_some(())
    })
    .await;
    assert_eq!(
        api.texts().len(),
        before,
        "nothing sent to a blocked contact"
    );

    // An older "member" report arriving late does not undo the block; a newer one does.
    let unreachable = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT unreachable_at FROM contact_identity WHERE external_id = '42'",
        )
        .fetch_one(app.store.pool())
        .await
        .expect("identity")
        .is_some()
    };
    for (update_id, date, still_blocked) in [(5, 1_644_600_000, true), (6, 1_644_700_000, false)] {
        let mut back = blocked.clone();
        back["update_id"] = json!(update_id);
        back["my_chat_member"]["date"] = json!(date);
        back["my_chat_member"]["new_chat_member"]["status"] = json!("member");
        let (status, _) = post(&app, &path, &back, Some(SECRET)).await;
        assert_eq!(status, 200);
        assert_eq!(unreachable().await, still_blocked, "update {update_id}");
    }
}

async fn polling_acknowledges_and_answers_each_update_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        api.push_update(text_update(500 + i as i64, 77, text));
    }
    // Telegram serves the same updates again on the next calls (as after a crash before the
    // offset was confirmed): stored and answered once all the same.
    api.replay_next(3);
    // A webhook is still registered (an earlier deployment's): Telegram refuses `getUpdates`
    // with 409 Conflict until it is deleted, so updates arrive only if the poller removes it
    // before it polls.
    api.register_webhook("https://old.example.com/webhooks/telegram/x");
    let (_, path, _) = connect(&app, &api, "polling").await;
    let texts = wait_texts(&api, 3, "three polled messages answered").await;
    assert!(texts.iter().all(|(chat, _)| chat == "77"));
    assert_eq!(api.webhook(), None, "webhook removed");
    let deleted = api.calls("deleteWebhook");
    let polled = api.calls("getUpdates");
    assert!(
        !deleted.is_empty() && polled.iter().all(|p| p.at >= deleted[0].at),
        "webhook removed before polling"
    );
    // The offset moved past the last stored update, and the same updates served again (as
    // Telegram does until acknowledged) were not stored twice.
    common::eventually("offset acknowledged", Duration::from_secs(10), || async {
        api.calls("getUpdates")
            .iter()
            .any(|c| c.body["offset"] == 503)
            .then_some(())
    })
    .await;
    let conversation = app.first_conversation("telegram").await;
    let inbound: Vec<Value> = app
        .messages(&conversation)
        .await
        .into_iter()
        .filter(|m| m["direction"] == "inbound")
        .collect();
    let said: Vec<&str> = inbound.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(said, ["one", "two", "three"], "in order, once each");
    common::eventually("the replays served", Duration::from_secs(10), || async {
        (api.calls("getUpdates").len() >= 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.texts().len(), 3, "each answered once");
    let inbound: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM message WHERE direction = 'inbound'")
            .fetch_one(app.store.pool())
            .await
            .expect("count");
    assert_eq!(inbound, 3, "each stored once");
    // A polling channel takes no webhook.
    let (status, _) = post(&app, &path, &text_update(9, 77, "x"), Some(SECRET)).await;
    assert_eq!(status, 404);

    // A webhook set again while the gateway was down (by another deployment, say): connecting
    // removed the first one, but now only the poller started with the gateway can, and it must
    // do so before it polls, or Telegram answers 409 and no update arrives.
    let admin_key = app.admin_key.clone();
    let db = app.stop().await;
    api.register_webhook("https://elsewhere.example.com/webhooks/telegram/y");
    let restarted = std::time::Instant::now();
    let config = common::test_config(&db);
    let mut app = TestApp::start(db, config, None).await;
    app.admin_key = admin_key;
    api.push_update(text_update(503, 77, "four"));
    let texts = wait_texts(&api, 4, "an update polled after the restart, answered").await;
    assert_eq!(texts[3].0, "77");
    assert_eq!(api.webhook(), None, "webhook removed");
    let since_restart = |method: &str| -> Vec<std::time::Instant> {
        api.calls(method)
            .iter()
            .map(|c| c.at)
            .filter(|at| *at >= restarted)
            .collect()
    };
    let (deleted, polled) = (since_restart("deleteWebhook"), since_restart("getUpdates"));
    assert!(
        !deleted.is_empty() && polled.iter().all(|at| *at > deleted[0]),
        "the poller removes the webhook before it polls"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.texts().len(),
        4,
        "the earlier updates, served again, are not answered again"
    );
    app.stop().await;
}

async fn groups_are_answered_only_when_addressed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let group = |id: i64, text: &str| {
        json!({ "update_id": id, "message": { "message_id": id, "date": 1_700_000_000,
            "chat": { "id": -1001, "type": "supergroup", "title": "Runners" },
            "from": { "id": 5, "is_bot": false, "first_name": "Ann" }, "text": text } })
    };
    for (id, text) in [
        (1, "nice run today"),
        (2, "/help@OtherBot"),
        (3, &format!("@{BOT_USERNAME} how far should I run?") as &str),
        (4, &format!("/help@{BOT_USERNAME}")),
    ] {
        let (status, _) = post(&app, &path, &group(id, text), Some(SECRET)).await;
        assert_eq!(status, 200);
    }
    let texts = wait_texts(&api, 2, "two answers").await;
    assert!(texts.iter().all(|(chat, _)| chat == "-1001"));
    assert!(texts[1].1.starts_with("I answer questions"), "{texts:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.texts().len(),
        2,
        "chatter and other bots' commands are not answered"
    );
    let conversation = app.first_conversation("telegram").await;
    let messages = app.messages(&conversation).await;
    assert_eq!(
        messages.len(),
        6,
        "all four stored, two answered: {messages:?}"
    );
}

async fn commands_hand_off_and_agent_buttons(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let (status, _) = post(&app, &path, &text_update(1, 55, "/stop"), Some(SECRET)).await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 1, "opt-out confirmation").await;
    assert!(texts[0].1.contains("unsubscribed"), "{texts:?}");
    let listed = conversations(&app).await;
    let conversation = listed[0]["id"].as_str().expect("id").to_owned();
    let contact = listed[0]["contact_id"]
        .as_str()
        .expect("contact")
        .to_owned();
    let (_, view) = app
        .get(&app.admin_key, &format!("/v1/contacts/{contact}"))
        .await;
    assert_eq!(view["contact"]["opted_out"], true, "{view}");

    let (status, _) = post(&app, &path, &text_update(2, 55, "/human"), Some(SECRET)).await;
    assert_eq!(status, 200);
    wait_texts(&api, 2, "hand-off confirmation").await;
    let (_, listed) = app
        .get(&app.admin_key, "/v1/conversations?status=human")
        .await;
    assert_eq!(listed["conversations"][0]["id"], conversation.as_str());
    // While a person has it, the bot stays quiet…
    let (status, _) = post(&app, &path, &text_update(3, 55, "anyone?"), Some(SECRET)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.texts().len(), 2);
    // …and the agent answers with buttons: an inline keyboard.
    assert_eq!(
        app.agent_message(
            &conversation,
            json!({ "text": "Which plan? <b>not markup</b>", "content": { "buttons": [
            { "id": "plan_5k", "title": "5k" }, { "id": "plan_10k", "title": "10k" },
            { "id": "docs", "title": "Docs", "url": "https://example.com/plans" } ] } })
        )
        .await,
        201
    );
    let texts = wait_texts(&api, 3, "agent message").await;
    assert_eq!(texts[2].1, "Which plan? &lt;b&gt;not markup&lt;/b&gt;");
    let sent = api.calls("sendMessage")[2].body.clone();
    let keyboard = &sent["reply_markup"]["inline_keyboard"][0];
    assert_eq!(keyboard[0]["callback_data"], "plan_5k");
    assert_eq!(keyboard[2]["url"], "https://example.com/plans");
    // A template cannot go to Telegram: refused at once, not a dead letter later.
    assert_eq!(
        app.agent_message(
            &conversation,
            json!({ "text": "x", "content": { "template": { "name": "hello" } } })
        )
        .await,
        400
    );

    // Back to the bot; the person presses a button (Telegram's guide callback, re-addressed).
    let res = app
        .http
        .patch(format!("{}/v1/conversations/{conversation}", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "status": "bot" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
    let mut press = fixture("official_docs/update__callback_query.json");
    press["update_id"] = json!(4);
    press["callback_query"]["from"]["id"] = json!(55);
    press["callback_query"]["data"] = json!("plan_5k");
    let (status, _) = post(&app, &path, &press, Some(SECRET)).await;
    assert_eq!(status, 200);
    wait_texts(&api, 4, "answer to the button").await;
    common::eventually("callback answered", Duration::from_secs(10), || async {
        api.calls("answerCallbackQuery")
            .iter()
            .any(|c| c.body["callback_query_id"] == "4382bfdwdsb323b2d9")
            .then_some(())
    })
    .await;
    let messages = app.messages(&conversation).await;
    assert!(
        messages
            .iter()
            .any(|m| m["kind"] == "button_reply" && m["text"] == "plan_5k"),
        "{messages:?}"
    );
}

async fn a_contact_links_telegram_and_whatsapp_into_one_history(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let (status, _) = post(&app, &path, &text_update(1, 88, "/link"), Some(SECRET)).await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 1, "link code").await;
    let code =
        common::link_code(&texts[0].1).unwrap_or_else(|| panic!("no code in {:?}", texts[0].1));

    // The same person on WhatsApp (pywa's text message fixture) sends the code.
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "whatsapp", "config": {
            "phone_number_id": "1122334455667", "access_token": "t", "app_secret": "sec",
            "verify_token": "v", "graph_url": "http://127.0.0.1:9/v21.0" } }))
        .send()
        .await
        .expect("connect");
    let wa: Value = res.json().await.expect("json");
    let wa_path = format!(
        "/webhooks/whatsapp/{}",
        wa["channel_id"].as_str().expect("id")
    );
    let raw = std::fs::read(format!(
        "{}/channels/whatsapp/tests/fixtures/pywa/message__text.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let mut payload: Value = serde_json::from_slice(&raw).expect("json");
    let m = &mut payload["entry"][0]["changes"][0]["value"]["messages"][0];
    m["text"]["body"] = json!(format!("link {code}"));
    m["timestamp"] = json!((switchboard::store::now_ms() / 1000).to_string());
    let body = serde_json::to_vec(&payload).expect("json");
    let res = app
        .http
        .post(format!("{}{wa_path}", app.base))
        .header(
            "X-Hub-Signature-256",
            switchboard_channel_api::outbound::sign("sec", &body),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);

    // One contact, two identities, one history (the link reply is in it).
    let contact = common::eventually("linked", Duration::from_secs(20), || async {
        let (_, list) = app.get(&app.admin_key, "/v1/conversations").await;
        let list = list["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let contacts: std::collections::HashSet<String> = list
            .iter()
            .filter_map(|c| c["contact_id"].as_str().map(str::to_owned))
            .collect();
        (list.len() == 2 && contacts.len() == 1).then(|| contacts.into_iter().next())?
    })
    .await;
    let (_, view) = app
        .get(&app.admin_key, &format!("/v1/contacts/{contact}"))
        .await;
    let mut kinds: Vec<&str> = view["contact"]["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["telegram", "whatsapp"], "{view}");
    let history = common::eventually(
        "history with the link reply",
        Duration::from_secs(20),
        || async {
            let (_, h) = app
                .get(&app.admin_key, &format!("/v1/contacts/{contact}/messages"))
                .await;
            let h = h["messages"].as_array().cloned().unwrap_or_default();
            (h.len() >= 4).then_some(h)
        },
    )
    .await;
    let channels: Vec<&str> = history
        .iter()
        .filter_map(|m| m["channel"].as_str())
        .collect();
    assert_eq!(channels[..2], ["telegram", "telegram"], "{history:?}");
    assert!(
        channels[2..].iter().all(|c| *c == "whatsapp"),
        "{history:?}"
    );
    assert!(
        history[3]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Linked")),
        "{history:?}"
    );
    // A code works once.
    let (status, _) = post(
        &app,
        &path,
        &text_update(2, 99, &format!("/link {code}")),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 2, "second use refused").await;
    assert!(texts[1].1.contains("isn't valid"), "{texts:?}");
    // Guessing is bounded: after five wrong codes from one chat, the next is not even checked.
    for (n, guess) in ["111111", "222222", "333333", "444444", "555555"]
        .iter()
        .enumerate()
    {
        let (status, _) = post(
            &app,
            &path,
            &text_update(3 + n as i64, 99, &format!("/link {guess}")),
            Some(SECRET),
        )
        .await;
        assert_eq!(status, 200);
    }
    let texts = wait_texts(&api, 7, "six refusals").await;
    assert!(texts[6].1.starts_with("Too many wrong codes"), "{texts:?}");
    // No linking from a group: the code would be everyone's.
    let group = json!({ "update_id": 20, "message": { "message_id": 20, "date": 1_700_000_000,
        "chat": { "id": -100_500, "type": "group", "title": "Runners" },
        "from": { "id": 7, "is_bot": false, "first_name": "B" }, "text": "/link" } });
    let (status, _) = post(&app, &path, &group, Some(SECRET)).await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 8, "group refusal").await;
    assert!(texts[7].1.contains("private chat"), "{texts:?}");
}

async fn a_photo_is_a_reference_fetched_through_get_file(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let photo = fixture("illemius_telegram_types_2017/message_with_photo.json");
    let (status, _) = post(&app, &path, &photo, Some(SECRET)).await;
    assert_eq!(status, 200);
    let conversation = app.first_conversation("telegram").await;
    let message = app.messages(&conversation).await[0].clone();
    assert_eq!(message["kind"], "image");
    let file_id = message["attachments"][0]["reference"]
        .as_str()
        .expect("a file id reference")
        .to_owned();
    let id = message["id"].as_str().expect("id");
    let (status, _, bytes) = app.attachment(&app.admin_key, id, 0).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, common::telegram::FILE_BYTES);
    assert_eq!(api.calls("getFile")[0].body["file_id"], file_id.as_str());
    // No second attachment; another tenant's key sees nothing.
    assert_eq!(app.attachment(&app.admin_key, id, 1).await.0, 404);
    let other = app
        .store
        .create_tenant(
            &switchboard::core::TenantSlug::parse("other").expect("slug"),
            "Other",
        )
        .await
        .expect("tenant");
    assert_eq!(app.attachment(&other.admin_key, id, 0).await.0, 404);
}

async fn with_a_public_url_the_webhook_is_registered_with_the_secret(backend: Backend) {
    let tweak = |c: &mut switchboard::config::Config| {
        c.public_url = Some("https://bots.example.com/".into())
    };
    let Some(app) = TestApp::spawn_with(backend, tweak, None).await else {
        return;
    };
    let api = BotApi::start().await;
    let (id, _, connected) = connect(&app, &api, "webhook").await;
    assert_eq!(connected["webhook_registered"], true, "{connected}");
    let url = format!("https://bots.example.com/webhooks/telegram/{id}");
    assert_eq!(connected["webhook_url"], url.as_str());
    let set = api.calls("setWebhook");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].body["url"], url.as_str());
    assert_eq!(set[0].body["secret_token"], SECRET);
    let allowed = set[0].body["allowed_updates"].to_string();
    for kind in ["message", "callback_query", "my_chat_member"] {
        assert!(allowed.contains(kind), "{allowed}");
    }
    // Telegram refusing it is reported, not hidden.
    api.fail_next(
        "setWebhook",
        1,
        400,
        json!({ "ok": false, "error_code": 400, "description": "Bad Request: bad webhook: HTTPS url must be provided for webhook" }),
    );
    let (_, _, again) = connect(&app, &api, "webhook").await;
    assert_eq!(
        again["channel_id"],
        id.as_str(),
        "the same bot keeps its channel"
    );
    assert_eq!(again["webhook_registered"], false);
    assert!(
        again["webhook_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTPS url")),
        "{again}"
    );
}

async fn a_slow_answer_keeps_the_typing_indicator_alive(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, Some(std::sync::Arc::new(Slow))).await
    else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let posted = std::time::Instant::now();
    let (status, _) = post(
        &app,
        &path,
        &text_update(1, 31, "plan my week"),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let texts = wait_texts(&api, 1, "the slow answer").await;
    assert_eq!(texts[0].1, "slowly: plan my week");
    // "typing…" once the answer took a noticeable time, and, as Telegram shows it for 5 s,
    // renewed while the answer took 4.6 s.
    let typing: Vec<_> = api
        .calls("sendChatAction")
        .into_iter()
        .filter(|c| c.body["action"] == "typing")
        .collect();
    assert!(typing.len() >= 2, "typing sent {} times", typing.len());
    assert!(typing[0].at - posted >= TYPING_AFTER, "typing at once");
}

async fn sends_to_one_chat_are_paced(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = BotApi::start().await;
    let (_, path, _) = connect(&app, &api, "webhook").await;
    let (status, _) = post(&app, &path, &text_update(1, 64, "hi"), Some(SECRET)).await;
    assert_eq!(status, 200);
    wait_texts(&api, 1, "the first answer").await;
    let conversation = app.first_conversation("telegram").await;
    // Six agent messages at once to one chat: a burst of three, then about one a second.
    for n in 0..6 {
        assert_eq!(
            app.agent_message(&conversation, json!({ "text": format!("note {n}") }))
                .await,
            201
        );
    }
    common::eventually("six notes", Duration::from_secs(30), || async {
        (api.texts().len() >= 7).then_some(())
    })
    .await;
    let at: Vec<std::time::Instant> = api
        .calls("sendMessage")
        .iter()
        .filter(|c| {
            c.body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("note "))
        })
        .map(|c| c.at)
        .collect();
    assert_eq!(at.len(), 6);
    let texts: Vec<String> = api.texts().into_iter().skip(1).map(|(_, t)| t).collect();
    let expected: Vec<String> = (0..6).map(|n| format!("note {n}")).collect();
    assert_eq!(texts, expected, "in order");
    // Whatever the machine's speed, the sixth cannot leave before the chat's rate allows.
    let spread = at[5] - at[0];
    assert!(
        spread >= Duration::from_millis(2_500),
        "six sends within {spread:?}"
    );
}
