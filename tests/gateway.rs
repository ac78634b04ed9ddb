//! The gateway through its front door: a real server on port 0 and a fresh database, every story
//! on SQLite and on PostgreSQL.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Backend, CallbackReceiver, Mode, TestApp, eventually};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Responder, Turn};
use switchboard::core::{Role, TenantSlug};

const WAIT: Duration = Duration::from_secs(20);
/// Longer than the outbox lease of the test configuration (1 s): a resend after a lost outcome
/// would have happened by then.
const LONGER_THAN_A_LEASE: Duration = Duration::from_millis(1_300);

both_backends!(
    story_tenant_key_message_reply_listed_in_order,
    concurrent_redelivery_is_stored_and_answered_once,
    conversations_are_processed_in_send_order_and_concurrently,
    unanswered_messages_resume_after_restart,
    delivery_retries_then_succeeds_once,
    delivery_that_always_fails_becomes_a_visible_dead_letter,
    provider_retry_after_is_honoured,
    bad_requests_get_clear_json_errors_and_store_nothing,
    a_closed_conversation_is_not_reopened_by_new_messages,
    a_wait_that_runs_out_answers_202_and_the_reply_still_comes,
    a_responder_that_keeps_failing_gets_an_apology_and_the_conversation_goes_on,
    a_batch_with_send_times_numbers_in_order_and_keeps_the_last_wrote_rule,
    one_tick_stores_messages_turns_and_outcomes_and_a_bad_message_fails_alone,
    a_turn_handed_over_by_the_ingest_is_the_turn_the_router_would_read,
    the_multi_row_paths_keep_any_text_exactly,
    batches_the_multi_row_paths_cannot_take_are_written_item_by_item,
    the_next_turns_of_many_conversations_are_read_together,
    a_recorded_delivery_says_whether_a_successor_waits,
);

/// Fails on any message containing "boom", answers the rest.
struct FlakyResponder;

#[async_trait]
impl Responder for FlakyResponder {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        anyhow::ensure!(!turn.text.contains("boom"), "model exploded");
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("re: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

async fn a_responder_that_keeps_failing_gets_an_apology_and_the_conversation_goes_on(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn_with(backend, |_| {}, Some(Arc::new(FlakyResponder))).await
    else {
        return;
    };
    let first = app.send("kim", "boom", json!({})).await;
    app.send("kim", "still there?", json!({})).await;
    let conversation = first["conversation_id"].as_str().expect("id").to_owned();
    let messages = eventually("both answered", WAIT, || async {
        let m = app.messages(&conversation).await;
        (m.len() == 4).then_some(m)
    })
    .await;
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
    // The second message arrived (seq 2) while the first was being retried; the apology answers
    // the first, before the second is answered.
    assert_eq!(
        texts,
        [
            "boom",
            "still there?",
            switchboard::router::APOLOGY,
            "re: still there?"
        ]
    );
}

/// A responder slower than the caller's patience.
struct SlowResponder(Duration);

#[async_trait]
impl Responder for SlowResponder {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        tokio::time::sleep(self.0).await;
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("slowly: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

async fn a_wait_that_runs_out_answers_202_and_the_reply_still_comes(backend: Backend) {
    let responder = Arc::new(SlowResponder(Duration::from_millis(600)));
    let Some(app) =
        TestApp::spawn_with(backend, |c| c.wait_timeout_ms = 100, Some(responder)).await
    else {
        return;
    };
    let res = app
        .post_message(
            &app.admin_key,
            json!({ "contact": { "external_id": "jo" }, "text": "take your time", "wait": true }),
        )
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.expect("json");
    assert!(body.get("reply").is_none(), "{body}");
    let conversation = body["conversation_id"].as_str().expect("stored").to_owned();
    let messages = eventually("the reply", WAIT, || async {
        let m = app.messages(&conversation).await;
        (m.len() == 2).then_some(m)
    })
    .await;
    assert_eq!(messages[1]["text"], "slowly: take your time");
}

/// After a conversation is closed, the contact's next message opens a new one (even though the
/// gateway remembered the old one).
async fn a_closed_conversation_is_not_reopened_by_new_messages(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let first = app.send("ivy", "one", json!({ "wait": true })).await;
    let again = app.send("ivy", "two", json!({ "wait": true })).await;
    assert_eq!(first["conversation_id"], again["conversation_id"]);
    sqlx::query("UPDATE conversation SET status = 'closed' WHERE id = $1")
        .bind(first["conversation_id"].as_str().expect("id"))
        .execute(app.store.pool())
        .await
        .expect("close");
    let third = app.send("ivy", "three", json!({ "wait": true })).await;
    assert_ne!(third["conversation_id"], first["conversation_id"]);
    assert!(third["reply"]["text"].is_string(), "{third}");
    let old = app
        .messages(first["conversation_id"].as_str().expect("id"))
        .await;
    assert_eq!(old.len(), 4, "nothing was added to the closed conversation");
    let new = app
        .messages(third["conversation_id"].as_str().expect("id"))
        .await;
    let seqs: Vec<i64> = new.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![1, 2]);
}

/// tenant → key → message → reply → messages listed in order.
async fn story_tenant_key_message_reply_listed_in_order(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    app.set_callback(&receiver.url).await;
    let moderator = app
        .store
        .create_key(&TenantSlug::parse("acme").expect("slug"), Role::Moderator)
        .await
        .expect("moderator key");

    let first = app
        .send("ann", "Hello there", json!({ "wait": true }))
        .await;
    let conversation = first["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_owned();
    let reply = &first["reply"];
    assert!(
        reply["text"]
            .as_str()
            .is_some_and(|t| t.contains("no knowledge")),
        "{first}"
    );
    assert_eq!(reply["citations"], json!([]));
    for text in ["second", "third"] {
        let r = app.send("ann", text, json!({ "wait": true })).await;
        assert_eq!(r["conversation_id"], first["conversation_id"]);
    }

    let (status, body) = app
        .get(
            &moderator,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().expect("messages");
    let seqs: Vec<i64> = messages.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let shape: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap_or(""),
                m["author"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [("inbound", "contact"), ("outbound", "bot")].repeat(3),
        "each message is followed by its reply"
    );
    let texts: Vec<&str> = messages
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["Hello there", "second", "third"]);
    assert!(
        messages
            .iter()
            .all(|m| m["created_at"].as_str().is_some_and(|t| t.ends_with('Z')))
    );

    // Every reply reached the callback, signed, once, in order.
    let delivered = eventually("3 callbacks", WAIT, || async {
        let a = receiver.accepted();
        (a.len() >= 3).then_some(a)
    })
    .await;
    assert_eq!(delivered.len(), 3);
    let delivered_seqs: Vec<i64> = delivered
        .iter()
        .filter_map(|r| r.body["seq"].as_i64())
        .collect();
    assert_eq!(delivered_seqs, vec![2, 4, 6]);
    assert!(delivered.iter().all(|r| r.body["to"] == "ann"));
    let expected_sig = switchboard_channel_api::outbound::sign("cb-secret", &delivered[0].raw);
    assert_eq!(
        delivered[0].signature.as_deref(),
        Some(expected_sig.as_str())
    );
    eventually("statuses updated", WAIT, || async {
        let m = app.messages(&conversation).await;
        m.iter()
            .filter(|m| m["direction"] == "outbound")
            .all(|m| m["status"] == "sent")
            .then_some(())
    })
    .await;

    let (status, list) = app
        .get(&moderator, "/v1/conversations?channel=api&status=bot")
        .await;
    assert_eq!(status, 200);
    let conversations = list["conversations"].as_array().expect("list");
    assert_eq!(conversations.len(), 1);
    assert_eq!(conversations[0]["contact_external_id"], "ann");
    let (_, none) = app.get(&moderator, "/v1/conversations?status=closed").await;
    assert_eq!(none["conversations"], json!([]));
    app.stop().await;
}

/// The same inbound delivered 5× concurrently → one stored message, one reply, one delivery.
async fn concurrent_redelivery_is_stored_and_answered_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    app.set_callback(&receiver.url).await;
    let app = Arc::new(app);
    for round in 0..3 {
        let key = format!("provider-msg-{round}");
        let sends = (0..5).map(|_| {
            let app = app.clone();
            let key = key.clone();
            tokio::spawn(async move {
                app.send(
                    "bob",
                    "same message",
                    json!({ "idempotency_key": key, "wait": true }),
                )
                .await
            })
        });
        let results: Vec<Value> = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| r.expect("task"))
            .collect();
        let ids: std::collections::HashSet<_> =
            results.iter().map(|r| r["message_id"].clone()).collect();
        assert_eq!(ids.len(), 1, "all copies name one message: {results:?}");
        let replies: std::collections::HashSet<_> = results
            .iter()
            .map(|r| r["reply"]["message_id"].clone())
            .collect();
        assert_eq!(replies.len(), 1, "all copies see one reply: {results:?}");
        assert_eq!(
            results.iter().filter(|r| r["duplicate"] == false).count(),
            1
        );
    }
    let conversation = eventually("3 deliveries", WAIT, || async {
        let a = receiver.accepted();
        (a.len() >= 3).then(|| a[0].body["conversation_id"].as_str().map(str::to_owned))?
    })
    .await;
    let messages = app.messages(&conversation).await;
    assert_eq!(messages.len(), 6, "3 inbound + 3 replies: {messages:?}");
    tokio::time::sleep(LONGER_THAN_A_LEASE).await;
    assert_eq!(receiver.seen().len(), 3, "no reply was sent twice");
}

/// Records the order turns are answered in, and that a conversation never has two at once.
#[derive(Default)]
struct RecordingResponder {
    log: Mutex<Vec<(String, String)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    overlap_within_conversation: Mutex<bool>,
    max_conversations_at_once: Mutex<usize>,
}

#[async_trait]
impl Responder for RecordingResponder {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        {
            let mut in_flight = self.in_flight.lock().expect("lock");
            let n = in_flight.entry(turn.conversation_id.clone()).or_default();
            *n += 1;
            if *n > 1 {
                *self.overlap_within_conversation.lock().expect("lock") = true;
            }
            let active = in_flight.values().filter(|n| **n > 0).count();
            let mut max = self.max_conversations_at_once.lock().expect("lock");
            *max = (*max).max(active);
        }
        // Long enough for other conversations' turns to overlap with this one.
        let jitter = turn.text.len() as u64 % 7;
        tokio::time::sleep(Duration::from_millis(5 + jitter)).await;
        self.log
            .lock()
            .expect("lock")
            .push((turn.conversation_id.clone(), turn.text.clone()));
        if let Some(n) = self
            .in_flight
            .lock()
            .expect("lock")
            .get_mut(&turn.conversation_id)
        {
            *n -= 1;
        }
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("re: {}", turn.text),
            citations: Vec::new(),
        })
    }
}

