//! The channel compliance suite: every adapter passes the same four checks, through the front
//! door, on both backends.
//!
//! 1. A request with a bad signature (or API key, or password) is refused with 401 and stores
//!    nothing.
//! 2. Five concurrent redeliveries of one message give one stored message and one reply.
//! 3. Malformed input is a 400 with a JSON error, and stores nothing.
//! 4. Per-chat order: messages of one chat are answered in the order they were sent.
//!
//! Adapters: `api` (POST /v1/messages, replies to a signed callback), `whatsapp` (pywa's text
//! webhook fixture re-addressed, Graph API stand-in), `telegram` (Update JSON, Bot API stand-in),
//! `sms` (Twilio's form, signed over the configured public URL; Twilio stand-in), `email` (a raw
//! RFC 5322 post behind HTTP Basic auth; replies through a real SMTP server, aiosmtpd). A chat's
//! later mails answer its first (`In-Reply-To`), so they are one thread, as a person's are.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::graph::{Sent, graph_stand_in};
use common::smtp::SmtpServer;
use common::telegram::{BotApi, TOKEN};
use common::twilio;
use common::{Backend, CallbackReceiver, Mode, TestApp};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Responder, Turn};

both_backends!(
    a_bad_signature_stores_nothing,
    five_concurrent_redeliveries_give_one_reply,
    malformed_input_is_a_400,
    per_chat_order_holds,
);

const ADAPTERS: [&str; 5] = ["api", "whatsapp", "telegram", "sms", "email"];
const APP_SECRET: &str = "compliance-app-secret";
const TG_SECRET: &str = "compliance_secret";
const PUBLIC_URL: &str = "https://switchboard.example.test";
const MAIL_SECRET: &str = "compliance-inbound-secret";

/// Answers with what it was told, so order is visible in the replies.
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

/// One adapter on one running gateway, with its provider stand-in.
struct Harness {
    kind: &'static str,
    app: TestApp,
    path: String,
    callback: Option<CallbackReceiver>,
    graph: Option<Sent>,
    bot_api: Option<BotApi>,
    twilio: Option<twilio::Sent>,
    smtp: Option<SmtpServer>,
}

