//! Email end to end on both backends, through a real SMTP server (aiosmtpd): a raw RFC 5322
//! post answered by mail in its thread (our Message-ID, `In-Reply-To`/`References`,
//! `Auto-Submitted`), replies that find their conversation by any id in the chain or by the
//! `reply+<token>` address, only the new text given to the bot; auto-replies, bulk mail and
//! bounces stored and never answered, a hard bounce marking the address unreachable; Mailgun's
//! signature, stale timestamps and reused tokens; SendGrid Inbound Parse's real samples with
//! their attachments fetchable; `List-Unsubscribe` on proactive mail only.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::smtp::SmtpServer;
use common::{Backend, TestApp};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Responder, Turn};

both_backends!(
    a_mail_is_answered_in_its_thread_and_replies_find_it,
    automatic_mail_is_stored_and_never_answered,
    mailgun_posts_are_verified_and_replays_refused,
    sendgrid_samples_are_accepted_with_their_attachments,
    tenant_set_servers_on_our_network_are_refused,
    proactive_mail_carries_list_unsubscribe_and_unsubscribing_holds,
    a_link_code_is_not_accepted_by_mail,
);

const SECRET: &str = "inbound-secret";
const MAILGUN_KEY: &str = "mailgun-signing-key";
const FROM: &str = "coach@switchboard.example.test";

/// Answers with what it was told, so the text the bot got is visible in the reply.
struct Echo;

#[async_trait]
impl Responder for Echo {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("echo: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

struct Mail {
    app: TestApp,
    smtp: SmtpServer,
    path: String,
}

async fn start(backend: Backend) -> Option<Mail> {
    let smtp = SmtpServer::start().await?;
    let app = TestApp::spawn_with(backend, |_| {}, Some(Arc::new(Echo))).await?;
    let res = app
        .http
        .post(format!("{}/v1/channels", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "kind": "email", "config": {
            "from": format!("Coach <{FROM}>"), "smtp_url": smtp.url(),
            "inbound_secret": SECRET, "mailgun_signing_key": MAILGUN_KEY } }))
        .send()
        .await
        .expect("connect");
    let status = res.status();
    let body: Value = res.json().await.expect("json");
    assert_eq!(status, 201, "{body}");
    let path = format!(
        "/webhooks/email/{}",
        body["channel_id"].as_str().expect("id")
    );
    Some(Mail { app, smtp, path })
}

fn parse(raw: &str) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .expect("a mail")
}

