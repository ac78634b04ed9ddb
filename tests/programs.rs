//! Coaching programs and the proactive engine (issue "Coaching programs"), on both stores, with
//! the engine's clock frozen and moved by hand: no real waiting. Each story drives the real
//! gateway over HTTP and counts what the outbox would send (the stored outbound messages and
//! their delivery rows). The frozen clock is set in 2027: later than the real time at which
//! the gateway stamps inbound messages, as it would be in production.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};
use sqlx::Row;

fn ms(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<Timestamp>()
        .map(|t| t.as_millisecond())
        .expect("timestamp")
}

fn local(ms: i64, zone: &str) -> jiff::Zoned {
    Timestamp::from_millisecond(ms)
        .expect("ms")
        .to_zoned(TimeZone::get(zone).expect("zone"))
}

async fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(&app.admin_key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Creates and publishes a program; its id.
async fn published(app: &TestApp, definition: Value) -> String {
    let (status, body) =
        request(app, reqwest::Method::POST, "/v1/programs", Some(definition)).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let (status, body) = request(
        app,
        reqwest::Method::POST,
        &format!("/v1/programs/{id}/publish"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    id
}

/// A contact who wrote once on the `api` channel: (contact id, conversation id).
async fn contact(app: &TestApp, external_id: &str) -> (String, String) {
    let sent = app
        .send(external_id, "hello", json!({ "wait": true }))
        .await;
    let conversation = sent["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let contact: String = sqlx::query("SELECT contact_id FROM conversation WHERE id = $1")
        .bind(&conversation)
        .fetch_one(app.store.pool())
        .await
        .expect("contact")
        .try_get("contact_id")
        .expect("contact_id");
    (contact, conversation)
}

async fn set_timezone(app: &TestApp, contact: &str, zone: &str) {
    let (status, body) = request(
        app,
        reqwest::Method::PATCH,
        &format!("/v1/contacts/{contact}"),
        Some(json!({ "timezone": zone })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn enroll(app: &TestApp, program: &str, contact: &str) -> String {
    let (status, body) = request(
        app,
        reqwest::Method::POST,
        &format!("/v1/programs/{program}/enrollments"),
        Some(json!({ "contact_id": contact })),
    )
    .await;
    assert!(status == 201 || status == 200, "{status}: {body}");
    body["enrollment_id"].as_str().expect("id").to_owned()
}

/// Moves the engine's clock from fire to fire up to `end`, running what falls due.
async fn run_until(app: &TestApp, end: i64) {
    let clock = app.programs.clock();
    for _ in 0..10_000 {
        app.programs.run_due().await.expect("run_due");
        match app.store.next_fire_due().await.expect("next due") {
            Some(due) if due <= end => clock.set(due.max(clock.now())),
            _ => break,
        }
    }
    clock.set(end.max(clock.now()));
    app.programs.run_due().await.expect("run_due");
}

/// The program's messages in a conversation (not replies to the contact): (text, created_at).
async fn proactive(app: &TestApp, conversation: &str) -> Vec<(String, i64)> {
    sqlx::query(
        "SELECT m.text, m.created_at FROM message m JOIN delivery d ON d.message_id = m.id
         WHERE m.conversation_id = $1 AND m.author = 'bot' AND m.reply_to IS NULL ORDER BY m.seq",
    )
    .bind(conversation)
    .fetch_all(app.store.pool())
    .await
    .expect("messages")
    .iter()
    .map(|r| {
        (
            r.try_get("text").expect("text"),
            r.try_get("created_at").expect("at"),
        )
    })
    .collect()
}

/// Every outbound message of a conversation, replies included: texts.
async fn outbound(app: &TestApp, conversation: &str) -> Vec<String> {
    sqlx::query(
        "SELECT text FROM message WHERE conversation_id = $1 AND direction = 'outbound' ORDER BY seq",
    )
    .bind(conversation)
    .fetch_all(app.store.pool())
    .await
    .expect("messages")
    .iter()
    .map(|r| r.try_get("text").expect("text"))
    .collect()
}

/// A week of 08:00 check-ins: day 1 at once, then "until 08:00" six times.
fn week() -> Value {
    let mut steps = vec![json!({ "id": "day-1", "type": "message", "text": "Day 1" })];
    for day in 2..=7 {
        steps.push(json!({ "id": format!("wait-{day}"), "type": "wait", "until": "08:00" }));
        steps.push(
            json!({ "id": format!("day-{day}"), "type": "message", "text": format!("Day {day}") }),
        );
    }
    json!({ "name": "Week", "channels": ["api"], "steps": steps })
}

/// A 7-day program in New York across the start of DST, in Kolkata (no DST) and in Auckland
/// across the end of DST: every day's message at 08:00 local, exactly once.
async fn a_week_at_eight_in_each_zone(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(&app, week()).await;
    for (zone, start) in [
        ("America/New_York", "2027-03-11T14:00:00Z"),
        ("Asia/Kolkata", "2027-03-11T04:00:00Z"),
        ("Pacific/Auckland", "2027-03-31T22:00:00Z"),
    ] {
        app.programs.clock().set(ms(start));
        let (contact, conversation) = contact(&app, zone).await;
        set_timezone(&app, &contact, zone).await;
        enroll(&app, &program, &contact).await;
        run_until(&app, ms(start) + 10 * 86_400_000).await;
        let sent = proactive(&app, &conversation).await;
        let texts: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Day 1", "Day 2", "Day 3", "Day 4", "Day 5", "Day 6", "Day 7"
            ],
            "{zone}: each day exactly once"
        );
        let mut dates = Vec::new();
        for (text, at) in &sent[1..] {
            let t = local(*at, zone);
            assert_eq!((t.hour(), t.minute()), (8, 0), "{zone}: {text} at {t}");
            dates.push(t.date());
        }
        for pair in dates.windows(2) {
            assert_eq!(
                pair[0].tomorrow().expect("date"),
                pair[1],
                "{zone}: one a day"
            );
        }
    }
    // The DST changes were crossed: New York's offset changed between day 2 and day 7.
    app.stop().await;
}

/// Quiet hours (21:00-08:00 by default) defer a message to their end; the daily cap (3) defers
/// the fourth of a day to the next morning. Nothing is dropped.
async fn quiet_hours_and_the_daily_cap_defer(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut steps = vec![json!({ "id": "m1", "type": "message", "text": "one" })];
    for n in 2..=5 {
        steps.push(json!({ "id": format!("w{n}"), "type": "wait", "for": "1h" }));
        steps.push(json!({ "id": format!("m{n}"), "type": "message", "text": format!("m{n}") }));
    }
    let program = published(
        &app,
        json!({ "name": "Hourly", "channels": ["api"], "steps": steps }),
    )
    .await;
    // Enrolled at 20:30 UTC: "one" at once, m2 would be 21:30 → 08:00 next day.
    app.programs.clock().set(ms("2027-06-01T20:30:00Z"));
    let (contact, conversation) = contact(&app, "night").await;
    enroll(&app, &program, &contact).await;
    run_until(&app, ms("2027-06-03T12:00:00Z")).await;
    let sent = proactive(&app, &conversation).await;
    let at: Vec<(String, i64)> = sent.clone();
    assert_eq!(at.len(), 5, "{sent:?}");
    assert_eq!(at[0].1, ms("2027-06-01T20:30:00Z"));
    assert_eq!(
        at[1].1,
        ms("2027-06-02T08:00:00Z"),
        "quiet hours: deferred to 08:00"
    );
    assert_eq!(at[2].1, ms("2027-06-02T09:00:00Z"));
    // The first message went out on the 1st (its own day); the 2nd holds m2, m3, m4: the cap.
    assert_eq!(at[3].1, ms("2027-06-02T10:00:00Z"));
    assert_eq!(
        at[4].1,
        ms("2027-06-03T08:00:00Z"),
        "daily cap: deferred to the next morning"
    );
    let deferred: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM fire WHERE reason IN ('quiet_hours', 'daily_cap')")
            .fetch_one(app.store.pool())
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
    assert_eq!(
        deferred, 0,
        "deferred fires end done, their reason replaced"
    );
    app.stop().await;
}

fn asking() -> Value {
    json!({
        "name": "Check-in",
        "channels": ["api"],
        "fields": ["mood"],
        "inactivity": { "after": "1h", "nudges": ["Still there?"] },
        "steps": [
            { "id": "q", "type": "ask", "text": "How are you?", "field": "mood",
              "buttons": [ { "id": "good", "title": "Good" }, { "id": "bad", "title": "Bad" } ],
              "keywords": { "good": ["great", "fine"] },
              "reprompt": { "times": 1, "text": "Good or bad?" },
              "timeout": { "after": "3h", "next": "late" } },
            { "id": "b", "type": "branch",
              "cases": [ { "if": { "answer": "q", "equals": "bad" }, "next": "sorry" } ],
              "default": "glad" },
            { "id": "glad", "type": "message", "text": "Glad you're {{ fields.mood }}!", "next": "end" },
            { "id": "sorry", "type": "message", "text": "Sorry to hear.", "next": "end" },
            { "id": "late", "type": "message", "text": "No answer, that's fine.", "next": "end" },
            { "id": "end", "type": "complete" }
        ]
    })
}

/// An ask: a keyword answers it ("great" → good), an unmatched reply is asked again once, and
/// the field is saved; a reply restarts the inactivity clock (no nudge at the old time), and an
/// unanswered ask takes its timeout branch.
async fn asks_match_reprompt_time_out_and_replies_cancel_nudges(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(&app, asking()).await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let (ana, ana_conv) = contact(&app, "ana").await;
    let (bob, bob_conv) = contact(&app, "bob").await;
    enroll(&app, &program, &ana).await;
    enroll(&app, &program, &bob).await;
    run_until(&app, t0).await;
    assert_eq!(proactive(&app, &ana_conv).await.len(), 1, "the question");
    // Ana answers something else first (asked again), then a keyword, 30 minutes later.
    app.programs.clock().set(t0 + 30 * 60_000);
    app.send("ana", "what?", json!({ "wait": true })).await;
    app.send("ana", "Great, thanks", json!({ "wait": true }))
        .await;
    let texts = outbound(&app, &ana_conv).await;
    assert!(
        texts.ends_with(&[
            "How are you?".into(),
            "Good or bad?".into(),
            "Glad you're good!".into()
        ]),
        "{texts:?}"
    );
    let (_, enrollments) = app
        .get(&app.admin_key, &format!("/v1/contacts/{ana}/enrollments"))
        .await;
    assert_eq!(
        enrollments["enrollments"][0]["status"], "completed",
        "{enrollments}"
    );
    let mood: String = sqlx::query("SELECT fields FROM contact WHERE id = $1")
        .bind(&ana)
        .fetch_one(app.store.pool())
        .await
        .expect("contact")
        .try_get("fields")
        .expect("fields");
    assert_eq!(
        serde_json::from_str::<Value>(&mood).expect("json")["mood"],
        "good"
    );
    // Bob says nothing: the nudge at +1h, the timeout branch at +3h (the day's third
    // proactive message: within the cap).
    run_until(&app, t0 + 4 * 3_600_000).await;
    let bob_texts = outbound(&app, &bob_conv).await;
    assert!(
        bob_texts.ends_with(&[
            "How are you?".into(),
            "Still there?".into(),
            "No answer, that's fine.".into()
        ]),
        "{bob_texts:?}"
    );
    let (_, bob_enrollments) = app
        .get(&app.admin_key, &format!("/v1/contacts/{bob}/enrollments"))
        .await;
    assert_eq!(
        bob_enrollments["enrollments"][0]["at_risk"], true,
        "{bob_enrollments}"
    );
    // Ana's reply cancelled her nudge: she never got one.
    assert!(
        !outbound(&app, &ana_conv)
            .await
            .iter()
            .any(|t| t == "Still there?")
    );
    app.stop().await;
}

/// STOP, on another channel of the same person, cancels everything pending at once and stops the
/// enrolment; nothing proactive follows.
async fn stop_on_another_channel_cancels_everything(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = common::telegram::BotApi::start().await;
    let program = published(&app, week()).await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let (ana, conversation) = contact(&app, "ana").await;
    enroll(&app, &program, &ana).await;
    run_until(&app, t0).await;
    assert_eq!(proactive(&app, &conversation).await.len(), 1);
    // Link Ana's Telegram chat to her: /link on the API gives a code, /link <code> in Telegram.
    let linked = app.send("ana", "/link", json!({ "wait": true })).await;
    let reply = linked["reply"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let code: String = reply
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .expect("a six-digit code")
        .to_owned();
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": {
            "bot_token": common::telegram::TOKEN, "webhook_secret": "s3cret", "mode": "webhook",
            "api_url": api.base } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let channel = body["channel_id"].as_str().expect("channel").to_owned();
    let update = |id: i64, text: &str| {
        json!({ "update_id": id, "message": { "message_id": id, "date": 1_780_000_000,
            "chat": { "id": 4242, "type": "private", "first_name": "Ana" },
            "from": { "id": 4242, "is_bot": false, "first_name": "Ana" }, "text": text } })
    };
    for (id, text) in [(1, format!("/link {code}")), (2, "STOP".to_owned())] {
        let res = app
            .http
            .post(format!("{}/webhooks/telegram/{channel}", app.base))
            .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
            .json(&update(id, &text))
            .send()
            .await
            .expect("webhook");
        assert_eq!(res.status().as_u16(), 200);
    }
    common::eventually("the opt-out", Duration::from_secs(10), || async {
        let row = sqlx::query("SELECT opted_out_at FROM contact WHERE id = $1")
            .bind(&ana)
            .fetch_one(app.store.pool())
            .await
            .ok()?;
        row.try_get::<Option<i64>, _>("opted_out_at").ok().flatten()
    })
    .await;
    let pending: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM fire WHERE contact_id = $1 AND status = 'pending'")
            .bind(&ana)
            .fetch_one(app.store.pool())
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
    assert_eq!(pending, 0, "every pending fire cancelled at once");
    run_until(&app, t0 + 10 * 86_400_000).await;
    assert_eq!(
        proactive(&app, &conversation).await.len(),
        1,
        "nothing after STOP"
    );
    let (_, enrollments) = app
        .get(&app.admin_key, &format!("/v1/contacts/{ana}/enrollments"))
        .await;
    assert_eq!(
        enrollments["enrollments"][0]["status"], "stopped",
        "{enrollments}"
    );
    app.stop().await;
}

/// Many due fires, claimed by several engines at once: each sent exactly once.
async fn due_fires_run_exactly_once_under_concurrent_engines(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(
        &app,
        json!({ "name": "Later", "channels": ["api"], "steps": [
            { "id": "w", "type": "wait", "for": "1h" },
            { "id": "m", "type": "message", "text": "ping" } ] }),
    )
    .await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let mut contacts = Vec::new();
    for i in 0..60 {
        let (contact, conversation) = contact(&app, &format!("c{i}")).await;
        enroll(&app, &program, &contact).await;
        contacts.push(conversation);
    }
    app.programs.run_due().await.expect("start fires");
    app.programs.clock().set(t0 + 2 * 3_600_000);
    let runs = (0..4).map(|_| app.programs.run_due());
    let done: usize = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("run_due"))
        .sum();
    assert!(done >= 60, "{done}");
    for conversation in &contacts {
        let sent = proactive(&app, conversation).await;
        assert_eq!(sent.len(), 1, "{conversation}: {sent:?}");
    }
    let deliveries: i64 = sqlx::query("SELECT COUNT(*) AS n FROM delivery d JOIN message m ON m.id = d.message_id WHERE m.text = 'ping'")
        .fetch_one(app.store.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert_eq!(deliveries, 60);
    app.stop().await;
}

/// Fires survive a restart: scheduled before, sent after, once.
async fn fires_survive_a_restart(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(&app, week()).await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let (ana, conversation) = contact(&app, "ana").await;
    enroll(&app, &program, &ana).await;
    run_until(&app, t0 + 86_400_000).await;
    assert_eq!(proactive(&app, &conversation).await.len(), 2);
    // Workers off after the restart: the engine acts only when the test moves its clock.
    let (tenant_id, admin_key) = (app.tenant_id.clone(), app.admin_key.clone());
    let db = app.stop().await;
    let mut config = common::test_config(&db);
    config.workers = false;
    let mut app = TestApp::start(db, config, None).await;
    app.tenant_id = tenant_id;
    app.admin_key = admin_key;
    app.programs.clock().set(t0 + 86_400_000);
    run_until(&app, t0 + 10 * 86_400_000).await;
    assert_eq!(proactive(&app, &conversation).await.len(), 7);
    app.stop().await;
}

/// The preview lists the next fires in local time and UTC, marking the quiet-hour shift and the
/// DST change; the program API validates and versions.
async fn preview_marks_shifts_and_dst(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(&app, week()).await;
    app.programs.clock().set(ms("2027-03-12T04:00:00Z")); // 23:00 in New York: quiet
    let (ana, _) = contact(&app, "ana").await;
    set_timezone(&app, &ana, "America/New_York").await;
    let (status, preview) = app
        .get(
            &app.admin_key,
            &format!("/v1/programs/{program}/preview?contact={ana}"),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let fires = preview["fires"].as_array().expect("fires");
    assert_eq!(fires.len(), 7, "{preview}");
    assert_eq!(
        fires[0]["at_local"], "2027-03-12T08:00:00-05:00",
        "{preview}"
    );
    assert!(fires[0]["shifted_by"].is_string(), "{preview}");
    assert_eq!(fires[0]["timezone"], "America/New_York");
    let dst: Vec<&Value> = fires
        .iter()
        .filter(|f| f["dst_change"].is_string())
        .collect();
    assert_eq!(dst.len(), 1, "{preview}");
    assert_eq!(dst[0]["at_local"], "2027-03-14T08:00:00-04:00");
    assert_eq!(dst[0]["at_utc"], "2027-03-14T12:00:00Z");
    // Versions: a change to the draft does not move what is published until published.
    let (status, body) = request(&app, reqwest::Method::PUT, &format!("/v1/programs/{program}"), Some(json!({
        "name": "Week v2", "channels": ["api"], "steps": [ { "id": "only", "type": "message", "text": "v2" } ] }))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["current_version"], 1);
    let (_, published_again) = request(
        &app,
        reqwest::Method::POST,
        &format!("/v1/programs/{program}/publish"),
        None,
    )
    .await;
    assert_eq!(published_again["version"], 2);
    let (_, list) = app.get(&app.admin_key, "/v1/programs").await;
    assert_eq!(list["programs"][0]["name"], "Week v2", "{list}");
    app.stop().await;
}

/// `/join` in the chat enrols and answers with the program's first message; `/progress` shows it.
async fn join_and_progress_from_the_chat(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    published(&app, asking()).await;
    app.programs.clock().set(ms("2027-06-01T10:00:00Z"));
    let joined = app
        .send("ana", "/join check-in", json!({ "wait": true }))
        .await;
    assert_eq!(joined["reply"]["text"], "How are you?", "{joined}");
    let again = app
        .send("ana", "/join check-in", json!({ "wait": true }))
        .await;
    assert!(
        again["reply"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("already in"),
        "{again}"
    );
    let answered = app.send("ana", "bad", json!({ "wait": true })).await;
    assert_eq!(answered["reply"]["text"], "Sorry to hear.", "{answered}");
    let progress = app.send("ana", "/progress", json!({ "wait": true })).await;
    let text = progress["reply"]["text"].as_str().unwrap_or("");
    assert!(
        text.contains("Check-in: 2 of 4 steps done, completed"),
        "{text}"
    );
    app.stop().await;
}

/// Invalid definitions are refused with the path of each error.
async fn invalid_programs_name_their_errors(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/programs",
        Some(json!({ "name": "Bad", "channels": ["api"], "steps": [
            { "id": "a", "type": "message", "text": "hi {{ fields.nope }}", "next": "zzz" },
            { "id": "b", "type": "branch", "cases": [ { "if": { "field": "x", "equals": 1 }, "next": "a" } ] }
        ] })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_program");
    let paths: Vec<&str> = body["error"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    for want in [
        "steps[0].next",
        "steps[0].text",
        "steps[1].default",
        "steps[1].cases[0].if.field",
    ] {
        assert!(paths.contains(&want), "{want} in {paths:?}");
    }
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/programs",
        Some(json!({ "name": "x", "steps": [ { "id": "a", "type": "shout" } ] })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["errors"][0]["path"], "steps[0].type",
        "{body}"
    );
    app.stop().await;
}

/// A `generate` step with no model to write it sends its static fallback, at once, once.
async fn generate_without_a_model_sends_the_fallback(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(
        &app,
        json!({ "name": "Tips", "channels": ["api"], "steps": [
            { "id": "tip", "type": "message",
              "generate": { "prompt": "A sleep tip for {{ contact.name }}", "fallback": "Keep a steady wake-up time." } } ] }),
    )
    .await;
    app.programs.clock().set(ms("2027-06-01T10:00:00Z"));
    let (ana, conversation) = contact(&app, "ana").await;
    enroll(&app, &program, &ana).await;
    run_until(&app, ms("2027-06-01T11:00:00Z")).await;
    let sent = proactive(&app, &conversation).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "Keep a steady wake-up time.");
    app.stop().await;
}

/// On WhatsApp, with no message from the contact in 24 hours, a step goes out as its approved
/// template with its parameters; a step without a template is skipped, and the audit log says why.
async fn whatsapp_outside_the_window_sends_the_template_or_skips_visibly(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (graph, sent) = common::graph::graph_stand_in().await;
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "whatsapp", "config": {
            "phone_number_id": "1122334455667", "access_token": "EAAtest",
            "app_secret": "app-secret", "verify_token": "verify", "graph_url": graph } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let channel = body["channel_id"].as_str().expect("channel").to_owned();
    let program = published(
        &app,
        json!({ "name": "WA", "channels": ["whatsapp"], "steps": [
            { "id": "hi", "type": "message", "text": "Hi {{ contact.name }}, day one!",
              "template": { "name": "day_one", "language": "en", "parameters": ["{{ contact.name }}"] } },
            { "id": "w", "type": "wait", "for": "1h" },
            { "id": "done", "type": "complete", "text": "Well done!" } ] }),
    )
    .await;
    // Enrolled by phone number: a new contact who never wrote (the window is closed).
    app.programs.clock().set(ms("2027-06-01T10:00:00Z"));
    let (status, enrolled) = request(
        &app,
        reqwest::Method::POST,
        &format!("/v1/programs/{program}/enrollments"),
        Some(json!({ "channel_id": channel, "external_id": "15551234567" })),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    let contact: String = sqlx::query("SELECT contact_id FROM enrollment WHERE id = $1")
        .bind(enrolled["enrollment_id"].as_str().expect("id"))
        .fetch_one(app.store.pool())
        .await
        .expect("enrollment")
        .try_get("contact_id")
        .expect("contact");
    let (status, _) = request(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/contacts/{contact}"),
        Some(json!({ "display_name": "Ana" })),
    )
    .await;
    assert_eq!(status, 200);
    run_until(&app, ms("2027-06-01T12:00:00Z")).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let sent = sent.lock().expect("lock").clone();
            if !sent.is_empty() {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let Ok(bodies) = waited else {
        let (_, deliveries) = app.get(&app.admin_key, "/v1/deliveries").await;
        let fires: Vec<String> = sqlx::query("SELECT kind, status, reason FROM fire")
            .fetch_all(app.store.pool())
            .await
            .expect("fires")
            .iter()
            .map(|r| {
                format!(
                    "{:?}",
                    (
                        r.try_get::<String, _>("kind").ok(),
                        r.try_get::<String, _>("status").ok(),
                        r.try_get::<Option<String>, _>("reason").ok()
                    )
                )
            })
            .collect();
        panic!("no template was sent; deliveries: {deliveries}; fires: {fires:?}");
    };
    let (_, body) = &bodies[0];
    assert_eq!(body["type"], "template", "{body}");
    assert_eq!(body["template"]["name"], "day_one");
    assert_eq!(
        body["template"]["components"][0]["parameters"][0]["text"], "Ana",
        "{body}"
    );
    let skipped: Vec<String> =
        sqlx::query("SELECT detail FROM event WHERE kind = 'program.message_skipped'")
            .fetch_all(app.store.pool())
            .await
            .expect("events")
            .iter()
            .map(|r| r.try_get("detail").expect("detail"))
            .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].contains("whatsapp_window_closed_no_template"),
        "{skipped:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sent.lock().expect("lock").len(),
        1,
        "nothing but the template was sent"
    );
    // A program for the API only cannot be joined on WhatsApp.
    let api_only = published(&app, week()).await;
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        &format!("/v1/programs/{api_only}/enrollments"),
        Some(json!({ "channel_id": channel, "external_id": "15550000000" })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "wrong_channel");
    app.stop().await;
}

/// A program for people on Telegram and WhatsApp: one question with buttons and keywords.
fn mood() -> Value {
    json!({ "name": "Mood", "slug": "mood", "channels": ["telegram", "whatsapp"], "fields": ["mood"],
        "steps": [
            { "id": "q", "type": "ask", "text": "How are you?", "field": "mood",
              "buttons": [ { "id": "good", "title": "Good" }, { "id": "bad", "title": "Bad" } ],
              "keywords": { "good": ["great", "fine"] },
              "template": { "name": "mood_check", "language": "en" } },
            { "id": "glad", "type": "message", "text": "Glad you're {{ fields.mood }}!" },
            { "id": "end", "type": "complete" } ] })
}

/// On the Telegram stand-in: `/join mood` asks with an inline keyboard; pressing a button (a
/// callback query carrying the button's id) answers it.
async fn an_ask_with_buttons_on_telegram(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let api = common::telegram::BotApi::start().await;
    published(&app, mood()).await;
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": {
            "bot_token": common::telegram::TOKEN, "webhook_secret": "s3cret", "mode": "webhook",
            "api_url": api.base } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let webhook = format!(
        "{}/webhooks/telegram/{}",
        app.base,
        body["channel_id"].as_str().expect("id")
    );
    let from = json!({ "id": 77, "is_bot": false, "first_name": "Ana" });
    let chat = json!({ "id": 77, "type": "private", "first_name": "Ana" });
    let updates = [
        json!({ "update_id": 1, "message": { "message_id": 1, "date": 1_780_000_000,
            "chat": chat, "from": from, "text": "/join mood",
            "entities": [ { "type": "bot_command", "offset": 0, "length": 5 } ] } }),
        json!({ "update_id": 2, "callback_query": { "id": "cb-1", "from": from, "data": "good",
            "chat_instance": "1", "message": { "message_id": 2, "date": 1_780_000_001, "chat": chat,
            "text": "How are you?" } } }),
    ];
    for (n, update) in updates.iter().enumerate() {
        let res = app
            .http
            .post(&webhook)
            .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
            .json(update)
            .send()
            .await
            .expect("webhook");
        assert_eq!(res.status().as_u16(), 200);
        let want = ["How are you?", "Glad you're good!"][n];
        common::eventually(want, Duration::from_secs(20), || async {
            api.texts().iter().any(|(_, t)| t == want).then_some(())
        })
        .await;
    }
    let question = api
        .calls("sendMessage")
        .into_iter()
        .find(|c| c.body["text"] == "How are you?")
        .expect("the question");
    let keyboard = &question.body["reply_markup"]["inline_keyboard"];
    assert_eq!(keyboard[0][0]["callback_data"], "good", "{}", question.body);
    assert_eq!(keyboard[0][1]["text"], "Bad", "{}", question.body);
    app.stop().await;
}

/// On the WhatsApp stand-in, driven by the Cloud API's own webhook payload (pywa's fixture):
/// `/join mood`, then a keyword ("great") answers the question.
async fn a_keyword_answer_on_whatsapp(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (graph, sent) = common::graph::graph_stand_in().await;
    published(&app, mood()).await;
    const SECRET: &str = "1222e786b144d0e85b9f365372d93676";
    let (status, body) = request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "whatsapp", "config": {
            "phone_number_id": "1122334455667", "access_token": "EAAtest",
            "app_secret": SECRET, "verify_token": "verify", "graph_url": graph } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let webhook = format!(
        "{}/webhooks/whatsapp/{}",
        app.base,
        body["channel_id"].as_str().expect("id")
    );
    let fixture = std::fs::read(format!(
        "{}/channels/whatsapp/tests/fixtures/pywa/message__text.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    for (n, text) in ["/join mood", "great!"].into_iter().enumerate() {
        let mut payload: Value = serde_json::from_slice(&fixture).expect("json");
        let message = &mut payload["entry"][0]["changes"][0]["value"]["messages"][0];
        message["text"]["body"] = json!(text);
        message["id"] = json!(format!("wamid.program-{n}"));
        message["timestamp"] = json!((switchboard::store::now_ms() / 1000).to_string());
        let raw = serde_json::to_vec(&payload).expect("json");
        let res = app
            .http
            .post(&webhook)
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                switchboard_channel_api::outbound::sign(SECRET, &raw),
            )
            .body(raw)
            .send()
            .await
            .expect("webhook");
        assert_eq!(res.status().as_u16(), 200);
        let want = ["How are you?", "Glad you're good!"][n];
        common::eventually(want, Duration::from_secs(20), || async {
            let sent = sent.lock().expect("lock").clone();
            sent.iter()
                .any(|(_, b)| b["interactive"]["body"]["text"] == want || b["text"]["body"] == want)
                .then_some(())
        })
        .await;
    }
    let sent = sent.lock().expect("lock").clone();
    let question = sent
        .iter()
        .map(|(_, b)| b)
        .find(|b| b["interactive"]["body"]["text"] == "How are you?")
        .expect("the question, as buttons");
    assert_eq!(
        question["interactive"]["action"]["buttons"][0]["reply"]["id"], "good",
        "{question}"
    );
    app.stop().await;
}

/// Recurring check-ins (Mon/Wed/Fri 18:30 in New York, across the start of DST): each at 18:30
/// local, exactly once, shown in the preview; an answer is saved, acknowledged and counted in
/// the streak and the stats; a pause skips what fell due in it (nothing sent twice on resume);
/// none after the program completes.
async fn recurring_checkins_keep_the_local_hour(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(
        &app,
        json!({ "name": "Evenings", "channels": ["api"],
            "checkins": [ { "id": "evening", "schedule": "mon,wed,fri 18:30",
                "text": "Evening check-in: how was today?",
                "buttons": [ { "id": "good", "title": "Good" }, { "id": "meh", "title": "Meh" } ],
                "field": "day_rating", "reply": "Thanks, noted: {{ fields.day_rating }}." } ],
            "steps": [
                { "id": "welcome", "type": "message", "text": "Two weeks of evening check-ins." },
                { "id": "fortnight", "type": "wait", "for": "14d" },
                { "id": "done", "type": "complete", "text": "That's the two weeks." } ] }),
    )
    .await;
    // Monday 2027-03-08, 10:00 EST. DST starts on Sunday 2027-03-14.
    let t0 = ms("2027-03-08T15:00:00Z");
    app.programs.clock().set(t0);
    let (ana, conversation) = contact(&app, "ana").await;
    set_timezone(&app, &ana, "America/New_York").await;
    let (status, preview) = app
        .get(
            &app.admin_key,
            &format!("/v1/programs/{program}/preview?contact={ana}"),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let locals: Vec<&str> = preview["fires"]
        .as_array()
        .expect("fires")
        .iter()
        .filter(|f| f["step"] == "checkin:evening")
        .filter_map(|f| f["at_local"].as_str())
        .collect();
    assert_eq!(
        locals[..4],
        [
            "2027-03-08T18:30:00-05:00",
            "2027-03-10T18:30:00-05:00",
            "2027-03-12T18:30:00-05:00",
            "2027-03-15T18:30:00-04:00"
        ],
        "{preview}"
    );
    let enrollment = enroll(&app, &program, &ana).await;
    // Ana answers the first check-in ten minutes after it (by button title).
    run_until(&app, ms("2027-03-08T23:40:00Z")).await;
    app.send("ana", "Good", json!({ "wait": true })).await;
    let texts = outbound(&app, &conversation).await;
    assert_eq!(
        texts.last().map(String::as_str),
        Some("Thanks, noted: good."),
        "{texts:?}"
    );
    // Paused over Wednesday's and Friday's, resumed on Saturday: those two are not sent late.
    let pause = |status: &'static str| {
        let app = &app;
        let enrollment = enrollment.clone();
        async move {
            let (code, body) = request(
                app,
                reqwest::Method::PATCH,
                &format!("/v1/enrollments/{enrollment}"),
                Some(json!({ "status": status })),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
    };
    run_until(&app, ms("2027-03-09T12:00:00Z")).await;
    pause("paused").await;
    run_until(&app, ms("2027-03-13T12:00:00Z")).await;
    pause("active").await;
    run_until(&app, ms("2027-03-30T12:00:00Z")).await;
    let checkins: Vec<i64> = proactive(&app, &conversation)
        .await
        .into_iter()
        .filter(|(t, _)| t.starts_with("Evening check-in"))
        .map(|(_, at)| at)
        .collect();
    let expected = [
        "2027-03-08T23:30:00Z", // Mon 18:30 EST
        "2027-03-15T22:30:00Z", // Mon 18:30 EDT
        "2027-03-17T22:30:00Z",
        "2027-03-19T22:30:00Z",
    ];
    assert_eq!(
        checkins,
        expected.iter().map(|t| ms(t)).collect::<Vec<_>>(),
        "each once, at 18:30 local; none while paused or after the program completed"
    );
    let (_, enrollments) = app
        .get(&app.admin_key, &format!("/v1/contacts/{ana}/enrollments"))
        .await;
    assert_eq!(enrollments["enrollments"][0]["status"], "completed");
    assert_eq!(enrollments["enrollments"][0]["streak"], 1, "{enrollments}");
    let (_, stats) = app
        .get(&app.admin_key, &format!("/v1/programs/{program}/stats"))
        .await;
    assert_eq!(stats["checkins"][0]["id"], "evening", "{stats}");
    assert_eq!(stats["checkins"][0]["sent"], 4, "{stats}");
    assert_eq!(stats["checkins"][0]["answered"], 1, "{stats}");
    let pending: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM fire f JOIN enrollment e ON e.id = f.enrollment_id
         WHERE e.contact_id = $1 AND f.status = 'pending'",
    )
    .bind(&ana)
    .fetch_one(app.store.pool())
    .await
    .expect("count")
    .try_get("n")
    .expect("n");
    assert_eq!(pending, 0, "a completed enrolment leaves nothing pending");
    app.stop().await;
}

/// Nudge lift: with `holdout`, some quiet episodes get no nudge (the control group); the stats
/// compare how many of each group wrote within 24 hours.
async fn nudge_lift_compares_nudged_and_held_back_episodes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(
        &app,
        json!({ "name": "Lift", "channels": ["api"],
            "inactivity": { "after": "1h", "nudges": ["Still there?"], "holdout": 0.5 },
            "steps": [
                { "id": "hi", "type": "message", "text": "Hi" },
                { "id": "rest", "type": "wait", "for": "7d" } ] }),
    )
    .await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let mut people = Vec::new();
    for i in 0..24 {
        let name = format!("p{i}");
        let (id, conversation) = contact(&app, &name).await;
        enroll(&app, &program, &id).await;
        people.push((name, conversation));
    }
    run_until(&app, t0 + 2 * 3_600_000).await;
    let mut nudged = Vec::new();
    for (name, conversation) in &people {
        let got = outbound(&app, conversation)
            .await
            .iter()
            .any(|t| t == "Still there?");
        nudged.push((name.clone(), got));
    }
    let n = nudged.iter().filter(|(_, got)| *got).count();
    assert!(
        n > 0 && n < people.len(),
        "both groups are used: {n} nudged"
    );
    // Everyone nudged writes back within the day, and one of those held back.
    app.programs.clock().set(t0 + 5 * 3_600_000);
    let mut held_back_wrote = 0;
    for (name, got) in &nudged {
        if *got || held_back_wrote == 0 {
            if !*got {
                held_back_wrote += 1;
            }
            app.send(name, "back", json!({ "wait": true })).await;
        }
    }
    let (_, stats) = app
        .get(&app.admin_key, &format!("/v1/programs/{program}/stats"))
        .await;
    let lift = &stats["nudge_lift"];
    assert_eq!(lift["nudged"]["episodes"], n as i64, "{stats}");
    assert_eq!(lift["nudged"]["answered_24h"], n as i64, "{stats}");
    assert_eq!(
        lift["held_back"]["episodes"],
        (people.len() - n) as i64,
        "{stats}"
    );
    assert_eq!(lift["held_back"]["answered_24h"], 1, "{stats}");
    let expected = (people.len() - n) as f64;
    assert!(
        (lift["lift"].as_f64().expect("lift") - expected).abs() < 1e-9,
        "{stats}"
    );
    assert_eq!(stats["nudges_sent"], n as i64, "{stats}");
    app.stop().await;
}

/// Events from the core: one starts a program (`events`), another ends a wait on it at once
/// (`wait.event`); without the event the wait ends when its time is up.
async fn events_start_programs_and_end_waits(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let program = published(
        &app,
        json!({ "name": "Onboarding", "channels": ["api"], "events": ["signed_up"],
            "steps": [
                { "id": "welcome", "type": "message", "text": "Welcome aboard." },
                { "id": "pay", "type": "wait", "event": "paid", "for": "3d" },
                { "id": "next", "type": "message", "text": "Next step." } ] }),
    )
    .await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let (ana, ana_conv) = contact(&app, "ana").await;
    let (bob, bob_conv) = contact(&app, "bob").await;
    let event = |contact: String, name: &'static str| {
        let app = &app;
        async move {
            let (status, body) = request(
                app,
                reqwest::Method::POST,
                "/v1/events",
                Some(json!({ "contact_id": contact, "name": name })),
            )
            .await;
            assert_eq!(status, 202, "{body}");
            body
        }
    };
    for who in [&ana, &bob] {
        let body = event(who.clone(), "signed_up").await;
        assert_eq!(
            body["enrollments"][0]["program_id"],
            program.as_str(),
            "{body}"
        );
        assert_eq!(body["enrollments"][0]["created"], true, "{body}");
    }
    // Enrolling again is idempotent.
    let again = event(ana.clone(), "signed_up").await;
    assert_eq!(again["enrollments"][0]["created"], false, "{again}");
    run_until(&app, t0 + 60_000).await;
    app.programs.clock().set(t0 + 3_600_000);
    let paid = event(ana.clone(), "paid").await;
    assert_eq!(paid["advanced"].as_array().map(Vec::len), Some(1), "{paid}");
    run_until(&app, t0 + 3_600_000).await;
    let ana_sent = proactive(&app, &ana_conv).await;
    assert_eq!(
        ana_sent,
        [
            ("Welcome aboard.".to_owned(), ana_sent[0].1),
            ("Next step.".to_owned(), t0 + 3_600_000)
        ],
        "the event ended Ana's wait at once"
    );
    // An event nobody waits on moves nothing.
    let stray = event(bob.clone(), "paid_twice").await;
    assert_eq!(
        stray["advanced"].as_array().map(Vec::len),
        Some(0),
        "{stray}"
    );
    run_until(&app, t0 + 4 * 86_400_000).await;
    let bob_sent = proactive(&app, &bob_conv).await;
    let bob_texts: Vec<&str> = bob_sent.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(bob_texts, ["Welcome aboard.", "Next step."]);
    assert_eq!(
        bob_sent[1].1,
        t0 + 3 * 86_400_000,
        "Bob's wait ended by its time"
    );
    let ana_again = proactive(&app, &ana_conv).await;
    assert_eq!(ana_again.len(), 2, "nothing twice: {ana_again:?}");
    app.stop().await;
}

/// A batch of fires is read and written a few statements at a time; one fire whose write
/// fails (a trigger refuses its message) fails alone and is retried, the rest of its batch is
/// sent once. A contact's second due fire (another program) runs in the next batch of the same
/// run; a contact whose conversation was closed gets a new one.
async fn one_bad_fire_fails_alone_in_its_batch(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let later = |name: &str, text: &str| {
        json!({ "name": name, "channels": ["api"], "steps": [
            { "id": "w", "type": "wait", "for": "1h" },
            { "id": "m", "type": "message", "text": text } ] })
    };
    let ping = published(&app, later("Ping", "ping")).await;
    let pong = published(&app, later("Pong", "pong")).await;
    let boom = published(&app, later("Boom", "boom")).await;
    let t0 = ms("2027-06-01T10:00:00Z");
    app.programs.clock().set(t0);
    let mut conversations = Vec::new();
    for i in 0..20 {
        let (contact, conversation) = contact(&app, &format!("p{i}")).await;
        enroll(&app, &ping, &contact).await;
        conversations.push(conversation);
    }
    let (both, both_conv) = contact(&app, "both").await;
    enroll(&app, &ping, &both).await;
    enroll(&app, &pong, &both).await;
    let (bad, bad_conv) = contact(&app, "bad").await;
    enroll(&app, &boom, &bad).await;
    app.programs.run_due().await.expect("start fires");
    // The last contact's conversation is closed: the fire opens a new one.
    let closed = conversations.pop().expect("a conversation");
    sqlx::query("UPDATE conversation SET status = 'closed' WHERE id = $1")
        .bind(&closed)
        .execute(app.store.pool())
        .await
        .expect("close");
    let refuse = match app.store.backend() {
        switchboard::store::Backend::Sqlite => vec![
            "CREATE TRIGGER boom BEFORE INSERT ON message WHEN NEW.text = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        ],
        switchboard::store::Backend::Postgres => vec![
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN
               IF NEW.text = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW;
             END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER boom BEFORE INSERT ON message FOR EACH ROW EXECUTE FUNCTION boom()",
        ],
    };
    for sql in refuse {
        sqlx::query(sql)
            .execute(app.store.pool())
            .await
            .expect("trigger");
    }
    app.programs.clock().set(t0 + 2 * 3_600_000);
    let done = app.programs.run_due().await.expect("run_due");
    assert_eq!(
        done, 23,
        "20 + both's two + the bad one (failed, counted as run)"
    );
    for conversation in &conversations {
        let texts: Vec<String> = proactive(&app, conversation)
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(texts, ["ping"], "{conversation}");
    }
    let mut both_texts: Vec<String> = proactive(&app, &both_conv)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    both_texts.sort();
    assert_eq!(both_texts, ["ping", "pong"], "both programs, once each");
    let reopened: Vec<(String, String)> = sqlx::query(
        "SELECT c.id, m.text FROM conversation c JOIN message m ON m.conversation_id = c.id
         WHERE c.contact_id = (SELECT contact_id FROM conversation WHERE id = $1)
           AND c.status <> 'closed' AND m.direction = 'outbound'",
    )
    .bind(&closed)
    .fetch_all(app.store.pool())
    .await
    .expect("reopened")
    .iter()
    .map(|r| {
        (
            r.try_get("id").expect("id"),
            r.try_get("text").expect("text"),
        )
    })
    .collect();
    assert_eq!(reopened.len(), 1, "{reopened:?}");
    assert_ne!(reopened[0].0, closed);
    assert_eq!(reopened[0].1, "ping");
    assert!(proactive(&app, &bad_conv).await.is_empty());
    let row = sqlx::query(
        "SELECT f.status, f.attempts, f.reason, e.step FROM fire f JOIN enrollment e ON e.id = f.enrollment_id
         WHERE e.program_id = $1 AND f.kind = 'step'",
    )
    .bind(&boom)
    .fetch_one(app.store.pool())
    .await
    .expect("the bad fire");
    let (status, attempts, reason, step): (String, i64, Option<String>, String) = (
        row.try_get("status").expect("status"),
        row.try_get("attempts").expect("attempts"),
        row.try_get("reason").expect("reason"),
        row.try_get("step").expect("step"),
    );
    assert_eq!(
        (status.as_str(), attempts, step.as_str()),
        ("pending", 1, "w")
    );
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("boom refused")),
        "{reason:?}"
    );
    // The store accepts it again: the retry sends it, once; nothing else twice.
    let allow = match app.store.backend() {
        switchboard::store::Backend::Sqlite => "DROP TRIGGER boom",
        switchboard::store::Backend::Postgres => "DROP TRIGGER boom ON message",
    };
    sqlx::query(allow)
        .execute(app.store.pool())
        .await
        .expect("drop trigger");
    run_until(&app, t0 + 3 * 3_600_000).await;
    let texts: Vec<String> = proactive(&app, &bad_conv)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(texts, ["boom"]);
    let pings: i64 = sqlx::query("SELECT COUNT(*) AS n FROM message WHERE text = 'ping'")
        .fetch_one(app.store.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert_eq!(pings, 21);
    app.stop().await;
}

both_backends!(
    an_ask_with_buttons_on_telegram,
    a_keyword_answer_on_whatsapp,
    whatsapp_outside_the_window_sends_the_template_or_skips_visibly,
    generate_without_a_model_sends_the_fallback,
    a_week_at_eight_in_each_zone,
    quiet_hours_and_the_daily_cap_defer,
    asks_match_reprompt_time_out_and_replies_cancel_nudges,
    stop_on_another_channel_cancels_everything,
    due_fires_run_exactly_once_under_concurrent_engines,
    one_bad_fire_fails_alone_in_its_batch,
    fires_survive_a_restart,
    preview_marks_shifts_and_dst,
    join_and_progress_from_the_chat,
    invalid_programs_name_their_errors,
    recurring_checkins_keep_the_local_hour,
    nudge_lift_compares_nudged_and_held_back_episodes,
    events_start_programs_and_end_waits,
);