impl Harness {
    async fn start(backend: Backend, kind: &'static str) -> Option<Harness> {
        let smtp = if kind == "email" {
            Some(SmtpServer::start().await?)
        } else {
            None
        };
        let app = TestApp::spawn_with(
            backend,
            |c| c.public_url = Some(PUBLIC_URL.into()),
            Some(Arc::new(Echo)),
        )
        .await?;
        let mut h = Harness {
            kind,
            path: String::new(),
            callback: None,
            graph: None,
            bot_api: None,
            twilio: None,
            smtp,
            app,
        };
        match kind {
            "api" => {
                let receiver = CallbackReceiver::start(Mode::Accept).await;
                h.app.set_callback(&receiver.url).await;
                h.path = "/v1/messages".into();
                h.callback = Some(receiver);
            }
            "whatsapp" => {
                let (base, sent) = graph_stand_in().await;
                let body = h
                    .connect(json!({ "kind": "whatsapp", "config": {
                        "phone_number_id": "1122334455667", "access_token": "t",
                        "app_secret": APP_SECRET, "verify_token": "v", "graph_url": base } }))
                    .await;
                let channel_id = body["channel_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("connecting WhatsApp gave no channel id: {body}"));
                h.path = format!("/webhooks/whatsapp/{channel_id}");
                h.graph = Some(sent);
            }
            "sms" => {
                let (base, sent) = twilio::twilio_stand_in().await;
                let body = h
                    .connect(json!({ "kind": "sms", "config": {
                        "account_sid": twilio::ACCOUNT_SID, "auth_token": twilio::AUTH_TOKEN,
                        "from": twilio::FROM, "api_url": base, "mps": 100 } }))
                    .await;
                let channel_id = body["channel_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("connecting SMS gave no channel id: {body}"));
                h.path = format!("/webhooks/sms/{channel_id}");
                h.twilio = Some(sent);
            }
            "email" => {
                let smtp_url = h.smtp.as_ref().map(SmtpServer::url).unwrap_or_default();
                let body = h
                    .connect(json!({ "kind": "email", "config": {
                        "from": "Coach <coach@switchboard.example.test>", "smtp_url": smtp_url,
                        "inbound_secret": MAIL_SECRET } }))
                    .await;
                let channel_id = body["channel_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("connecting email gave no channel id: {body}"));
                h.path = format!("/webhooks/email/{channel_id}");
            }
            _ => {
                let api = BotApi::start().await;
                let body = h
                    .connect(json!({ "kind": "telegram", "config": {
                        "bot_token": TOKEN, "webhook_secret": TG_SECRET, "api_url": api.base } }))
                    .await;
                let channel_id = body["channel_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("connecting Telegram gave no channel id: {body}"));
                h.path = format!("/webhooks/telegram/{channel_id}");
                h.bot_api = Some(api);
            }
        }
        Some(h)
    }

    async fn connect(&self, request: Value) -> Value {
        let res = self
            .app
            .http
            .post(format!("{}/v1/channels", self.app.base))
            .bearer_auth(&self.app.admin_key)
            .json(&request)
            .send()
            .await
            .expect("connect");
        assert_eq!(res.status(), 201);
        res.json().await.expect("json")
    }

    /// The provider's payload for one text message from `chat` with provider id `n`.
    fn message(&self, chat: &str, n: i64, text: &str) -> Vec<u8> {
        let value = match self.kind {
            "api" => json!({ "contact": { "external_id": chat }, "text": text,
                             "idempotency_key": format!("m-{n}") }),
            "whatsapp" => {
                let raw = std::fs::read(format!(
                    "{}/channels/whatsapp/tests/fixtures/pywa/message__text.json",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .expect("fixture");
                let mut payload: Value = serde_json::from_slice(&raw).expect("json");
                let value = &mut payload["entry"][0]["changes"][0]["value"];
                value["contacts"][0]["wa_id"] = json!(chat);
                let m = &mut value["messages"][0];
                m["from"] = json!(chat);
                m["id"] = json!(format!("wamid.compliance-{n}"));
                m["text"]["body"] = json!(text);
                m["timestamp"] = json!((switchboard::store::now_ms() / 1000).to_string());
                payload
            }
            "sms" => {
                let form = twilio::inbound(&format!("SM{n:032}"), &format!("+1555{chat}"), text);
                return twilio::encode(&form).into_bytes();
            }
            "email" => {
                // Every mail of a chat after its first answers the first: one thread.
                let answers = if n % 100 == 0 || n < 100 {
                    String::new()
                } else {
                    format!("In-Reply-To: <compliance-{}@example.test>\r\n", n - n % 100)
                };
                return format!(
                    "From: Person {chat} <p{chat}@example.test>\r\nTo: coach@switchboard.example.test\r\n\
                     Subject: Question {n}\r\nMessage-ID: <compliance-{n}@example.test>\r\n{answers}\
                     Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
                     Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
                )
                .into_bytes();
            }
            _ => json!({ "update_id": n, "message": { "message_id": n, "date": 1_700_000_000,
                "chat": { "id": chat.parse::<i64>().expect("numeric chat"), "type": "private" },
                "from": { "id": 1, "is_bot": false, "first_name": "A" }, "text": text } }),
        };
        serde_json::to_vec(&value).expect("json")
    }

    /// The contact's id at the provider for a chat.
    fn recipient(&self, chat: &str) -> String {
        match self.kind {
            "sms" => format!("+1555{chat}"),
            "email" => format!("p{chat}@example.test"),
            _ => chat.to_owned(),
        }
    }

    /// POSTs a body, authenticated (`good`) or with a wrong signature/key.
    async fn post(&self, body: Vec<u8>, good: bool) -> (u16, Value) {
        let content_type = match self.kind {
            "sms" => "application/x-www-form-urlencoded",
            "email" => "message/rfc822",
            _ => "application/json",
        };
        let mut req = self
            .app
            .http
            .post(format!("{}{}", self.app.base, self.path))
            .header("content-type", content_type);
        req = match (self.kind, good) {
            ("sms", good) => {
                let form: Vec<(String, String)> =
                    form_urlencoded::parse(&body).into_owned().collect();
                let url = format!("{PUBLIC_URL}{}", self.path);
                let signature = twilio::sign(&url, &form);
                req.header(
                    "X-Twilio-Signature",
                    if good {
                        signature
                    } else {
                        format!("x{signature}")
                    },
                )
            }
            ("email", good) => {
                req.basic_auth("sendgrid", Some(if good { MAIL_SECRET } else { "wrong" }))
            }
            ("api", true) => req.bearer_auth(&self.app.admin_key),
            ("api", false) => req.bearer_auth("sb_not-a-key"),
            ("whatsapp", true) => req.header(
                "X-Hub-Signature-256",
                switchboard_channel_api::outbound::sign(APP_SECRET, &body),
            ),
            ("whatsapp", false) => req.header(
                "X-Hub-Signature-256",
                switchboard_channel_api::outbound::sign("wrong", &body),
            ),
            (_, true) => req.header("X-Telegram-Bot-Api-Secret-Token", TG_SECRET),
            (_, false) => req.header("X-Telegram-Bot-Api-Secret-Token", "wrong"),
        };
        let res = req.body(body).send().await.expect("post");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// (recipient, text) of every reply the provider received, in arrival order.
    fn replies(&self) -> Vec<(String, String)> {
        if let Some(r) = &self.callback {
            return r
                .accepted()
                .iter()
                .map(|r| {
                    (
                        r.body["to"].as_str().unwrap_or_default().to_owned(),
                        r.body["text"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
        }
        if let Some(sent) = &self.twilio {
            return sent
                .lock()
                .expect("lock")
                .iter()
                .map(|s| {
                    (
                        s.field("To").unwrap_or_default().to_owned(),
                        s.field("Body").unwrap_or_default().to_owned(),
                    )
                })
                .collect();
        }
        if let Some(smtp) = &self.smtp {
            return smtp
                .received()
                .iter()
                .map(|raw| {
                    let mail = mail_parser::MessageParser::default()
                        .parse(raw.as_bytes())
                        .expect("a mail");
                    let to = mail
                        .to()
                        .and_then(|a| a.first())
                        .and_then(|a| a.address())
                        .unwrap_or_default()
                        .to_owned();
                    let text = mail
                        .body_text(0)
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_default();
                    (to, text)
                })
                .collect();
        }
        if let Some(sent) = &self.graph {
            return sent
                .lock()
                .expect("lock")
                .iter()
                .map(|(_, b)| {
                    (
                        b["to"].as_str().unwrap_or_default().to_owned(),
                        b["text"]["body"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
        }
        self.bot_api.as_ref().map(BotApi::texts).unwrap_or_default()
    }

    async fn stored_messages(&self) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM message")
            .fetch_one(self.app.store.pool())
            .await
            .expect("count")
    }
}

async fn a_bad_signature_stores_nothing(backend: Backend) {
    for kind in ADAPTERS {
        let Some(h) = Harness::start(backend, kind).await else {
            return;
        };
        let (status, body) = h.post(h.message("4242", 1, "hello"), false).await;
        assert_eq!(status, 401, "{kind}: {body}");
        assert!(body["error"]["code"].is_string(), "{kind}: {body}");
        assert_eq!(h.stored_messages().await, 0, "{kind}: nothing stored");
    }
}

async fn five_concurrent_redeliveries_give_one_reply(backend: Backend) {
    for kind in ADAPTERS {
        let Some(h) = Harness::start(backend, kind).await else {
            return;
        };
        let body = h.message("4242", 7, "only once");
        let posts = (0..5).map(|_| h.post(body.clone(), true));
        for (status, answer) in futures::future::join_all(posts).await {
            assert_eq!(status, 200, "{kind}: {answer:?}");
        }
        common::eventually(
            &format!("{kind}: the reply"),
            Duration::from_secs(20),
            || async { (!h.replies().is_empty()).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(h.replies().len(), 1, "{kind}: one reply");
        assert_eq!(
            h.stored_messages().await,
            2,
            "{kind}: one message, one reply"
        );
    }
}

async fn malformed_input_is_a_400(backend: Backend) {
    for kind in ADAPTERS {
        let Some(h) = Harness::start(backend, kind).await else {
            return;
        };
        let wrong_shape = match kind {
            "api" => json!({ "text": "no contact" }),
            "whatsapp" => json!({ "object": "whatsapp_business_account", "entry": "nope" }),
            // A form without MessageSid/From; a "mail" without a sender.
            "sms" | "email" => json!({ "Body": "no sender" }),
            _ => json!({ "message": { "text": "no update_id" } }),
        };
        for body in [
            b"{not json".to_vec(),
            serde_json::to_vec(&wrong_shape).expect("json"),
        ] {
            let (status, answer) = h.post(body, true).await;
            assert_eq!(status, 400, "{kind}: {answer}");
            assert!(answer["error"]["code"].is_string(), "{kind}: {answer}");
        }
        assert_eq!(h.stored_messages().await, 0, "{kind}: nothing stored");
    }
}

async fn per_chat_order_holds(backend: Backend) {
    for kind in ADAPTERS {
        let Some(h) = Harness::start(backend, kind).await else {
            return;
        };
        let words = ["one", "two", "three", "four", "five"];
        for (i, word) in words.iter().enumerate() {
            let (status, answer) = h.post(h.message("4242", 100 + i as i64, word), true).await;
            assert_eq!(status, 200, "{kind}: {answer}");
        }
        let replies = common::eventually(
            &format!("{kind}: five replies"),
            Duration::from_secs(30),
            || async {
                let r = h.replies();
                (r.len() >= 5).then_some(r)
            },
        )
        .await;
        let texts: Vec<&str> = replies.iter().map(|(_, t)| t.as_str()).collect();
        let expected: Vec<String> = words.iter().map(|w| format!("echo: {w}")).collect();
        assert_eq!(texts, expected, "{kind}: replies in the order sent");
        let to = h.recipient("4242");
        assert!(replies.iter().all(|(t, _)| *t == to), "{kind}: {replies:?}");
    }
}