/// 200 messages over 20 conversations sent concurrently → each conversation processed in send
/// order, one turn at a time, with different conversations overlapping.
async fn conversations_are_processed_in_send_order_and_concurrently(backend: Backend) {
    let responder = Arc::new(RecordingResponder::default());
    let Some(app) = TestApp::spawn_with(backend, |_| {}, Some(responder.clone())).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    app.set_callback(&receiver.url).await;
    let app = Arc::new(app);
    let senders = (0..20).map(|c| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut conversation = String::new();
            for m in 0..10 {
                // Each is acknowledged (stored) before the next is sent: that is the send order.
                let r = app
                    .send(&format!("user-{c}"), &format!("c{c}-m{m}"), json!({}))
                    .await;
                conversation = r["conversation_id"].as_str().unwrap_or_default().to_owned();
            }
            (c, conversation)
        })
    });
    let conversations: Vec<(usize, String)> = futures::future::join_all(senders)
        .await
        .into_iter()
        .map(|r| r.expect("sender"))
        .collect();
    eventually("200 replies delivered", Duration::from_secs(60), || async {
        (receiver.accepted().len() >= 200).then_some(())
    })
    .await;

    tokio::time::sleep(LONGER_THAN_A_LEASE).await;
    assert_eq!(
        receiver.seen().len(),
        200,
        "every reply delivered exactly once"
    );
    let log = responder.log.lock().expect("lock").clone();
    assert_eq!(log.len(), 200, "every message answered exactly once");
    for (c, conversation) in &conversations {
        let order: Vec<&str> = log
            .iter()
            .filter(|(conv, _)| conv == conversation)
            .map(|(_, t)| t.as_str())
            .collect();
        let expected: Vec<String> = (0..10).map(|m| format!("c{c}-m{m}")).collect();
        assert_eq!(order, expected, "conversation {c} answered in send order");
        let stored = app.messages(conversation).await;
        let inbound: Vec<&str> = stored
            .iter()
            .filter(|m| m["direction"] == "inbound")
            .filter_map(|m| m["text"].as_str())
            .collect();
        assert_eq!(inbound, expected, "conversation {c} stored in send order");
    }
    assert!(!*responder.overlap_within_conversation.lock().expect("lock"));
    let max = *responder.max_conversations_at_once.lock().expect("lock");
    assert!(
        max > 1,
        "different conversations ran concurrently (max at once: {max})"
    );
    // Replies left in per-conversation order too.
    for (conversation, bodies) in receiver.accepted_by_conversation() {
        let seqs: Vec<i64> = bodies.iter().filter_map(|b| b["seq"].as_i64()).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "deliveries of {conversation} in order");
    }
}

