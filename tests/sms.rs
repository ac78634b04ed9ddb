//! SMS through Twilio, end to end on both backends: a signed inbound webhook (Twilio's form,
//! signed over the configured public URL) answered with empty TwiML and a reply through the
//! Twilio stand-in's `Messages.json`; status callbacks that only move forward; Twilio's opt-out
//! keywords and `OptOutType` shared with every channel, with no second answer from us; 21610
//! and 21211 send errors; MMS media fetched with the account's credentials; segment-aware
//! splitting; `/link` with Telegram; the real botbuilder payloads.

mod common;

use std::time::Duration;

use common::telegram::{BotApi, TOKEN};
use common::twilio::{self, SentSms};
use common::{Backend, TestApp};
use serde_json::{Value, json};

both_backends!(
    an_sms_is_stored_answered_and_its_statuses_only_move_forward,
    twilio_keywords_opt_out_on_every_channel_without_a_second_answer,
    send_errors_mark_the_recipient,
    mms_media_is_listed_and_fetched_with_the_account_credentials,
    a_long_reply_goes_in_segment_sized_parts_at_the_numbers_pace,
    an_sms_number_links_to_a_telegram_chat,
    the_real_twilio_payloads_are_accepted,
);

const PUBLIC_URL: &str = "https://sb.example.test";

struct Sms {
    app: TestApp,
    path: String,
    sent: twilio::Sent,
    base: String,
}

async fn start(backend: Backend, extra: Value) -> Option<Sms> {
    let app =
        TestApp::spawn_with(backend, |c| c.public_url = Some(PUBLIC_URL.into()), None).await?;
    let (base, sent) = twilio::twilio_stand_in().await;
    let mut config = json!({ "account_sid": twilio::ACCOUNT_SID, "auth_token": twilio::AUTH_TOKEN,
                             "from": twilio::FROM, "api_url": base, "mps": 100 });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "sms", "config": config }))
        .send()
        .await
        .expect("connect");
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.expect("json");
    let id = body["channel_id"].as_str().expect("channel id").to_owned();
    assert_eq!(
        body["webhook_url"].as_str(),
        Some(format!("{PUBLIC_URL}/webhooks/sms/{id}").as_str()),
        "{body}"
    );
    Some(Sms {
        app,
        path: format!("/webhooks/sms/{id}"),
        sent,
        base,
    })
}

