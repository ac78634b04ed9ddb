//! The proactive engine in the real binary: `kill -9` while a thousand fires are due, and two
//! gateway processes sharing one PostgreSQL database. Each contact gets its message exactly once,
//! counted at the receiving end.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::gateway::Gateway;
use common::{Backend, CallbackReceiver, Mode, TestDb, eventually};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

both_backends!(killed_while_fires_are_due_each_is_sent_exactly_once_after_restart);

fn admin_key(db: &TestDb) -> String {
    let out = Command::new(BIN)
        .args(["tenant", "create", "acme", "--json"])
        .env("SWITCHBOARD_DATABASE_URL", &db.url)
        .env("SWITCHBOARD_DATA_DIR", db.dir.path())
        .output()
        .expect("tenant create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant: Value = serde_json::from_slice(&out.stdout).expect("json");
    tenant["admin_key"].as_str().expect("key").to_owned()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Value,
) -> Value {
    let res = http
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// A tenant with no quiet hours and no cap to speak of, its `api` channel pointed at `receiver`,
/// and a published program that waits `wait` and then says "ping". Returns (channel, program).
async fn setup(
    gateway: &Gateway,
    key: &str,
    receiver: &CallbackReceiver,
    wait: &str,
) -> (String, String) {
    let http = reqwest::Client::new();
    let base = &gateway.base;
    call(
        &http,
        reqwest::Method::PUT,
        format!("{base}/v1/programs/settings"),
        key,
        json!({ "quiet_hours": null, "max_proactive_per_day": 1000 }),
    )
    .await;
    let channel = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/channels"),
        key,
        json!({ "kind": "api", "config": { "callback_url": receiver.url } }),
    )
    .await;
    let channel = channel["channel_id"].as_str().expect("channel").to_owned();
    let program = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/programs"),
        key,
        json!({ "name": "Ping", "channels": ["api"], "steps": [
            { "id": "w", "type": "wait", "for": wait },
            { "id": "ping", "type": "message", "text": "ping" } ] }),
    )
    .await;
    let program = program["id"].as_str().expect("program").to_owned();
    call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/programs/{program}/publish"),
        key,
        json!({}),
    )
    .await;
    (channel, program)
}

async fn enroll_many(
    gateway: &Gateway,
    key: &str,
    channel: &str,
    program: &str,
    from: usize,
    n: usize,
) {
    let http = reqwest::Client::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
        let contacts: Vec<Value> = chunk
            .iter()
            .map(|i| json!({ "channel_id": channel, "external_id": format!("c{i}") }))
            .collect();
        let body = call(
            &http,
            reqwest::Method::POST,
            format!("{}/v1/programs/{program}/enrollments", gateway.base),
            key,
            json!({ "contacts": contacts }),
        )
        .await;
        let made = body["enrollments"].as_array().expect("enrollments");
        assert!(
            made.iter().all(|e| e["enrollment_id"].is_string()),
            "{body}"
        );
    }
}

/// Pings accepted by the receiver, by message (idempotency key) and by conversation.
fn pings(receiver: &CallbackReceiver) -> (usize, HashMap<String, usize>) {
    let mut keys = std::collections::HashSet::new();
    let mut per_conversation: HashMap<String, usize> = HashMap::new();
    for r in receiver.accepted() {
        if r.body["text"] != "ping" || !keys.insert(r.idempotency_key.clone()) {
            continue;
        }
        let conversation = r.body["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *per_conversation.entry(conversation).or_default() += 1;
    }
    (keys.len(), per_conversation)
}

async fn killed_while_fires_are_due_each_is_sent_exactly_once_after_restart(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let key = admin_key(&db);
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    let mut gateway = Gateway::start(&db).await;
    let (channel, program) = setup(&gateway, &key, &receiver, "4s").await;
    enroll_many(&gateway, &key, &channel, &program, 0, 1000).await;
    // The thousand fires fall due together; kill the process while it works through them.
    eventually("the first pings", Duration::from_secs(60), || async {
        (pings(&receiver).0 >= 1).then_some(())
    })
    .await;
    gateway.child.kill().expect("kill -9");
    let _ = gateway.child.wait();
    let before = pings(&receiver).0;
    let _gateway = Gateway::start(&db).await;
    let (sent, per_conversation) = eventually("all pings", Duration::from_secs(120), || async {
        let p = pings(&receiver);
        (p.0 >= 1000).then_some(p)
    })
    .await;
    // Longer than the outbox lease: a duplicate would have come by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent_after, _) = pings(&receiver);
    assert_eq!(sent, 1000);
    assert_eq!(sent_after, 1000, "no message was made twice");
    assert_eq!(per_conversation.len(), 1000);
    assert!(
        per_conversation.values().all(|&n| n == 1),
        "one ping per contact"
    );
    eprintln!(
        "pings before the kill: {before}; after the restart: {}",
        1000 - before
    );
}

/// Two gateways on one PostgreSQL database, 5,000 fires due at once: each is sent exactly once,
/// and both processes sent some (`FOR UPDATE SKIP LOCKED` shares the work).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_the_fires_on_postgres() {
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let key = admin_key(&db);
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    let second_dir = tempfile::tempdir().expect("dir");
    let a = Gateway::start(&db).await;
    let b = Gateway::start_with(&db, second_dir.path(), &[]).await;
    let (channel, program) = setup(&a, &key, &receiver, "20s").await;
    // Enrol through both, so the work starts on both sides too.
    enroll_many(&a, &key, &channel, &program, 0, 2500).await;
    enroll_many(&b, &key, &channel, &program, 2500, 2500).await;
    let (sent, per_conversation) = eventually("5000 pings", Duration::from_secs(240), || async {
        let p = pings(&receiver);
        (p.0 >= 5000).then_some(p)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sent, 5000);
    assert_eq!(pings(&receiver).0, 5000, "no message was made twice");
    assert_eq!(per_conversation.len(), 5000);
    assert!(per_conversation.values().all(|&n| n == 1));
    let http = reqwest::Client::new();
    for (name, g) in [("first", &a), ("second", &b)] {
        let text = http
            .get(format!("{}/metrics", g.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let fired = common::metric_value(&text, "switchboard_fires_total", &[("outcome", "sent")]);
        assert!(fired > 0.0, "the {name} process ran fires: {fired}");
    }
}