/// Acknowledged but never processed (the process stopped first) → after restart answered and
/// delivered exactly once.
async fn unanswered_messages_resume_after_restart(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.workers = false, None).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    app.set_callback(&receiver.url).await;
    let acked = app.send("carol", "are you there?", json!({})).await;
    let conversation = acked["conversation_id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.messages(&conversation).await.len(),
        1,
        "stored, not answered"
    );
    let app = app.restart().await;
    eventually("reply delivered after restart", WAIT, || async {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(LONGER_THAN_A_LEASE).await;
    assert_eq!(receiver.seen().len(), 1, "delivered exactly once");
    let messages = app.messages(&conversation).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["author"], "bot");
    app.stop().await;
}

/// Delivery failing 3× then succeeding → delivered once, attempts recorded.
async fn delivery_retries_then_succeeds_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::FailFirst(3)).await;
    app.set_callback(&receiver.url).await;
    let sent = app.send("dan", "hello", json!({ "wait": true })).await;
    let reply_id = sent["reply"]["message_id"]
        .as_str()
        .expect("reply")
        .to_owned();
    eventually("delivered after 3 failures", WAIT, || async {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 4, "3 failed attempts + 1 accepted");
    assert!(
        seen.iter()
            .all(|r| r.idempotency_key == seen[0].idempotency_key)
    );
    // Back-off (base 20 ms, doubling, "equal jitter": at least half of it) after the n-th
    // failed attempt is at least 10 · 2^(n-1) ms: 10, 20, 40 ms. The retry is scheduled after
    // the failure is seen, so each gap is at least that, less 1 ms of the store's millisecond
    // clock (and 1 ms of slack). A retry after zero delay, or a delay that does not grow, fails.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (n, gap) in gaps.iter().enumerate() {
        let least = Duration::from_millis((10u64 << n) - 2);
        assert!(
            *gap >= least,
            "attempt {} came {gap:?} after the one before; back-off allows no less than {least:?}: {gaps:?}",
            n + 2
        );
    }
    assert!(
        seen[3].at - seen[0].at >= Duration::from_millis(70 - 3),
        "three back-offs of at least 10 + 20 + 40 ms: {gaps:?}"
    );
    let delivered = eventually("delivery recorded", WAIT, || async {
        let (_, body) = app
            .get(&app.admin_key, "/v1/deliveries?status=delivered")
            .await;
        body["deliveries"]
            .as_array()
            .filter(|d| !d.is_empty())
            .cloned()
    })
    .await;
    let d = &delivered[0];
    assert_eq!(d["message_id"], reply_id.as_str());
    assert_eq!(d["attempts"], 4);
    tokio::time::sleep(LONGER_THAN_A_LEASE).await;
    assert_eq!(receiver.accepted().len(), 1);
}

/// Delivery failing always → a dead letter, visible in the API and metrics; it can be requeued.
async fn delivery_that_always_fails_becomes_a_visible_dead_letter(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.outbox.max_attempts = 3, None).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::FailAlways).await;
    app.set_callback(&receiver.url).await;
    // The metrics recorder is per process: this test's counts are what its deliveries add.
    let api = [("channel", "api")];
    let dead_before = app.metric("switchboard_dead_letters_total", &api).await;
    let retries_before = app.metric("switchboard_delivery_retries_total", &api).await;
    let sent = app.send("erin", "hello", json!({ "wait": true })).await;
    let conversation = sent["conversation_id"].as_str().expect("id").to_owned();
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 3);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{dead:?}"
    );
    assert_eq!(receiver.seen().len(), 3);
    let messages = app.messages(&conversation).await;
    assert_eq!(messages[1]["status"], "failed");
    // Counted under the delivery's channel: one dead letter, after two retries (tests running
    // beside this one may add to the same series, never take away).
    eventually("the dead letter counted", WAIT, || async {
        let dead = app.metric("switchboard_dead_letters_total", &api).await;
        (dead >= dead_before + 1.0).then_some(())
    })
    .await;
    let retries = app.metric("switchboard_delivery_retries_total", &api).await;
    assert!(
        retries >= retries_before + 2.0,
        "switchboard_delivery_retries_total{{channel=\"api\"}}: {retries_before} → {retries}"
    );

    // An operator fixes the endpoint and requeues the dead letter.
    let delivered_before = app.metric("switchboard_delivered_total", &api).await;
    receiver.set_mode(Mode::Accept);
    let id = dead[0]["id"].as_str().expect("id");
    assert_eq!(app.retry_delivery(id).await, 202);
    eventually("requeued delivery accepted", WAIT, || async {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    eventually("the delivery counted", WAIT, || async {
        let delivered = app.metric("switchboard_delivered_total", &api).await;
        (delivered >= delivered_before + 1.0).then_some(())
    })
    .await;
    let (_, none) = app.get(&app.admin_key, "/v1/deliveries?status=dead").await;
    assert_eq!(none["deliveries"], json!([]));
    assert_eq!(
        app.retry_delivery(id).await,
        404,
        "only dead letters can be requeued"
    );
}

/// A 429 with Retry-After: 1 → the next attempt waits at least that long.
async fn provider_retry_after_is_honoured(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.outbox.max_delay_ms = 5_000, None).await
    else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::RetryAfterOnce(1)).await;
    app.set_callback(&receiver.url).await;
    app.send("fay", "hello", json!({})).await;
    eventually("accepted after retry-after", WAIT, || async {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, asked for 1 s"
    );
}