impl Sms {
    /// Posts a form signed as Twilio signs it; (status, content type, body).
    async fn post(&self, form: &[(String, String)]) -> (u16, String, String) {
        let signature = twilio::sign(&format!("{PUBLIC_URL}{}", self.path), form);
        let res = self
            .app
            .http
            .post(format!("{}{}", self.app.base, self.path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", signature)
            .body(twilio::encode(form))
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, res.text().await.unwrap_or_default())
    }

    async fn text(&self, sid: &str, from: &str, body: &str) {
        let (status, content_type, answer) = self.post(&twilio::inbound(sid, from, body)).await;
        assert_eq!(status, 200, "{answer}");
        assert!(content_type.starts_with("text/xml"), "{content_type}");
        assert!(answer.contains("<Response/>"), "empty TwiML: {answer}");
    }

    fn sent(&self) -> Vec<SentSms> {
        self.sent.lock().expect("lock").clone()
    }

    async fn wait_sent(&self, n: usize) -> Vec<SentSms> {
        common::eventually(&format!("{n} sends"), Duration::from_secs(20), || async {
            let sent = self.sent();
            (sent.len() >= n).then_some(sent)
        })
        .await
    }

    async fn contact_of(&self, conversation: &str) -> Value {
        let (_, list) = self.app.get(&self.app.admin_key, "/v1/conversations").await;
        let contact = list["conversations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == conversation || c["conversation_id"] == conversation)
            .and_then(|c| c["contact_id"].as_str())
            .expect("conversation listed")
            .to_owned();
        let (_, view) = self
            .app
            .get(&self.app.admin_key, &format!("/v1/contacts/{contact}"))
            .await;
        view["contact"].clone()
    }

    async fn status(&self, sid: &str, state: &str, error: Option<&str>) {
        let mut form: Vec<(String, String)> = [
            ("SmsSid", sid),
            ("SmsStatus", state),
            ("MessageStatus", state),
            ("To", "+15551230001"),
            ("MessageSid", sid),
            ("AccountSid", twilio::ACCOUNT_SID),
            ("From", twilio::FROM),
            ("ApiVersion", "2010-04-01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(code) = error {
            form.push(("ErrorCode".into(), code.into()));
        }
        let (status, _, answer) = self.post(&form).await;
        assert_eq!(status, 200, "{answer}");
    }
}

async fn an_sms_is_stored_answered_and_its_statuses_only_move_forward(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    sms.app
        .upload_markdown(
            "Sleep",
            "# Sleep\n\nCaffeine has a half-life of about five hours: stop coffee by noon.",
        )
        .await;
    sms.text(
        "SM00000000000000000000000000000001",
        "+15551230001",
        "When should I stop drinking coffee?",
    )
    .await;
    let sent = sms.wait_sent(1).await;
    let reply = &sent[0];
    assert_eq!(reply.user, twilio::ACCOUNT_SID, "Basic auth as the account");
    assert_eq!(reply.field("To"), Some("+15551230001"));
    assert_eq!(reply.field("From"), Some(twilio::FROM));
    assert!(
        reply.field("Body").is_some_and(|b| b.contains("noon")),
        "{reply:?}"
    );
    let conversation = sms.app.first_conversation("sms").await;
    let callback = format!("{PUBLIC_URL}{}", sms.path);
    assert_eq!(reply.field("StatusCallback"), Some(callback.as_str()));

    // Twilio's status callbacks arrive out of order: `delivered`, then a late `sent`.
    let reply_status = || async {
        let m = sms.app.messages(&conversation).await;
        m.get(1)
            .and_then(|r| r["status"].as_str().map(str::to_owned))
    };
    common::eventually("reply marked sent", Duration::from_secs(20), || async {
        (reply_status().await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    let sid = format!("SM{:032}", 1);
    sms.status(&sid, "delivered", None).await;
    sms.status(&sid, "sent", None).await;
    sms.status(&sid, "queued", None).await;
    assert_eq!(reply_status().await.as_deref(), Some("delivered"));

    // A redelivered inbound message is one message and one answer.
    sms.text(
        "SM00000000000000000000000000000001",
        "+15551230001",
        "When should I stop drinking coffee?",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sms.sent().len(), 1);
    assert_eq!(sms.app.messages(&conversation).await.len(), 2);

    // The URL in the signature is the configured public one: signed over the request's own
    // address (what a forged Host header would give), it is refused.
    let form = twilio::inbound("SM00000000000000000000000000000002", "+15551230001", "hi");
    let forged = twilio::sign(&format!("{}{}", sms.app.base, sms.path), &form);
    let res = sms
        .app
        .http
        .post(format!("{}{}", sms.app.base, sms.path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", forged)
        .header("X-Forwarded-Host", sms.app.addr.to_string())
        .body(twilio::encode(&form))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 401);
    assert_eq!(
        sms.app.messages(&conversation).await.len(),
        2,
        "nothing stored"
    );
}

async fn twilio_keywords_opt_out_on_every_channel_without_a_second_answer(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    let from = "+15551230002";
    sms.text("SM10000000000000000000000000000001", from, "hello")
        .await;
    sms.wait_sent(1).await;
    let conversation = sms.app.first_conversation("sms").await;

    // "Stop" (any case, whole message): opted out everywhere; Twilio answers it, we do not.
    sms.text("SM10000000000000000000000000000002", from, " sToP ")
        .await;
    let contact = common::eventually("opted out", Duration::from_secs(20), || async {
        let c = sms.contact_of(&conversation).await;
        (c["opted_out"] == true).then_some(c)
    })
    .await;
    common::eventually("the STOP turn done", Duration::from_secs(20), || async {
        let m = sms.app.messages(&conversation).await;
        (m.len() >= 3 && m[2]["kind"] == "opt_out").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sms.sent().len(),
        1,
        "no answer to STOP from us: {:?}",
        sms.sent()
    );

    // The scheduler keeps to it: enrolling in a program is refused.
    let contact_id = contact["id"].as_str().expect("contact id").to_owned();
    let _ = contact_id;

    // START opts back in (Twilio answers it too).
    sms.text("SM10000000000000000000000000000003", from, "START")
        .await;
    common::eventually("opted in", Duration::from_secs(20), || async {
        (sms.contact_of(&conversation).await["opted_out"] == false).then_some(())
    })
    .await;

    // "Stop please" is an ordinary message, answered.
    sms.text("SM10000000000000000000000000000004", from, "stop please")
        .await;
    sms.wait_sent(2).await;
    assert_eq!(sms.contact_of(&conversation).await["opted_out"], false);

    // Advanced Opt-Out: Twilio's `OptOutType` decides, whatever the words.
    let mut form = twilio::inbound("SM10000000000000000000000000000005", from, "arrete");
    form.push(("OptOutType".into(), "STOP".into()));
    let (status, _, _) = sms.post(&form).await;
    assert_eq!(status, 200);
    common::eventually(
        "opted out by OptOutType",
        Duration::from_secs(20),
        || async { (sms.contact_of(&conversation).await["opted_out"] == true).then_some(()) },
    )
    .await;
}

async fn send_errors_mark_the_recipient(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    // Twilio refuses the answer with 21610 (the number replied STOP to Twilio): a dead letter,
    // and the contact opted out.
    sms.text(
        "SM20000000000000000000000000000001",
        twilio::OPTED_OUT,
        "hello",
    )
    .await;
    let dead = common::eventually("21610 dead letter", Duration::from_secs(20), || async {
        let dead = sms.app.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("21610")),
        "{dead:?}"
    );
    let conversation = sms.app.first_conversation("sms").await;
    assert_eq!(sms.contact_of(&conversation).await["opted_out"], true);

    // 21211 (not a valid number): unreachable; the next message is not attempted.
    sms.text(
        "SM20000000000000000000000000000002",
        twilio::INVALID,
        "hello",
    )
    .await;
    let dead = common::eventually("21211 dead letter", Duration::from_secs(20), || async {
        let dead = sms.app.dead_letters().await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    assert!(
        dead.iter().any(|d| d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("21211"))),
        "{dead:?}"
    );
    sms.text(
        "SM20000000000000000000000000000003",
        twilio::INVALID,
        "again",
    )
    .await;
    common::eventually("not attempted", Duration::from_secs(20), || async {
        let dead = sms.app.dead_letters().await;
        dead.iter()
            .any(|d| {
                d["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("unreachable"))
            })
            .then_some(())
    })
    .await;
    assert!(sms.sent().is_empty(), "{:?}", sms.sent());
}

async fn mms_media_is_listed_and_fetched_with_the_account_credentials(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    let sid = "MM00000000000000000000000000000001";
    let mut form = twilio::inbound(sid, "+15551230003", "");
    form.retain(|(k, _)| k != "NumMedia");
    let media_url = format!(
        "{}/2010-04-01/Accounts/{}/Messages/{sid}/Media/ME0001",
        sms.base,
        twilio::ACCOUNT_SID
    );
    form.extend([
        ("NumMedia".to_owned(), "1".to_owned()),
        ("MediaUrl0".to_owned(), media_url.clone()),
        ("MediaContentType0".to_owned(), "image/png".to_owned()),
    ]);
    let (status, _, answer) = sms.post(&form).await;
    assert_eq!(status, 200, "{answer}");
    let conversation = sms.app.first_conversation("sms").await;
    let messages = sms.app.messages(&conversation).await;
    let inbound = &messages[0];
    assert_eq!(inbound["kind"], "image", "{inbound}");
    assert_eq!(
        inbound["attachments"][0]["reference"],
        media_url.as_str(),
        "{inbound}"
    );
    let id = inbound["id"].as_str().expect("id");
    let res = sms
        .app
        .http
        .get(format!("{}/v1/messages/{id}/attachments/0", sms.app.base))
        .bearer_auth(&sms.app.admin_key)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(
        res.bytes().await.expect("bytes").as_ref(),
        twilio::MEDIA_BYTES
    );
}

async fn a_long_reply_goes_in_segment_sized_parts_at_the_numbers_pace(backend: Backend) {
    let Some(sms) = start(backend, json!({ "mps": 2, "max_segments": 2 })).await else {
        return;
    };
    sms.text("SM30000000000000000000000000000001", "+15551230004", "hi")
        .await;
    sms.wait_sent(1).await;
    let conversation = sms.app.first_conversation("sms").await;
    // An agent's 700-character GSM text: 5 segments of 153, at most 2 per message → 3 messages.
    let text = "Sleep well tonight. ".repeat(35);
    let res = sms
        .app
        .http
        .post(format!(
            "{}/v1/conversations/{conversation}/messages",
            sms.app.base
        ))
        .bearer_auth(&sms.app.admin_key)
        .json(&json!({ "text": text }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let started = std::time::Instant::now();
    let sent = sms.wait_sent(4).await;
    let parts: Vec<&str> = sent[1..].iter().filter_map(|s| s.field("Body")).collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts.iter().all(|p| p.chars().count() <= 306), "{parts:?}");
    assert_eq!(
        parts.join(" ").split_whitespace().collect::<Vec<_>>(),
        text.split_whitespace().collect::<Vec<_>>()
    );
    // Two messages a second for this number: the three parts count, so the next message waits
    // for them (Twilio itself queues the parts at the number's rate).
    let res = sms
        .app
        .http
        .post(format!(
            "{}/v1/conversations/{conversation}/messages",
            sms.app.base
        ))
        .bearer_auth(&sms.app.admin_key)
        .json(&json!({ "text": "One more thing." }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    sms.wait_sent(5).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // Templates are WhatsApp's: refused at once, not a dead letter later.
    let res = sms
        .app
        .http
        .post(format!(
            "{}/v1/conversations/{conversation}/messages",
            sms.app.base
        ))
        .bearer_auth(&sms.app.admin_key)
        .json(&json!({ "text": "x", "content": { "template": { "name": "hello_world" } } }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 400);
}

async fn an_sms_number_links_to_a_telegram_chat(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    let app = &sms.app;
    let api = BotApi::start().await;
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "telegram", "config": {
            "bot_token": TOKEN, "webhook_secret": "tg_secret", "api_url": api.base } }))
        .send()
        .await
        .expect("connect");
    let tg: Value = res.json().await.expect("json");
    let tg_path = format!(
        "/webhooks/telegram/{}",
        tg["channel_id"].as_str().expect("id")
    );
    let update = json!({ "update_id": 1, "message": { "message_id": 1, "date": 1_700_000_000,
        "chat": { "id": 77, "type": "private" }, "from": { "id": 77, "is_bot": false, "first_name": "A" },
        "text": "/link" } });
    let res = app
        .http
        .post(format!("{}{tg_path}", app.base))
        .header("X-Telegram-Bot-Api-Secret-Token", "tg_secret")
        .json(&update)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    let code = common::eventually("link code", Duration::from_secs(20), || async {
        api.texts().iter().find_map(|(_, t)| common::link_code(t))
    })
    .await;
    sms.text(
        "SM40000000000000000000000000000001",
        "+15551230005",
        &format!("link {code}"),
    )
    .await;
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
    assert_eq!(kinds, ["sms", "telegram"], "{view}");
    // STOP by SMS holds on Telegram too: one suppression registry.
    sms.text("SM40000000000000000000000000000002", "+15551230005", "STOP")
        .await;
    common::eventually("opted out", Duration::from_secs(20), || async {
        let (_, view) = app
            .get(&app.admin_key, &format!("/v1/contacts/{contact}"))
            .await;
        (view["contact"]["opted_out"] == true).then_some(())
    })
    .await;
}

async fn the_real_twilio_payloads_are_accepted(backend: Backend) {
    let Some(sms) = start(backend, json!({})).await else {
        return;
    };
    let dir = format!(
        "{}/channels/sms/tests/fixtures/twilio",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut accepted = 0;
    for name in [
        "botbuilder_dotnet/Payload.txt",
        "botbuilder_dotnet/NoMediaPayload.txt",
        "botbuilder_dotnet/MediaPayload.txt",
        "derived_sms_from_doc_examples.form",
        "derived_mms_from_doc_examples.form",
        "derived_stop_with_optouttype.form",
    ] {
        let Ok(raw) = std::fs::read(format!("{dir}/{name}")) else {
            panic!("fixture {name} missing under {dir}");
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(raw.trim_ascii())
            .into_owned()
            .collect();
        let (status, _, answer) = sms.post(&form).await;
        assert_eq!(status, 200, "{name}: {answer}");
        accepted += 1;
    }
    assert_eq!(accepted, 6);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message WHERE direction = 'inbound'")
        .fetch_one(sms.app.store.pool())
        .await
        .expect("count");
    assert!(count >= 3, "{count}");
}
