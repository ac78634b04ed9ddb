//! The web widget's WebSocket protocol (docs/widget-protocol.md), through the front door with a
//! real WebSocket client, on SQLite and PostgreSQL: streamed answers resumed after a dropped
//! connection and after a gateway restart, idempotent sends, origins, frame limits, two tabs,
//! rate limits, tenant isolation, agent messages and acknowledgements.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Deltas, Responder, Turn};
use switchboard::core::TenantSlug;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{Backend, TestApp, eventually, test_config};

/// Stands in for a streaming LLM: answers `You said: <text>.` and twelve more words, one word
/// per `pause`, as deltas that add up to the stored answer.
struct StreamingEcho {
    pause: Duration,
}

const FILLER: [&str; 12] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
];

fn answer_words(text: &str) -> Vec<String> {
    let mut words = vec![format!("You said: {text}.")];
    words.extend(FILLER.iter().map(|w| format!(" {w}")));
    words
}

fn full_answer(text: &str) -> String {
    answer_words(text).concat()
}

#[async_trait]
impl Responder for StreamingEcho {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: full_answer(&turn.text),
            citations: Vec::new(),
        })
    }

    async fn respond_streaming(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        for word in answer_words(&turn.text) {
            deltas.delta(&word);
            tokio::time::sleep(self.pause).await;
        }
        self.respond(turn).await
    }
}

fn streaming(pause_ms: u64) -> Option<Arc<dyn Responder>> {
    Some(Arc::new(StreamingEcho {
        pause: Duration::from_millis(pause_ms),
    }))
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A widget client speaking the protocol by hand.
struct Client {
    ws: Ws,
    token: String,
    conversation_id: Option<String>,
    last_seq: i64,
    /// Every `message` frame seen on this client (across reconnects).
    messages: Vec<Value>,
    /// Preview text per stream id, built from `stream` frames as a browser would.
    previews: std::collections::HashMap<String, String>,
    /// Every preview delta received, as it came.
    deltas: Vec<String>,
}

async fn open(app: &TestApp, key: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let url = format!("ws://{}/v1/widget/ws?key={key}", app.addr);
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("origin header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            assert!(
                body["error"]["code"].is_string(),
                "refusal without a JSON error: {body}"
            );
            Err(response.status().as_u16())
        }
        Err(e) => panic!("websocket connect: {e}"),
    }
}

fn own_origin(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a frame within 15 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).expect("frames are JSON");
            }
            Some(Ok(Message::Close(close))) => {
                let code = close.map_or(1005, |c| u16::from(c.code));
                return json!({"type": "__close", "code": code});
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return json!({"type": "__close", "code": 1006}),
        }
    }
}