/// 401 / 403 / 404 / 400 / 413 with the JSON error body; nothing stored on refusal.
async fn bad_requests_get_clear_json_errors_and_store_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.max_body_bytes = 4096, None).await else {
        return;
    };
    let url = format!("{}/v1/messages", app.base);
    let valid = json!({ "contact": { "external_id": "gus" }, "text": "hi" });
    let check = |status: u16, code: &'static str| {
        move |res: (reqwest::StatusCode, Value)| {
            assert_eq!(res.0.as_u16(), status, "{}", res.1);
            assert_eq!(res.1["error"]["code"], code, "{}", res.1);
            assert!(
                res.1["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let res = req.send().await.expect("send");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };

    check(401, "missing_api_key")(send(app.http.post(&url).json(&valid)).await);
    check(401, "invalid_api_key")(
        send(app.http.post(&url).bearer_auth("sb_nope").json(&valid)).await,
    );
    let moderator = app
        .store
        .create_key(&TenantSlug::parse("acme").expect("slug"), Role::Moderator)
        .await
        .expect("key");
    check(403, "forbidden")(send(app.http.post(&url).bearer_auth(&moderator).json(&valid)).await);
    check(403, "forbidden")(
        send(
            app.http
                .post(&url)
                .bearer_auth(&app.widget_key)
                .json(&valid),
        )
        .await,
    );
    check(400, "invalid_message")(
        send(
            app.http
                .post(&url)
                .bearer_auth(&app.admin_key)
                .body("{\"contact\":"),
        )
        .await,
    );
    check(400, "invalid_message")(
        send(
            app.http
                .post(&url)
                .bearer_auth(&app.admin_key)
                .json(&json!({ "text": "no contact" })),
        )
        .await,
    );
    let big = json!({ "contact": { "external_id": "gus" }, "text": "x".repeat(10_000) });
    check(413, "payload_too_large")(
        send(app.http.post(&url).bearer_auth(&app.admin_key).json(&big)).await,
    );
    check(404, "not_found")(send(app.http.get(format!("{}/v1/nothing", app.base))).await);

    let (status, body) = app
        .get(&app.admin_key, "/v1/conversations?limit=lots")
        .await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (400, &json!("invalid_query"))
    );

    // Nothing of the refused requests was stored.
    let (_, list) = app.get(&app.admin_key, "/v1/conversations").await;
    assert_eq!(list["conversations"], json!([]));

    // Another tenant cannot see this tenant's conversation.
    let mine = app.send("gus", "mine", json!({})).await;
    let other = app
        .store
        .create_tenant(&TenantSlug::parse("globex").expect("slug"), "Globex")
        .await
        .expect("tenant");
    let path = format!(
        "/v1/conversations/{}/messages",
        mine["conversation_id"].as_str().unwrap_or("")
    );
    let (status, body) = app.get(&other.admin_key, &path).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (_, theirs) = app.get(&other.admin_key, "/v1/conversations").await;
    assert_eq!(theirs["conversations"], json!([]));

    // Health and readiness answer without a key.
    let (status, _) = app.get("", "/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = app.get("", "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
}

/// Several updates stored in one batch (the multi-row path, once their conversations are known),
/// as providers send them — each with the provider's send time: numbered in order within each
/// conversation; the contact "last wrote" at the provider's send time, never later than now and
/// never moved back; a redelivery of one of them is a duplicate with the first copy's ids.
async fn a_batch_with_send_times_numbers_in_order_and_keeps_the_last_wrote_rule(backend: Backend) {
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let item = |who: &str, id: &str, sent_at: Option<i64>| {
        let mut item = ingest_item(&app.tenant_id, &channel.id, who, id, &format!("text {id}"));
        item.message.sent_at = sent_at;
        item
    };
    // One message each first: their conversations open (and are remembered by ingest).
    let mut first = Vec::new();
    for (who, id) in [("ann", "a1"), ("bob", "b1")] {
        let stored = app.store.ingest_batch(vec![item(who, id, None)]).await;
        first.push(stored.into_iter().next().expect("one").expect("stored"));
    }
    let (ann, bob) = (
        first[0].conversation_id.clone(),
        first[1].conversation_id.clone(),
    );
    let ann_wrote = app.store.last_inbound_at(&ann).await.expect("read");
    let now_s = switchboard::store::now_ms() / 1000;
    let before = switchboard::store::now_ms();
    let batch = app
        .store
        .ingest_batch(vec![
            // Sent two hours and one hour ago: earlier than ann last wrote.
            item("ann", "a2", Some(now_s - 7200)),
            // Sent "in the future" (a skewed clock): counted as now.
            item("bob", "b2", Some(now_s + 86_400)),
            item("ann", "a3", Some(now_s - 3600)),
        ])
        .await;
    let after = switchboard::store::now_ms();
    let batch: Vec<_> = batch.into_iter().map(|r| r.expect("stored")).collect();
    assert!(batch.iter().all(|i| !i.duplicate), "{batch:?}");
    assert_eq!(
        (batch[0].conversation_id.as_str(), batch[0].seq),
        (ann.as_str(), 2)
    );
    assert_eq!(
        (batch[1].conversation_id.as_str(), batch[1].seq),
        (bob.as_str(), 2)
    );
    assert_eq!(
        (batch[2].conversation_id.as_str(), batch[2].seq),
        (ann.as_str(), 3)
    );
    assert_eq!(
        app.store.last_inbound_at(&ann).await.expect("read"),
        ann_wrote,
        "an older send time does not move 'last wrote' back"
    );
    let bob_wrote = app
        .store
        .last_inbound_at(&bob)
        .await
        .expect("read")
        .expect("set");
    assert!(
        (before..=after).contains(&bob_wrote),
        "a send time in the future counts as now: {bob_wrote} not in {before}..={after}"
    );
    // The stored rows, in order, as the API lists them.
    let texts: Vec<String> = app
        .messages(&ann)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts, ["text a1", "text a2", "text a3"]);
    // A redelivery of a3: the first copy's ids, nothing stored.
    let again = app
        .store
        .ingest_batch(vec![
            item("ann", "a3", Some(now_s - 3600)),
            item("bob", "b3", None),
        ])
        .await;
    let again: Vec<_> = again.into_iter().map(|r| r.expect("stored")).collect();
    // The clean batch took the multi-row path; the one with a redelivery could not.
    assert_eq!(fallbacks(&app), (1, 0), "ingest and completion fallbacks");
    assert!(again[0].duplicate);
    assert_eq!(again[0].message_id, batch[2].message_id);
    assert_eq!((again[1].seq, again[1].duplicate), (3, false));
    assert_eq!(app.messages(&ann).await.len(), 3);
    app.stop().await;
}

/// SQLite's tick writer: a new message, a completed turn (its reply claimed for delivery) and a
/// delivery outcome submitted at once are all stored; a message that cannot be stored (its
/// channel does not exist) fails on its own and takes nothing else with it. On PostgreSQL there
/// is no tick (the same writes batch by kind); the story checks that and the direct paths.
/// SQLite's ingest hands the router the turn of a message that is the oldest unanswered one
/// of its conversation (`Ingested::turn`), read in the ingest's own transaction, so the router
/// starts on it without reading it back. That turn must be exactly the one the router's read
/// returns — conversation status, recipient, contact facts and all — and a message behind an
/// unanswered one must not have one (it would be answered out of order). PostgreSQL's ingest
/// hands none over: the router reads every turn.
async fn a_turn_handed_over_by_the_ingest_is_the_turn_the_router_would_read(backend: Backend) {
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let store = app.store.clone();
    let ingest = async |id: &str| {
        let item = ingest_item(
            &app.tenant_id,
            &channel.id,
            "ann",
            id,
            &format!("text {id}"),
        );
        match store.tick() {
            Some(tick) => tick.ingest(item).await.expect("stored"),
            None => store
                .ingest_batch(vec![item])
                .await
                .pop()
                .expect("one result")
                .expect("stored"),
        }
    };
    let complete = async |turn: switchboard::store::messages::PendingTurn| match store.tick() {
        Some(tick) => {
            tick.complete(turn, None, None).await.expect("completed");
        }
        None => {
            store
                .complete_turns(vec![(turn, None)], None)
                .await
                .pop()
                .expect("one result")
                .expect("completed");
        }
    };
    let read = async |conversation: &str| {
        store
            .next_pending_turn(conversation)
            .await
            .expect("read")
            .expect("a turn waits")
    };
    // The first message opens the conversation (the general path): read, then answered.
    let first = ingest("a1").await;
    let (turn, _) = read(&first.conversation_id).await;
    complete(turn).await;
    // Blocked meanwhile: the handed-over turn must say so, as the read does.
    sqlx::query("UPDATE contact SET blocked_at = 1 WHERE id = (SELECT contact_id FROM conversation WHERE id = $1)")
        .bind(&first.conversation_id)
        .execute(store.writer())
        .await
        .expect("block");
    let second = ingest("a2").await;
    let (read_second, more) = read(&second.conversation_id).await;
    assert!(!more, "nothing waits behind a2");
    assert!(read_second.contact_blocked);
    match backend {
        Backend::Sqlite => assert_eq!(
            second.turn.as_deref(),
            Some(&read_second),
            "the handed-over turn is the one the router would read"
        ),
        Backend::Postgres => assert!(second.turn.is_none()),
    }
    // a3 arrives while a2 is unanswered: no turn handed over, a2 goes first.
    let third = ingest("a3").await;
    assert!(third.turn.is_none(), "a3 waits behind a2: {third:?}");
    let (turn, more) = read(&third.conversation_id).await;
    assert_eq!(turn.message_id, second.message_id);
    assert!(more);
    app.stop().await;
}

async fn one_tick_stores_messages_turns_and_outcomes_and_a_bad_message_fails_alone(
    backend: Backend,
) {
    use switchboard::store::deliveries::Outcome;
    use switchboard::store::messages::ReplyDraft;
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let Some(tick) = app.store.tick().cloned() else {
        assert_eq!(backend, Backend::Postgres, "SQLite writes through a tick");
        app.stop().await;
        return;
    };
    let item = |who: &str, id: &str, channel_id: &str| {
        ingest_item(&app.tenant_id, channel_id, who, id, &format!("text {id}"))
    };
    let reply = |text: &str| ReplyDraft {
        text: text.to_owned(),
        citations_json: "[]".to_owned(),
        grounding_json: None,
    };
    // Ann wrote earlier; her turn is answered (and its delivery claimed) in the first tick.
    let ann = tick
        .ingest(item("ann", "a1", &channel.id))
        .await
        .expect("a1");
    let (turn, _) = app
        .store
        .next_pending_turn(&ann.conversation_id)
        .await
        .expect("read")
        .expect("a1 waits");
    let bob_item = item("bob", "b1", &channel.id);
    let bad_item = item("cy", "c1", "no-such-channel");
    let (completed, bob, bad) = tokio::join!(
        tick.complete(turn, Some(reply("hello ann")), Some(60_000)),
        tick.ingest(bob_item),
        tick.ingest(bad_item),
    );
    let completed = completed.expect("the turn is completed despite the bad message");
    let bob = bob.expect("bob's message is stored despite the bad message");
    assert!(bad.is_err(), "a message on no channel cannot be stored");
    let claimed = completed
        .claimed
        .expect("the reply's delivery is claimed with its turn");
    assert_eq!(Some(claimed.message_id.clone()), completed.reply_id);
    // The outcome in a tick of its own with Bob's next message.
    let (recorded, bob2) = tokio::join!(
        tick.record(vec![(
            claimed.clone(),
            Outcome::Delivered {
                provider_message_id: Some("wamid.1".to_owned()),
            },
        )]),
        tick.ingest(item("bob", "b2", &channel.id)),
    );
    recorded.expect("recorded");
    assert_eq!(bob2.expect("b2").seq, bob.seq + 1);
    let delivered = app
        .store
        .deliveries(&app.tenant_id, "delivered", 10)
        .await
        .expect("list");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let texts: Vec<String> = app
        .messages(&ann.conversation_id)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts, ["text a1", "hello ann"]);
    assert_eq!(app.messages(&bob.conversation_id).await.len(), 2);
    // Nothing of the bad message's contact was stored.
    let (_, listed) = app.get(&app.admin_key, "/v1/conversations").await;
    assert_eq!(
        listed["conversations"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    // How much the ticks served is a metric (the recorder is shared by the tests of this
    // process: at least these ticks, with at least these writes).
    let ticks = app.metric("switchboard_write_tick_items_count", &[]).await;
    let writes = app.metric("switchboard_write_tick_items_sum", &[]).await;
    assert!(
        ticks >= 1.0 && writes >= 5.0,
        "{ticks} ticks, {writes} writes"
    );
    app.stop().await;
}

/// The multi-row paths carry their rows as one JSON text on SQLite: quotes, backslashes,
/// escapes, control characters, emoji and a JSON-looking text come back byte for byte, in the
/// inbound rows and in the replies (the echo template repeats the question).
async fn the_multi_row_paths_keep_any_text_exactly(backend: Backend) {
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let texts = [
        r#"she said "hi" \ and left"#,
        "tab\there, newline\nthere, bell \u{7}, escapes written out: \\n \\u0041 \\\"",
        "emoji 🦀👍🏽 and ünïcödé, RTL \u{202e}txet",
        r#"{"looks": ["like", "json"], "n": 1e400}"#,
        "' single quotes '' doubled, ]} and ->> 0",
        "",
    ]
    .map(str::to_owned);
    let item = |who: &str, id: String, text: &str| {
        ingest_item(&app.tenant_id, &channel.id, who, &id, text)
    };
    // Open each contact's conversation first, so the batch below takes the multi-row path.
    for (i, _) in texts.iter().enumerate() {
        let first = app
            .store
            .ingest_batch(vec![item(&format!("c{i}"), format!("first-{i}"), "first")])
            .await;
        first.into_iter().next().expect("one").expect("stored");
    }
    let stored: Vec<_> = app
        .store
        .ingest_batch(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| item(&format!("c{i}"), format!("odd-{i}"), t))
                .collect(),
        )
        .await
        .into_iter()
        .map(|r| r.expect("stored"))
        .collect();
    // Complete the first turn of each (plain), then the odd ones, with replies repeating them.
    // (Read together, as the router reads the turns of the conversations ready at once.)
    let conversations: Vec<String> = stored.iter().map(|s| s.conversation_id.clone()).collect();
    for round in 0..2 {
        let mut turns = Vec::new();
        let pending = app
            .store
            .next_pending_turns(&conversations)
            .await
            .expect("read");
        for (next, text) in pending.into_iter().zip(&texts) {
            let (turn, more) = next.expect("pending");
            assert_eq!(more, round == 0, "round {round}");
            assert_eq!(turn.text, if round == 0 { "first" } else { text.as_str() });
            let reply = switchboard::store::messages::ReplyDraft {
                text: format!("echo: {}", turn.text),
                citations_json: "[]".to_owned(),
                grounding_json: None,
            };
            turns.push((turn, Some(reply)));
        }
        let done = app.store.complete_turns(turns, Some(60_000)).await;
        assert!(done.iter().all(|d| d.is_ok()), "round {round}: {done:?}");
        // Each reply is claimed for its sender as it is written — unless an earlier reply of its
        // conversation still waits (the first round's, never sent here): then it waits its turn.
        let claimed: Vec<bool> = done
            .iter()
            .map(|d| d.as_ref().is_ok_and(|c| c.claimed.is_some()))
            .collect();
        assert_eq!(claimed, vec![round == 0; texts.len()], "round {round}");
    }
    // Every batch above took the multi-row paths (none was handed to the item-by-item path).
    assert_eq!(fallbacks(&app), (0, 0), "ingest and completion fallbacks");
    for (s, text) in stored.iter().zip(&texts) {
        let got: Vec<String> = app
            .messages(&s.conversation_id)
            .await
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            got,
            // In seq order: both inbound rows were stored before either reply.
            [
                "first".to_owned(),
                text.clone(),
                "echo: first".to_owned(),
                format!("echo: {text}")
            ]
        );
    }
    app.stop().await;
}