impl Mail {
    async fn post_raw(&self, raw: &str) -> (u16, Value) {
        let res = self
            .app
            .http
            .post(format!("{}{}", self.app.base, self.path))
            .basic_auth("parse", Some(SECRET))
            .header("content-type", "message/rfc822")
            .body(raw.to_owned())
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn conversations(&self) -> Vec<Value> {
        let (_, list) = self
            .app
            .get(&self.app.admin_key, "/v1/conversations?channel=email")
            .await;
        list["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn mail(from: &str, id: &str, subject: &str, extra: &str, body: &str) -> String {
    format!(
        "From: Ann Example <{from}>\r\nTo: Coach <{FROM}>\r\nSubject: {subject}\r\n\
         Message-ID: <{id}>\r\nDate: Sun, 06 Dec 2026 10:00:00 +0000\r\n{extra}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
}

async fn a_mail_is_answered_in_its_thread_and_replies_find_it(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    // A first mail, with a signature: the bot gets the new text only.
    let first = mail(
        "ann@example.com",
        "first@mail.example.com",
        "Sleep question",
        "",
        "How long before bed should I stop coffee?\r\n\r\n-- \r\nAnn Example\r\nSent from my phone",
    );
    let (status, body) = m.post_raw(&first).await;
    assert_eq!(status, 200, "{body}");
    let received = m.smtp.wait_for(1).await;
    let reply = parse(&received[0]);
    assert_eq!(
        reply.body_text(0).map(|t| t.trim().to_owned()).as_deref(),
        Some("echo: How long before bed should I stop coffee?")
    );
    assert_eq!(reply.subject(), Some("Re: Sleep question"));
    assert_eq!(
        reply.in_reply_to().as_text(),
        Some("first@mail.example.com")
    );
    assert!(
        reply
            .references()
            .as_text_list()
            .is_some_and(|l| l.iter().any(|r| r == "first@mail.example.com"))
            || reply.references().as_text() == Some("first@mail.example.com"),
        "{received:?}"
    );
    let ours = reply.message_id().expect("our Message-ID").to_owned();
    assert!(ours.starts_with("sb."), "{ours}");
    assert_eq!(
        reply.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert!(
        reply.header_raw("List-Unsubscribe").is_none(),
        "not proactive"
    );
    assert!(
        reply.html_body_count() >= 1 && reply.text_body_count() >= 1,
        "text + HTML"
    );
    let conversations = m.conversations().await;
    assert_eq!(conversations.len(), 1);
    let conversation = conversations[0]["id"].as_str().expect("id").to_owned();

    // The full original is kept, with the quoted reply below.
    let messages = m.app.messages(&conversation).await;
    assert_eq!(messages[0]["kind"], "email");

    // Ann answers our mail (Outlook quoting it): same conversation, only her new line.
    let second = mail(
        "Ann@Example.com",
        "second@mail.example.com",
        "RE: Sleep question",
        &format!("In-Reply-To: <{ours}>\r\nReferences: <first@mail.example.com> <{ours}>\r\n"),
        "And tea?\r\n\r\n-----Original Message-----\r\nFrom: Coach\r\nSent: Sunday\r\nSubject: Re: Sleep question\r\n\r\necho: How long",
    );
    let (status, body) = m.post_raw(&second).await;
    assert_eq!(status, 200, "{body}");
    let received = m.smtp.wait_for(2).await;
    let reply2 = parse(&received[1]);
    assert_eq!(
        reply2.body_text(0).map(|t| t.trim().to_owned()).as_deref(),
        Some("echo: And tea?")
    );
    assert_eq!(
        reply2.in_reply_to().as_text(),
        Some("second@mail.example.com")
    );
    assert_eq!(
        m.conversations().await.len(),
        1,
        "the reply joined its thread"
    );

    // A helpdesk that drops the headers but keeps our reply+ address: still the thread.
    let token_to = format!("coach+{conversation}@switchboard.example.test");
    let third = mail(
        "ann@example.com",
        "third@mail.example.com",
        "Sleep",
        "",
        "Thanks!",
    )
    .replace(&format!("To: Coach <{FROM}>"), &format!("To: <{token_to}>"));
    let (status, _) = m.post_raw(&third).await;
    assert_eq!(status, 200);
    m.smtp.wait_for(3).await;
    assert_eq!(
        m.conversations().await.len(),
        1,
        "the reply+ address found the thread"
    );

    // A new mail with no references: a new conversation.
    let fresh = mail(
        "ann@example.com",
        "fresh@mail.example.com",
        "Running",
        "",
        "Best shoes?",
    );
    let (status, _) = m.post_raw(&fresh).await;
    assert_eq!(status, 200);
    m.smtp.wait_for(4).await;
    assert_eq!(m.conversations().await.len(), 2, "a new thread");

    // The same mail again (a redelivery) is stored and answered once.
    let (status, _) = m.post_raw(&fresh).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(m.smtp.received().len(), 4);

    // Wrong password: 401, nothing stored.
    let res = m
        .app
        .http
        .post(format!("{}{}", m.app.base, m.path))
        .basic_auth("parse", Some("wrong"))
        .header("content-type", "message/rfc822")
        .body(mail("eve@example.com", "eve@x", "hi", "", "hi"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 401);
    assert_eq!(m.conversations().await.len(), 2);
}

async fn automatic_mail_is_stored_and_never_answered(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    // A person writes; we answer once.
    let (status, _) = m
        .post_raw(&mail(
            "bob@example.com",
            "b1@example.com",
            "Hi",
            "",
            "Hello?",
        ))
        .await;
    assert_eq!(status, 200);
    let received = m.smtp.wait_for(1).await;
    let ours = parse(&received[0]).message_id().expect("id").to_owned();

    // Their out-of-office, a bulk mail and a list mail answer it: stored, never answered.
    for (n, extra) in [
        "Auto-Submitted: auto-replied\r\n",
        "X-Autoreply: yes\r\n",
        "Precedence: bulk\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let auto = mail(
            "bob@example.com",
            &format!("auto{n}@example.com"),
            "Out of office",
            &format!("{extra}In-Reply-To: <{ours}>\r\n"),
            "I am away until Monday.",
        );
        let (status, body) = m.post_raw(&auto).await;
        assert_eq!(status, 200, "{body}");
    }
    // A delivery status notification: the address bounced for good.
    let dsn = format!(
        "From: Mail Delivery System <MAILER-DAEMON@example.net>\r\nTo: <{FROM}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@example.net>\r\n\
         In-Reply-To: <{ours}>\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--b1--\r\n"
    );
    let (status, body) = m.post_raw(&dsn).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m.smtp.received().len(), 1, "no answer to automatic mail");
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM message WHERE direction = 'inbound' AND kind IN ('auto_reply', 'bulk', 'bounce')",
    )
    .fetch_one(m.app.store.pool())
    .await
    .expect("count");
    assert_eq!(count, 4, "stored, all four");

    // Bob's address bounced for good: an agent's mail to him is not attempted.
    let conversation: String = sqlx::query_scalar(
        "SELECT conversation_id FROM message WHERE provider_id = 'b1@example.com'",
    )
    .fetch_one(m.app.store.pool())
    .await
    .expect("Bob's conversation");
    let res = m
        .app
        .http
        .post(format!(
            "{}/v1/conversations/{conversation}/messages",
            m.app.base
        ))
        .bearer_auth(&m.app.admin_key)
        .json(&json!({ "text": "Are you still there?" }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let dead = m.app.dead_letters().await;
    assert!(
        dead.iter().any(|d| d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable"))),
        "{dead:?}"
    );
    assert_eq!(m.smtp.received().len(), 1);
}

fn mailgun_form(
    timestamp: &str,
    token: &str,
    key: &str,
    id: &str,
    text: &str,
) -> Vec<(String, String)> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    [
        ("timestamp", timestamp),
        ("token", token),
        ("signature", signature.as_str()),
        ("recipient", FROM),
        ("sender", "dan@example.com"),
        ("from", "Dan <dan@example.com>"),
        ("subject", "Mailgun route"),
        ("body-plain", text),
        ("stripped-text", text),
        ("Message-Id", &format!("<{id}>")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn mailgun_posts_are_verified_and_replays_refused(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    let post = |form: Vec<(String, String)>| {
        let app = &m.app;
        let url = format!("{}{}", app.base, m.path);
        async move {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&form)
                .finish();
            let res = app
                .http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post");
            res.status().as_u16()
        }
    };
    // A token remembered from two days ago (long past any timestamp Mailgun may still send).
    let channel_id = m.path.rsplit('/').next().expect("channel id").to_owned();
    sqlx::query("INSERT INTO webhook_token (channel_id, token, body_sha256, seen_at) VALUES ($1, 'old', 'x', $2)")
        .bind(&channel_id)
        .bind(switchboard::store::now_ms() - 2 * 86_400_000)
        .execute(m.app.store.pool())
        .await
        .expect("old token");
    let now = (switchboard::store::now_ms() / 1000).to_string();
    let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    assert_eq!(
        post(mailgun_form(
            &now,
            token,
            MAILGUN_KEY,
            "mg1@example.com",
            "Hi from Mailgun"
        ))
        .await,
        200
    );
    m.smtp.wait_for(1).await;
    // Mailgun redelivering the same post: fine, stored once.
    assert_eq!(
        post(mailgun_form(
            &now,
            token,
            MAILGUN_KEY,
            "mg1@example.com",
            "Hi from Mailgun"
        ))
        .await,
        200
    );
    // The same token on another body: a replay.
    assert_eq!(
        post(mailgun_form(
            &now,
            token,
            MAILGUN_KEY,
            "mg2@example.com",
            "Replayed"
        ))
        .await,
        401
    );
    // A wrong key, and a stale timestamp.
    assert_eq!(
        post(mailgun_form(
            &now,
            "t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2t2",
            "wrong",
            "mg3@example.com",
            "x"
        ))
        .await,
        401
    );
    let stale = (switchboard::store::now_ms() / 1000 - 3600).to_string();
    assert_eq!(
        post(mailgun_form(
            &stale,
            "t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3t3",
            MAILGUN_KEY,
            "mg4@example.com",
            "x"
        ))
        .await,
        401
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message WHERE direction = 'inbound'")
        .fetch_one(m.app.store.pool())
        .await
        .expect("count");
    assert_eq!(count, 1);
    assert_eq!(m.smtp.received().len(), 1);
    // Old tokens are forgotten; the fresh one is remembered.
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token FROM webhook_token ORDER BY token")
        .fetch_all(m.app.store.pool())
        .await
        .expect("tokens");
    assert_eq!(tokens, [token]);
}

async fn sendgrid_samples_are_accepted_with_their_attachments(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    let dir = format!(
        "{}/channels/email/tests/fixtures/sendgrid_inbound_parse",
        env!("CARGO_MANIFEST_DIR")
    );
    for name in [
        "default_data.txt",
        "raw_data.txt",
        "raw_data_with_attachments.txt",
    ] {
        let body = std::fs::read(format!("{dir}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let res = m
            .app
            .http
            .post(format!("{}{}", m.app.base, m.path))
            .basic_auth("sendgrid", Some(SECRET))
            .header("content-type", "multipart/form-data; boundary=xYzZY")
            .body(body)
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{name}: {text}");
    }
    // The attachments of the last sample are listed and served from the kept original.
    let row: (String, String) = sqlx::query_as(
        "SELECT id, attachments FROM message WHERE direction = 'inbound' AND attachments <> '[]' ORDER BY created_at DESC",
    )
    .fetch_one(m.app.store.pool())
    .await
    .expect("a message with attachments");
    let attachments: Vec<Value> = serde_json::from_str(&row.1).expect("json");
    assert!(!attachments.is_empty());
    let res = m
        .app
        .http
        .get(format!(
            "{}/v1/messages/{}/attachments/0",
            m.app.base, row.0
        ))
        .bearer_auth(&m.app.admin_key)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    assert!(!res.bytes().await.expect("bytes").is_empty());
}

async fn tenant_set_servers_on_our_network_are_refused(backend: Backend) {
    // No operator exception: loopback, link-local and private addresses are off limits.
    let Some(app) = TestApp::spawn_with(backend, |c| c.egress_allow.clear(), None).await else {
        return;
    };
    let connect = |config: Value| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(format!("{}/v1/channels", app.base))
                .bearer_auth(&app.admin_key)
                .json(&config)
                .send()
                .await
                .expect("connect");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for smtp_url in [
        "smtp://127.0.0.1:25",
        "smtp://user:pw@localhost:587?tls=required",
        "smtps://169.254.169.254",
        "smtp://[::1]:25",
        "smtp://10.0.0.5:25",
    ] {
        let (status, body) = connect(json!({ "kind": "email", "config": {
            "from": FROM, "smtp_url": smtp_url, "inbound_secret": SECRET } }))
        .await;
        assert_eq!(status, 400, "{smtp_url}: {body}");
        assert_eq!(
            body["error"]["code"], "egress_refused",
            "{smtp_url}: {body}"
        );
        assert!(
            !body.to_string().contains("pw@"),
            "no credentials echoed: {body}"
        );
    }
    let (status, body) = connect(json!({ "kind": "sms", "config": {
        "account_sid": "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "auth_token": "t",
        "from": "+15005550006", "api_url": "http://169.254.169.254/latest" } }))
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "egress_refused", "{body}");
    // A bad configuration names the field.
    let (status, body) =
        connect(json!({ "kind": "email", "config": { "from": "not an address" } })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_channel_config", "{body}");
}

async fn proactive_mail_carries_list_unsubscribe_and_unsubscribing_holds(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    let (status, _) = m
        .post_raw(&mail(
            "erin@example.com",
            "e1@example.com",
            "Hello",
            "",
            "Hi coach",
        ))
        .await;
    assert_eq!(status, 200);
    m.smtp.wait_for(1).await;
    let contact: String = sqlx::query_scalar(
        "SELECT c.contact_id FROM conversation c JOIN message m ON m.conversation_id = c.id
         WHERE m.provider_id = 'e1@example.com'",
    )
    .fetch_one(m.app.store.pool())
    .await
    .expect("contact");
    // A one-step program on email, fired at 10:00 UTC (outside the default quiet hours).
    let app = &m.app;
    let res = app
        .http
        .post(format!("{}/v1/programs", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "name": "Nudge", "channels": ["email"], "steps": [
            { "id": "m", "type": "message", "text": "Time for your evening walk." } ] }))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    let program: Value = res.json().await.expect("json");
    let program = program["id"].as_str().expect("id").to_owned();
    let res = app
        .http
        .post(format!("{}/v1/programs/{program}/publish", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 200);
    let t0: i64 = 1_811_844_000_000; // 2027-06-01T10:00:00Z
    app.programs.clock().set(t0);
    let res = app
        .http
        .post(format!("{}/v1/programs/{program}/enrollments", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "contact_id": contact }))
        .send()
        .await
        .expect("enroll");
    assert!(res.status().is_success(), "{}", res.status());
    app.programs.run_due().await.expect("run_due");
    let received = m.smtp.wait_for(2).await;
    let nudge = parse(&received[1]);
    assert_eq!(
        nudge.body_text(0).map(|t| t.trim().to_owned()).as_deref(),
        Some("Time for your evening walk.")
    );
    assert_eq!(
        nudge.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    assert_eq!(
        nudge.header_raw("List-Unsubscribe").map(str::trim),
        Some(format!("<mailto:{FROM}?subject=unsubscribe>").as_str())
    );
    // Answering the List-Unsubscribe mailto (a subject, no text) opts out on every channel.
    let (status, _) = m
        .post_raw(&mail(
            "erin@example.com",
            "e2@example.com",
            "unsubscribe",
            "",
            "",
        ))
        .await;
    assert_eq!(status, 200);
    common::eventually("opted out", Duration::from_secs(20), || async {
        let (_, view) = app
            .get(&app.admin_key, &format!("/v1/contacts/{contact}"))
            .await;
        (view["contact"]["opted_out"] == true).then_some(())
    })
    .await;
}

async fn a_link_code_is_not_accepted_by_mail(backend: Backend) {
    let Some(m) = start(backend).await else {
        return;
    };
    // `From` is whatever the sender wrote: a code redeemed by mail could join a stranger's
    // mailbox to the sender's chat. Refused, with the safe way round.
    let (status, _) = m
        .post_raw(&mail(
            "frank@example.com",
            "f1@example.com",
            "link",
            "",
            "/link 123456",
        ))
        .await;
    assert_eq!(status, 200);
    let received = m.smtp.wait_for(1).await;
    let text = parse(&received[0])
        .body_text(0)
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert!(text.contains("not accepted by email"), "{text}");
    // Asking for a code by mail works: it goes to the real mailbox.
    let (status, _) = m
        .post_raw(&mail(
            "frank@example.com",
            "f2@example.com",
            "link",
            "",
            "/link",
        ))
        .await;
    assert_eq!(status, 200);
    let received = m.smtp.wait_for(2).await;
    let text = parse(&received[1])
        .body_text(0)
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert!(text.contains("Your link code is"), "{text}");
}