impl Client {
    /// Connects as a new visitor (or as the visitor of `token`) and reads `welcome`.
    async fn connect(app: &TestApp, token: Option<&str>) -> Client {
        let mut ws = open(app, &app.widget_key, Some(&own_origin(app)))
            .await
            .expect("connect");
        let hello = json!({"type": "hello", "v": 1, "token": token});
        ws.send(Message::text(hello.to_string()))
            .await
            .expect("hello");
        let welcome = next_frame(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        Client {
            ws,
            token: welcome["token"].as_str().expect("token").to_owned(),
            conversation_id: welcome["conversation_id"].as_str().map(str::to_owned),
            last_seq: 0,
            messages: Vec::new(),
            previews: Default::default(),
            deltas: Vec::new(),
        }
    }

    /// Drops the connection without a close frame (a network cut) and resumes as this visitor
    /// from the last message seen.
    async fn reconnect(&mut self, app: &TestApp) -> Value {
        let mut ws = open(app, &app.widget_key, Some(&own_origin(app)))
            .await
            .expect("reconnect");
        let hello = json!({"type": "hello", "v": 1, "token": self.token,
            "conversation_id": self.conversation_id, "last_seq": self.last_seq});
        ws.send(Message::text(hello.to_string()))
            .await
            .expect("hello");
        let welcome = next_frame(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        self.ws = ws; // the old socket is dropped here: no close frame
        welcome
    }

    async fn send(&mut self, client_id: &str, text: &str) {
        let frame = json!({"type": "send", "client_id": client_id, "text": text});
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next frame, with messages and previews recorded as a browser would.
    async fn next(&mut self) -> Value {
        let frame = next_frame(&mut self.ws).await;
        match frame["type"].as_str() {
            Some("message") => {
                let seq = frame["seq"].as_i64().expect("seq");
                assert!(
                    seq == self.last_seq + 1
                        || frame["conversation_id"].as_str() != self.conversation_id.as_deref(),
                    "message seq {seq} after {}: a gap or a repeat",
                    self.last_seq
                );
                self.last_seq = seq;
                self.conversation_id = frame["conversation_id"].as_str().map(str::to_owned);
                self.messages.push(frame.clone());
            }
            Some("stream") => {
                let id = frame["stream_id"].as_str().expect("stream id").to_owned();
                let offset = frame["offset"].as_u64().expect("offset") as usize;
                let delta = frame["delta"].as_str().expect("delta");
                let preview = self.previews.entry(id).or_default();
                if offset == 0 {
                    preview.clear();
                }
                assert_eq!(
                    preview.encode_utf16().count(),
                    offset,
                    "a preview delta that does not continue the preview"
                );
                preview.push_str(delta);
                self.deltas.push(delta.to_owned());
            }
            _ => {}
        }
        frame
    }

    /// Reads frames until `stop` accepts one; returns it.
    async fn until(&mut self, mut stop: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await;
            assert_ne!(frame["type"], "__close", "closed while waiting: {frame}");
            if stop(&frame) {
                return frame;
            }
        }
    }

    /// Sends a `ping` (its `pong` marks how far the server's frames have come).
    async fn ping(&mut self) {
        self.ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .expect("ping");
    }

    /// Reads frames until the bot's next message; returns it.
    async fn bot_reply(&mut self) -> Value {
        self.until(|f| f["type"] == "message" && f["author"] == "bot")
            .await
    }

    /// Reads frames until the socket closes; returns the close code.
    async fn closed(&mut self) -> u64 {
        loop {
            let frame = self.next().await;
            if frame["type"] == "__close" {
                return frame["code"].as_u64().unwrap_or(0);
            }
        }
    }

    fn bot_replies(&self) -> Vec<&Value> {
        self.messages
            .iter()
            .filter(|m| m["author"] == "bot")
            .collect()
    }
}

fn is(kind: &'static str) -> impl FnMut(&Value) -> bool {
    move |f| f["type"] == kind
}

/// An agent closes the conversation (`PATCH … {"status":"closed"}`).
async fn close_conversation(app: &TestApp, conversation_id: &str) {
    let closed = app
        .http
        .patch(format!("{}/v1/conversations/{conversation_id}", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({"status": "closed"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(closed.status(), 200);
}

async fn stored_messages(app: &TestApp) -> Vec<Value> {
    let conversation = app.first_conversation("widget").await;
    app.messages(&conversation).await
}

async fn a_connection_dropped_mid_stream_resumes_with_the_answer_exactly_once(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(120)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("c-1", "hello").await;
    let sent = visitor.until(is("sent")).await;
    assert_eq!(sent["duplicate"], false);
    let inbound_id = sent["message_id"].as_str().expect("message id").to_owned();
    // The preview has started: typing, then a few deltas.
    visitor.until(is("typing")).await;
    for _ in 0..3 {
        visitor.until(is("stream")).await;
    }
    assert!(visitor.bot_replies().is_empty());

    // The network drops mid-stream; the visitor comes back with the last seq it holds.
    visitor.reconnect(&app).await;
    let first = visitor.next().await;
    // The preview so far is re-sent from offset 0 (or, if the answer was stored meanwhile,
    // the answer itself comes).
    assert!(
        (first["type"] == "typing" && first["on"] == true)
            || (first["type"] == "stream" && first["offset"] == 0)
            || first["type"] == "message",
        "after resume: {first}"
    );
    let reply = visitor.bot_reply().await;
    assert_eq!(reply["text"], full_answer("hello"));
    assert_eq!(reply["reply_to"], inbound_id.as_str());
    assert_eq!(
        visitor.previews.get(&inbound_id).map(String::as_str),
        Some(full_answer("hello").as_str()),
        "the preview, resumed, adds up to the answer"
    );
    // Nothing more arrives: the answer came exactly once.
    visitor.ping().await;
    visitor.until(is("pong")).await;
    assert_eq!(visitor.bot_replies().len(), 1);
    // Every message of the conversation was seen once, in order.
    let seqs: Vec<i64> = visitor
        .messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(stored_messages(&app).await.len(), 2);
    app.stop().await;
}

async fn a_gateway_restart_mid_stream_loses_and_repeats_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(150)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("c-1", "restart me").await;
    let sent = visitor.until(is("sent")).await;
    let inbound_id = sent["message_id"].as_str().expect("id").to_owned();
    visitor.until(is("stream")).await;
    visitor.until(is("stream")).await;

    // Graceful restart: sockets are closed with 1001 at once; the turn in progress finishes.
    let (tenant_id, admin_key, widget_key) = (
        app.tenant_id.clone(),
        app.admin_key.clone(),
        app.widget_key.clone(),
    );
    let stop = tokio::spawn(app.stop());
    assert_eq!(visitor.closed().await, 1001);
    let db = stop.await.expect("stopped");
    let config = test_config(&db);
    let mut app = TestApp::start(db, config, streaming(150)).await;
    (app.tenant_id, app.admin_key, app.widget_key) = (tenant_id, admin_key, widget_key);

    visitor.reconnect(&app).await;
    let reply = visitor.bot_reply().await;
    assert_eq!(reply["text"], full_answer("restart me"));
    assert_eq!(reply["reply_to"], inbound_id.as_str());
    // A second reconnect from the last seq gets nothing again.
    visitor.reconnect(&app).await;
    visitor.ping().await;
    let next = visitor.until(|f| f["type"] != "typing").await;
    assert_eq!(
        next["type"], "pong",
        "nothing re-sent after the last seq: {next}"
    );
    assert_eq!(visitor.bot_replies().len(), 1);
    assert_eq!(stored_messages(&app).await.len(), 2);
    app.stop().await;
}

async fn the_same_client_message_id_is_stored_and_answered_once(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(1)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("dup-1", "only once").await;
    visitor.send("dup-1", "only once").await;
    let first = visitor.until(is("sent")).await;
    let second = visitor.until(is("sent")).await;
    assert_eq!(first["message_id"], second["message_id"]);
    assert_eq!(
        (first["duplicate"].clone(), second["duplicate"].clone()),
        (json!(false), json!(true))
    );
    visitor.bot_reply().await;
    // Again after a reconnect (the client re-sends what it never saw confirmed).
    visitor.reconnect(&app).await;
    visitor.send("dup-1", "only once").await;
    let third = visitor.until(is("sent")).await;
    assert_eq!(third["duplicate"], true);
    assert_eq!(third["message_id"], first["message_id"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = stored_messages(&app).await;
    assert_eq!(stored.len(), 2, "one message, one answer: {stored:?}");
    // The visitor's own message carries its client id back.
    let own: Vec<&Value> = visitor
        .messages
        .iter()
        .filter(|m| m["author"] == "contact")
        .collect();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["client_id"], "dup-1");
    app.stop().await;
}

async fn origins_keys_and_tenants_are_checked_at_the_handshake(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let own = own_origin(&app);
    // Wrong origin, no origin, wrong key, a non-widget key: refused before the upgrade.
    assert_eq!(
        open(&app, &app.widget_key, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(open(&app, &app.widget_key, None).await.err(), Some(403));
    assert_eq!(open(&app, "sbw_nope", Some(&own)).await.err(), Some(401));
    assert_eq!(
        open(&app, &app.admin_key, Some(&own)).await.err(),
        Some(401)
    );
    // Not a WebSocket request: a JSON 400.
    let plain = app
        .http
        .get(format!("{}/v1/widget/ws?key={}", app.base, app.widget_key))
        .header("Origin", &own)
        .send()
        .await
        .expect("get");
    assert_eq!(plain.status(), 400);

    // The tenant allows its shop; settings are validated.
    let put = |body: Value| {
        app.http
            .put(format!("{}/v1/widget/settings", app.base))
            .bearer_auth(&app.admin_key)
            .json(&body)
            .send()
    };
    assert_eq!(
        put(json!({"colors": {"primary": "red;}"}}))
            .await
            .expect("put")
            .status(),
        400
    );
    let saved = put(
        json!({"title": "Coach Ana", "allowed_origins": ["https://shop.example"],
        "colors": {"primary": "#123abc"}}),
    )
    .await
    .expect("put");
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.expect("json");
    assert_eq!(saved["widget_key"], app.widget_key.as_str());
    let widget_put = app
        .http
        .put(format!("{}/v1/widget/settings", app.base))
        .bearer_auth(&app.widget_key)
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        widget_put.status(),
        403,
        "the public key cannot change settings"
    );
    let mut shop = open(&app, &app.widget_key, Some("https://shop.example"))
        .await
        .expect("allowed");
    shop.send(Message::text(r#"{"type":"hello","v":1}"#))
        .await
        .expect("hello");
    let welcome = next_frame(&mut shop).await;
    assert_eq!(welcome["theme"]["title"], "Coach Ana");
    assert_eq!(welcome["theme"]["colors"]["primary"], "#123abc");
    assert!(welcome["theme"].get("allowed_origins").is_none());
    assert_eq!(
        open(&app, &app.widget_key, Some("https://other.example"))
            .await
            .err(),
        Some(403)
    );

    // Another tenant: its key does not accept this tenant's visitor token.
    let other = app
        .store
        .create_tenant(&TenantSlug::parse("globex").expect("slug"), "Globex")
        .await
        .expect("tenant");
    let mut stranger = open(&app, &other.widget_key, Some(&own))
        .await
        .expect("connect");
    let hello = json!({"type": "hello", "v": 1, "token": welcome["token"]});
    stranger
        .send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    let refused = next_frame(&mut stranger).await;
    assert_eq!(refused["code"], "invalid_token", "{refused}");
    assert_eq!(next_frame(&mut stranger).await["code"], 4401);
    // A forged token is refused the same way.
    let forged = welcome["token"]
        .as_str()
        .unwrap_or_default()
        .replace("w_", "w_X");
    let mut forger = open(&app, &app.widget_key, Some(&own))
        .await
        .expect("connect");
    let hello = json!({"type": "hello", "v": 1, "token": forged});
    forger
        .send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    assert_eq!(next_frame(&mut forger).await["code"], "invalid_token");
    app.stop().await;
}

async fn an_oversized_frame_closes_the_socket_and_stores_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    let huge = json!({"type": "send", "client_id": "big", "text": "x".repeat(20 * 1024)});
    visitor
        .ws
        .send(Message::text(huge.to_string()))
        .await
        .expect("send");
    let close = next_frame(&mut visitor.ws).await;
    assert_eq!(close["code"], 1009, "{close}");
    // Too long for a message but within the frame limit: refused, the socket stays.
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("long", &"y".repeat(4_001)).await;
    let error = visitor.until(is("error")).await;
    assert_eq!(
        (error["code"].as_str(), error["client_id"].as_str()),
        (Some("invalid_message"), Some("long"))
    );
    visitor
        .ws
        .send(Message::text("not json"))
        .await
        .expect("send");
    assert_eq!(visitor.until(is("error")).await["code"], "bad_frame");
    visitor
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(visitor.closed().await, 1003);
    let (status, body) = app.get(&app.admin_key, "/v1/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["conversations"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );
    app.stop().await;
}

async fn two_tabs_of_one_visitor_see_the_same_conversation(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(20)).await else {
        return;
    };
    let mut tab_a = Client::connect(&app, None).await;
    let mut tab_b = Client::connect(&app, Some(&tab_a.token)).await;
    tab_a.send("a-1", "from tab A").await;
    for tab in [&mut tab_a, &mut tab_b] {
        tab.bot_reply().await;
        assert_eq!(tab.messages.len(), 2);
        assert_eq!(tab.messages[0]["client_id"], "a-1");
        assert_eq!(tab.messages[0]["text"], "from tab A");
        assert_eq!(tab.messages[1]["text"], full_answer("from tab A"));
    }
    // Tab B answers; tab A sees it too.
    tab_b.send("b-1", "from tab B").await;
    for tab in [&mut tab_a, &mut tab_b] {
        tab.until(|f| f["type"] == "message" && f["author"] == "bot" && f["seq"] == 4)
            .await;
        let seqs: Vec<i64> = tab
            .messages
            .iter()
            .map(|m| m["seq"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
    // A new tab of the same visitor gets the history.
    let mut tab_c = Client::connect(&app, Some(&tab_a.token)).await;
    tab_c
        .until(|f| f["type"] == "message" && f["seq"] == 4)
        .await;
    assert_eq!(tab_c.messages.len(), 4);
    // Another visitor sees none of it.
    let mut stranger = Client::connect(&app, None).await;
    stranger.ping().await;
    assert_eq!(stranger.until(|_| true).await["type"], "pong");
    app.stop().await;
}

async fn sends_beyond_the_rate_are_refused_not_stored(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.widget.send_burst = 3, None).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    for i in 0..5 {
        visitor
            .send(&format!("r-{i}"), &format!("message {i}"))
            .await;
    }
    let mut sent = 0;
    let mut limited = Vec::new();
    while sent + limited.len() < 5 {
        let f = visitor
            .until(|f| f["type"] == "sent" || f["type"] == "error")
            .await;
        if f["type"] == "sent" {
            sent += 1;
        } else {
            assert_eq!(f["code"], "rate_limited");
            assert!(f["retry_after_ms"].as_u64().is_some());
            limited.push(f["client_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!((sent, limited.len()), (3, 2));
    // Refused means not stored: the conversation holds only the three that were taken.
    let conversation = app.first_conversation("widget").await;
    let refused_texts: Vec<String> = limited
        .iter()
        .map(|id| format!("message {}", id.trim_start_matches("r-")))
        .collect();
    let inbound: Vec<String> = app
        .messages(&conversation)
        .await
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        inbound.len(),
        3,
        "only the sends within the rate are stored: {inbound:?}"
    );
    for text in &refused_texts {
        assert!(
            !inbound.contains(text),
            "a refused send was stored: {text} in {inbound:?}"
        );
    }
    // Retried after the wait, they are taken — as new messages, not as duplicates of ones
    // stored when they were refused.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for id in &limited {
        visitor.send(id, "retried").await;
        let f = visitor
            .until(|f| f["type"] == "sent" || f["type"] == "error")
            .await;
        assert_eq!(f["type"], "sent", "{f}");
        assert_eq!(f["client_id"], id.as_str(), "{f}");
        assert_eq!(
            f["duplicate"], false,
            "the refused send had been stored: {f}"
        );
    }
    let inbound = app
        .messages(&conversation)
        .await
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .count();
    assert_eq!(inbound, 5);
    app.stop().await;
}

async fn agent_messages_reach_the_visitor_and_acks_mark_them_delivered(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(1)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("h-1", "/human").await;
    visitor.bot_reply().await;
    let conversation = app.first_conversation("widget").await;
    assert_eq!(
        app.agent_message(&conversation, json!({"text": "Hi, **Ana** here"}))
            .await,
        201
    );
    let agent = visitor
        .until(|f| f["type"] == "message" && f["author"] == "agent")
        .await;
    assert_eq!(agent["text"], "Hi, **Ana** here");
    // Buttons are not shown by the widget: refused, not silently flattened.
    let refused = app
        .agent_message(
            &conversation,
            json!({"text": "Pick", "content": {"buttons": [{"id": "a", "title": "A"}]}}),
        )
        .await;
    assert_eq!(refused, 400);
    let seq = agent["seq"].as_i64().expect("seq");
    // Shown on the socket is not delivered: until the visitor acknowledges it, the message is
    // only `sent` (the outbox's record), never `delivered`.
    eventually(
        "agent message sent, not yet delivered",
        Duration::from_secs(5),
        || async {
            let messages = app.messages(&conversation).await;
            let status = messages
                .iter()
                .find(|m| m["author"] == "agent")
                .map(|m| m["status"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            assert_ne!(status, "delivered", "delivered before the visitor's ack");
            (status == "sent").then_some(())
        },
    )
    .await;
    visitor.ping().await;
    visitor.until(is("pong")).await;
    let messages = app.messages(&conversation).await;
    let agent_status = messages
        .iter()
        .find(|m| m["author"] == "agent")
        .map(|m| m["status"].clone());
    assert_eq!(
        agent_status,
        Some(json!("sent")),
        "delivered before the ack"
    );
    visitor
        .ws
        .send(Message::text(
            json!({"type": "ack", "seq": seq}).to_string(),
        ))
        .await
        .expect("ack");
    eventually(
        "agent message delivered",
        Duration::from_secs(5),
        || async {
            let messages = app.messages(&conversation).await;
            messages
                .iter()
                .find(|m| m["author"] == "agent")
                .filter(|m| m["status"] == "delivered")
                .map(|_| ())
        },
    )
    .await;
    app.stop().await;
}

async fn a_socket_follows_the_visitor_into_a_new_conversation(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(1)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("n-1", "first").await;
    visitor.bot_reply().await;
    let first = visitor.conversation_id.clone().expect("a conversation");
    close_conversation(&app, &first).await;
    // The next message opens a new conversation; the open socket shows it from seq 1.
    visitor.send("n-2", "second").await;
    let reply = visitor
        .until(|f| {
            f["type"] == "message" && f["author"] == "bot" && f["conversation_id"] != first.as_str()
        })
        .await;
    assert_eq!(reply["seq"], 2);
    let seqs: Vec<(String, i64)> = visitor
        .messages
        .iter()
        .map(|m| {
            (
                m["conversation_id"].as_str().unwrap_or("") == first,
                m["seq"].as_i64().unwrap_or(0),
            )
        })
        .map(|(old, seq)| (if old { "old" } else { "new" }.to_owned(), seq))
        .collect();
    assert_eq!(
        seqs,
        [
            ("old".to_owned(), 1),
            ("old".to_owned(), 2),
            ("new".to_owned(), 1),
            ("new".to_owned(), 2)
        ]
    );
    app.stop().await;
}

async fn closing_the_conversation_mid_answer_withdraws_the_preview(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, streaming(150)).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("x-1", "never mind").await;
    let sent = visitor.until(is("sent")).await;
    visitor.until(is("stream")).await;
    let conversation = sent["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    close_conversation(&app, &conversation).await;
    // The answer finishes after the close: not stored, not sent, and its preview withdrawn.
    let reset = visitor.until(is("stream_reset")).await;
    assert_eq!(reset["stream_id"], sent["message_id"]);
    visitor.ping().await;
    visitor.until(is("pong")).await;
    assert!(visitor.bot_replies().is_empty());
    let stored = app.messages(&conversation).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["status"], "processed");
    app.stop().await;
}

async fn a_client_flooding_frames_is_closed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut visitor = Client::connect(&app, None).await;
    for _ in 0..100 {
        if visitor
            .ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(visitor.closed().await, 4429);
    app.stop().await;
}

async fn the_demo_page_and_script_are_served(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let script = app
        .http
        .get(format!("{}/widget.js", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/javascript")
    );
    let body = script.text().await.expect("body");
    assert!(body.contains("/v1/widget/ws"));
    // No sink that turns a string into markup or code: text goes in as text nodes.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "new Function",
        "eval(",
        "createContextualFragment",
        "srcdoc",
    ] {
        // `eval(` as a call, not as the end of a longer name (`retrieval(`).
        let used = body.match_indices(sink).any(|(at, _)| {
            sink != "eval("
                || !body[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        });
        assert!(
            !used,
            "the widget never writes HTML or code from strings: {sink} in widget.js"
        );
    }
    // No demo tenant yet: 404. With one, the page embeds a working key.
    assert_eq!(
        app.http
            .get(format!("{}/demo", app.base))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    app.store
        .create_tenant(&TenantSlug::parse("demo").expect("slug"), "Demo")
        .await
        .expect("tenant");
    let page = app
        .http
        .get(format!("{}/demo", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("page");
    let key = page
        .split("data-key=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an embedded key")
        .to_owned();
    assert!(key.starts_with("sbw_"), "{key}");
    let mut ws = open(&app, &key, Some(&own_origin(&app)))
        .await
        .expect("demo key works");
    ws.send(Message::text(r#"{"type":"hello","v":1}"#))
        .await
        .expect("hello");
    assert_eq!(next_frame(&mut ws).await["type"], "welcome");
    app.stop().await;
}

both_backends!(
    a_connection_dropped_mid_stream_resumes_with_the_answer_exactly_once,
    a_gateway_restart_mid_stream_loses_and_repeats_nothing,
    the_same_client_message_id_is_stored_and_answered_once,
    origins_keys_and_tenants_are_checked_at_the_handshake,
    an_oversized_frame_closes_the_socket_and_stores_nothing,
    two_tabs_of_one_visitor_see_the_same_conversation,
    sends_beyond_the_rate_are_refused_not_stored,
    agent_messages_reach_the_visitor_and_acks_mark_them_delivered,
    a_socket_follows_the_visitor_into_a_new_conversation,
    closing_the_conversation_mid_answer_withdraws_the_preview,
    a_client_flooding_frames_is_closed,
    the_demo_page_and_script_are_served,
    a_blocked_sentence_never_reaches_the_preview,
);

/// Streams a fixed answer of four pieces, `pause` apart.
struct Sentences {
    pause: Duration,
}

const SENTENCES: [&str; 4] = [
    "Rest well. ",
    "Try this ",
    "miracle cure tonight. ",
    "Sleep tight.",
];

#[async_trait]
impl Responder for Sentences {
    async fn respond(&self, _turn: &Turn) -> anyhow::Result<Answer> {
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: SENTENCES.concat(),
            citations: Vec::new(),
        })
    }

    async fn respond_streaming(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        for piece in SENTENCES {
            deltas.delta(piece);
            tokio::time::sleep(self.pause).await;
        }
        self.respond(turn).await
    }
}

/// Moderation on a streamed answer (issue "Moderation, hand-off and tickets"): the preview shows
/// whole sentences the outbound rules passed, and stops — withdrawn — at the one a rule blocks,
/// which never reaches the visitor; the stored reply is the tenant's safe fallback.
async fn a_blocked_sentence_never_reaches_the_preview(backend: Backend) {
    let responder: Arc<dyn Responder> = Arc::new(Sentences {
        pause: Duration::from_millis(150),
    });
    let Some(app) = TestApp::spawn_with(backend, |_| {}, Some(responder)).await else {
        return;
    };
    let put = app
        .http
        .put(format!("{}/v1/moderation/policy", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({
            "rules": [{ "id": "cure", "words": ["miracle cure"], "action": "block",
                        "applies_to": "outbound" }],
            "safe_fallback": "Let's keep to what I know."
        }))
        .send()
        .await
        .expect("policy");
    assert_eq!(put.status(), 200);
    let mut visitor = Client::connect(&app, None).await;
    visitor.send("s-1", "how do I sleep?").await;
    let reply = visitor.bot_reply().await;
    assert_eq!(reply["text"], "Let's keep to what I know.");
    assert!(
        visitor
            .deltas
            .iter()
            .all(|d| !d.contains("miracle") && !d.contains("Try this")),
        "a blocked sentence reached the preview: {:?}",
        visitor.deltas
    );
    assert_eq!(
        visitor.deltas.concat(),
        "Rest well.",
        "the sentence before it was shown"
    );
    // The flag keeps the whole answer.
    let flags = app
        .http
        .get(format!("{}/v1/flags?status=open", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("flags")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(flags["flags"][0]["action"], "block", "{flags}");
    assert_eq!(flags["flags"][0]["evidence"]["answer"], SENTENCES.concat());
    app.stop().await;
}