/// The router's batched read: one entry per conversation asked for, in the order asked, each
/// with its oldest unanswered message and whether another waits behind it; nothing for a
/// conversation with nothing pending or that does not exist; a conversation asked twice gets
/// the same answer twice.
async fn the_next_turns_of_many_conversations_are_read_together(backend: Backend) {
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let mut stored = Vec::new();
    for (who, id) in [("ann", "a1"), ("bob", "b1"), ("ann", "a2"), ("cy", "c1")] {
        let item = ingest_item(&app.tenant_id, &channel.id, who, id, &format!("text {id}"));
        let result = app.store.ingest_batch(vec![item]).await;
        stored.push(result.into_iter().next().expect("one").expect("stored"));
    }
    let (ann, bob, cy) = (
        stored[0].conversation_id.clone(),
        stored[1].conversation_id.clone(),
        stored[3].conversation_id.clone(),
    );
    // Cy's only turn is answered: nothing of hers is pending any more.
    let (cy_turn, _) = app
        .store
        .next_pending_turn(&cy)
        .await
        .expect("read")
        .expect("c1 waits");
    let done = app.store.complete_turns(vec![(cy_turn, None)], None).await;
    assert!(done.iter().all(|d| d.is_ok()), "{done:?}");
    let asked = [
        bob.clone(),
        "no-such-conversation".to_owned(),
        ann.clone(),
        cy.clone(),
        ann.clone(),
    ];
    let got = app.store.next_pending_turns(&asked).await.expect("read");
    let summary: Vec<Option<(String, String, bool)>> = got
        .iter()
        .map(|t| {
            t.as_ref()
                .map(|(turn, more)| (turn.text.clone(), turn.recipient.clone(), *more))
        })
        .collect();
    let ann_turn = Some(("text a1".to_owned(), "ann".to_owned(), true));
    assert_eq!(
        summary,
        [
            Some(("text b1".to_owned(), "bob".to_owned(), false)),
            None,
            ann_turn.clone(),
            None,
            ann_turn,
        ]
    );
    let (first, _) = got[2].clone().expect("ann");
    assert_eq!(first.conversation_id, ann);
    assert_eq!(first.message_id, stored[0].message_id);
    assert_eq!(first.seq, stored[0].seq);
    assert_eq!(first.channel_id, channel.id);
    assert_eq!(first.conversation_status, "bot");
    assert!(
        app.store
            .next_pending_turns(&[])
            .await
            .expect("none")
            .is_empty()
    );
    app.stop().await;
}

/// Batches the multi-row fast paths handed to the item-by-item path, (ingest, completion).
fn fallbacks(app: &TestApp) -> (u64, u64) {
    let f = app.store.fallbacks();
    (
        f.ingest.load(std::sync::atomic::Ordering::Relaxed),
        f.complete.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// What the multi-row paths leave to the item-by-item path, which handles every case (on SQLite
/// they now check before they write; on PostgreSQL they roll back to a savepoint): one message
/// twice in a batch is stored once; a turn already completed in a batch of completions gets no
/// second reply while the others get theirs. Nothing is half-written by the fast path that gave
/// up, and a clean batch after them takes the fast path again.
async fn batches_the_multi_row_paths_cannot_take_are_written_item_by_item(backend: Backend) {
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let item = |who: &str, id: &str| {
        ingest_item(&app.tenant_id, &channel.id, who, id, &format!("text {id}"))
    };
    let mut conversations = Vec::new();
    for who in ["ann", "bob", "cy"] {
        let first = app
            .store
            .ingest_batch(vec![item(who, &format!("{who}-1"))])
            .await;
        conversations.push(
            first
                .into_iter()
                .next()
                .expect("one")
                .expect("stored")
                .conversation_id,
        );
    }
    // The same update twice in one batch, beside a new one: stored once, the copy a duplicate.
    let batch: Vec<_> = app
        .store
        .ingest_batch(vec![
            item("ann", "ann-2"),
            item("bob", "bob-2"),
            item("ann", "ann-2"),
        ])
        .await
        .into_iter()
        .map(|r| r.expect("stored"))
        .collect();
    assert_eq!(fallbacks(&app), (1, 0));
    assert_eq!(
        batch
            .iter()
            .map(|b| (b.seq, b.duplicate))
            .collect::<Vec<_>>(),
        [(2, false), (2, false), (2, true)]
    );
    assert_eq!(batch[2].message_id, batch[0].message_id);
    assert_eq!(app.messages(&conversations[0]).await.len(), 2);
    assert_eq!(app.messages(&conversations[1]).await.len(), 2);

    let reply = |text: &str| {
        Some(switchboard::store::messages::ReplyDraft {
            text: text.to_owned(),
            citations_json: "[]".to_owned(),
            grounding_json: None,
        })
    };
    let turns = oldest_turns(&app, &conversations).await;
    // Ann's first turn is completed on its own; then all three together, ann's again among them.
    let alone = app
        .store
        .complete_turns(vec![(turns[0].clone(), reply("to ann"))], None)
        .await;
    assert!(alone.iter().all(|d| d.is_ok()), "{alone:?}");
    let together = app
        .store
        .complete_turns(
            vec![
                (turns[0].clone(), reply("to ann, twice")),
                (turns[1].clone(), reply("to bob")),
                (turns[2].clone(), reply("to cy")),
            ],
            None,
        )
        .await;
    assert!(together.iter().all(|d| d.is_ok()), "{together:?}");
    assert_eq!(fallbacks(&app), (1, 1));
    let texts = |conversation: &str| {
        let app = &app;
        let conversation = conversation.to_owned();
        async move {
            app.messages(&conversation)
                .await
                .iter()
                .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        texts(&conversations[0]).await,
        ["text ann-1", "text ann-2", "to ann"]
    );
    assert_eq!(
        texts(&conversations[1]).await,
        ["text bob-1", "text bob-2", "to bob"]
    );
    assert_eq!(texts(&conversations[2]).await, ["text cy-1", "to cy"]);

    // A clean batch after them takes the multi-row paths again.
    let turns = oldest_turns(&app, &conversations[..2]).await;
    let done = app
        .store
        .complete_turns(
            turns.into_iter().map(|t| (t, reply("again"))).collect(),
            None,
        )
        .await;
    assert!(done.iter().all(|d| d.is_ok()), "{done:?}");
    assert_eq!(fallbacks(&app), (1, 1));
    assert_eq!(
        texts(&conversations[1]).await.last().map(String::as_str),
        Some("again")
    );
    app.stop().await;
}

/// The oldest unanswered turn of each conversation, read together as the router reads them;
/// each must have one.
/// Recording outcomes tells the delivery worker whether to look for due deliveries: on
/// PostgreSQL only when a later reply of a delivered one's conversation waits unclaimed (it
/// could not be handed over while its predecessor was in flight), or when an outcome is not a
/// delivery (a retry has a new due time); SQLite's tick always says look.
async fn a_recorded_delivery_says_whether_a_successor_waits(backend: Backend) {
    use switchboard::store::deliveries::Outcome;
    use switchboard::store::messages::ReplyDraft;
    let Some((app, channel)) = store_only(backend).await else {
        return;
    };
    let store = &app.store;
    let reply = |text: &str| ReplyDraft {
        text: text.to_owned(),
        citations_json: "[]".to_owned(),
        grounding_json: None,
    };
    let answer = |id: &'static str| {
        let item = ingest_item(&app.tenant_id, &channel.id, "ann", id, id);
        async move {
            let ingested = store
                .ingest(&item.tenant_id, &item.channel_id, &item.message)
                .await
                .expect("ingest");
            let (turn, _) = store
                .next_pending_turn(&ingested.conversation_id)
                .await
                .expect("read")
                .expect("a turn waits");
            let mut completed = store
                .complete_turns(vec![(turn, Some(reply(&format!("re {id}"))))], Some(60_000))
                .await;
            completed.pop().expect("one result").expect("completed")
        }
    };
    let delivered = || Outcome::Delivered {
        provider_message_id: None,
    };
    let sqlite = backend == Backend::Sqlite;
    // The first reply is claimed with its turn; the second waits behind it, unclaimed.
    let first = answer("m1")
        .await
        .claimed
        .expect("the first reply is claimed");
    let second = answer("m2").await;
    assert!(second.reply_id.is_some() && second.claimed.is_none());
    let more = store
        .record_outcomes(&[(first, delivered())])
        .await
        .expect("record");
    assert!(more, "the second reply waited for the first one");
    let mut claimed = store.claim_due_deliveries(10, 60_000).await.expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let second = claimed.pop().expect("the second reply");
    assert_eq!(
        Some(second.message_id.clone()),
        answer_id(&app, "re m2").await
    );
    // Nothing waits behind the second reply: PostgreSQL says so.
    let more = store
        .record_outcomes(&[(second, delivered())])
        .await
        .expect("record");
    assert_eq!(more, sqlite, "nothing waits after the second reply");
    // A retry always says look (its new due time is the worker's to keep).
    let third = answer("m3").await.claimed.expect("claimed with its turn");
    let more = store
        .record_outcomes(&[(
            third,
            Outcome::RetryAt {
                next_attempt_at: switchboard::store::now_ms() + 60_000,
                error: "try later".to_owned(),
                parts_sent: None,
            },
        )])
        .await
        .expect("record");
    assert!(more, "a retry has a new due time");
    app.stop().await;
}

/// The id of the message of the tenant's first conversation whose text is `text`.
async fn answer_id(app: &TestApp, text: &str) -> Option<String> {
    let (_, listed) = app.get(&app.admin_key, "/v1/conversations").await;
    let conversation = listed["conversations"][0]["id"].as_str()?.to_owned();
    app.messages(&conversation)
        .await
        .iter()
        .find(|m| m["text"] == text)
        .and_then(|m| m["id"].as_str().map(str::to_owned))
}

async fn oldest_turns(
    app: &TestApp,
    conversations: &[String],
) -> Vec<switchboard::store::messages::PendingTurn> {
    app.store
        .next_pending_turns(conversations)
        .await
        .expect("read")
        .into_iter()
        .map(|t| t.expect("pending").0)
        .collect()
}

/// A gateway whose store the test drives itself (no router or outbox workers), with the tenant's
/// `api` channel to store messages on; `None` where the backend is not available.
async fn store_only(backend: Backend) -> Option<(TestApp, switchboard::store::channels::Channel)> {
    let app = TestApp::spawn_with(backend, |c| c.workers = false, None).await?;
    let channel = app
        .store
        .api_channel(&app.tenant_id)
        .await
        .expect("channel");
    Some((app, channel))
}

/// An inbound text from `who` (the provider id `id`) on `channel_id`, as a channel adapter hands
/// it to ingest.
fn ingest_item(
    tenant_id: &str,
    channel_id: &str,
    who: &str,
    id: &str,
    text: &str,
) -> switchboard::store::messages::IngestItem {
    let contact = switchboard_channel::ContactRef {
        external_id: who.to_owned(),
        display_name: None,
    };
    switchboard::store::messages::IngestItem {
        tenant_id: tenant_id.to_owned(),
        channel_id: channel_id.to_owned(),
        message: switchboard_channel::InboundMessage::text(id, contact, text.to_owned()),
        thread: String::new(),
        subject: None,
    }
}

/// The router's turn read is a prepared statement on PostgreSQL too, so the plan the server
/// caches after five executions is made from whatever the tables hold then — on a new
/// deployment, next to nothing. That plan must still look every row up by an index: a
/// sequential scan chosen for a few pages of `message` would run against every message ever
/// stored, at every turn (the id-list updates did that when they were prepared; see
/// `store::keep_plan`). Asked of the plan PostgreSQL builds without the values, on a small
/// `message` table (SQLite has no such plan cache: it plans each statement once, for any table).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_turn_read_s_cached_plan_probes_indexes() {
    use sqlx::{Executor, Row};
    let Some((app, channel)) = store_only(Backend::Postgres).await else {
        return;
    };
    // A few pages of messages in a few conversations, as in a deployment's first minutes.
    let items: Vec<_> = (0..300)
        .map(|i| {
            let who = format!("person-{}", i % 20);
            let id = format!("m-{i}");
            ingest_item(&app.tenant_id, &channel.id, &who, &id, "where is my order?")
        })
        .collect();
    for stored in app.store.ingest_batch(items).await {
        stored.expect("ingest");
    }
    let sql = switchboard::store::messages::turn_read_sql(app.store.backend());
    let mut conn = app.store.pool().acquire().await.expect("connection");
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("generic plans");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE turn_read_check(text) AS {sql}"
    )))
    .await
    .expect("prepare");
    let plan: Vec<String> = sqlx::query("EXPLAIN EXECUTE turn_read_check('[\"c\"]')")
        .fetch_all(&mut *conn)
        .await
        .expect("explain")
        .iter()
        .map(|r| r.try_get::<String, _>(0).expect("plan line"))
        .collect();
    conn.execute("DEALLOCATE turn_read_check; RESET plan_cache_mode")
        .await
        .expect("reset");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using message_unprocessed"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

/// PostgreSQL's write connections keep their statements prepared — planned once per
/// connection, not at every execution — and a generic plan the server settles on while the
/// tables are small must still find rows through indexes, never by scanning a table
/// (`store::WRITER_SETTINGS_ON_POSTGRES`). The statements the gateway prepared while answering
/// a few dozen messages of a dozen people and taking two provider status reports, as the server
/// lists them for each write connection, each asked for its generic plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_s_cached_plans_probe_indexes() {
    use sqlx::{Executor, Row};
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    app.set_callback(&receiver.url).await;
    let sends = (0..48).map(|i| {
        let app = &app;
        async move {
            app.send(
                &format!("person-{}", i % 12),
                &format!("question {i}"),
                json!({}),
            )
            .await
        }
    });
    futures::future::join_all(sends).await;
    eventually("every reply delivered", Duration::from_secs(30), || async {
        (receiver.accepted().len() >= 48).then_some(())
    })
    .await;
    // Provider status reports, which find their delivery by the provider's message id: one
    // for a delivery given an id here (a failure: the message's status and a dead letter),
    // one for an id not recorded (held in `early_status`).
    let delivery = sqlx::query(
        "UPDATE delivery SET provider_message_id = 'wamid.story'
         WHERE id = (SELECT min(id) FROM delivery) RETURNING channel_id",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("a delivery given a provider id");
    let channel: String = delivery.try_get("channel_id").expect("channel");
    for (id, state) in [
        ("wamid.story", switchboard_channel::DeliveryState::Failed),
        (
            "wamid.not-yet",
            switchboard_channel::DeliveryState::Delivered,
        ),
    ] {
        let report = switchboard_channel::StatusUpdate {
            provider_message_id: id.into(),
            state,
            recipient: "person-0".into(),
            at: None,
            error: Some("131026: undeliverable".into()),
        };
        app.store
            .apply_status(&channel, &report)
            .await
            .expect("a status report");
    }
    // Every write connection at once (held, so each is a different one), waiting briefly for
    // any a background task is using: the reports' statements are on whichever ran them.
    let writer = app.store.writer();
    let open = writer.size() as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut held = Vec::new();
    while held.len() < open && std::time::Instant::now() < deadline {
        match writer.try_acquire() {
            Some(conn) => held.push(conn),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(!held.is_empty(), "no idle write connection");
    let mut checked = Vec::new();
    for conn in &mut held {
        conn.execute("SET plan_cache_mode = force_generic_plan")
            .await
            .expect("generic plans");
        let prepared = sqlx::query(
            "SELECT name, statement,
                    array_to_string(parameter_types::text[], ',') AS types
             FROM pg_prepared_statements WHERE NOT from_sql",
        )
        .fetch_all(&mut **conn)
        .await
        .expect("prepared statements");
        for row in prepared {
            let name: String = row.try_get("name").expect("name");
            let statement: String = row.try_get("statement").expect("statement");
            let types: String = row.try_get("types").expect("types");
            let args: Vec<&str> = types
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|t| match t {
                    "bigint" | "integer" | "double precision" => "0",
                    "boolean" => "false",
                    "text" | "jsonb" | "character varying" => "'[[\"x\"]]'",
                    other => panic!("a parameter of type {other} in {statement}"),
                })
                .collect();
            let explain = if args.is_empty() {
                format!("EXPLAIN EXECUTE {name}")
            } else {
                format!("EXPLAIN EXECUTE {name}({})", args.join(", "))
            };
            let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
                .fetch_all(&mut **conn)
                .await
                .unwrap_or_else(|e| panic!("explaining {statement}: {e}"))
                .iter()
                .map(|r| r.try_get::<String, _>(0).expect("plan line"))
                .collect();
            let plan = plan.join("\n");
            // The tables that grow with every message (a tenant's few channels or prompts
            // may be scanned: nothing indexes them for every lookup, and they stay small).
            for table in [
                "message",
                "delivery",
                "conversation",
                "contact",
                "contact_identity",
                "early_status",
            ] {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table} ")),
                    "a cached plan scans {table}:\n{statement}\n{plan}"
                );
            }
            assert!(!plan.contains("JIT"), "a cached plan is compiled:\n{plan}");
            checked.push(statement.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        conn.execute("RESET plan_cache_mode").await.expect("reset");
    }
    // The batches' statements were among them: the check is not of an empty list.
    for expected in [
        "FOR UPDATE",
        "UPDATE message SET status = 'processed'",
        "UPDATE delivery SET status = 'delivered'",
        "INSERT INTO delivery",
        "FROM delivery WHERE channel_id = $1 AND provider_message_id = $2",
        "UPDATE delivery SET status = 'dead', last_error = $1",
        "DELETE FROM early_status WHERE created_at",
    ] {
        assert!(
            checked.iter().any(|s| s.contains(expected)),
            "no prepared statement with {expected:?} among {checked:#?}"
        );
    }
}
