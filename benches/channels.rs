//! Channel webhook benchmark: provider webhook → stored → answered → the provider's send API
//! received the reply, for Switchboard and for a popular bot library doing the same job, in the
//! same run, against the same local provider stand-in.
//!
//! - Telegram: Switchboard's Telegram webhook vs grammY (`benches/peers/grammy`, webhook mode,
//!   `apiRoot` pointed at the stand-in).
//! - WhatsApp: Switchboard's WhatsApp webhook (signed) vs pywa (`benches/peers/pywa`, FastAPI +
//!   uvicorn, Graph API base pointed at the stand-in).
//!
//! Both sides answer every text with `echo: <text>`. Switchboard runs with persistence on (SQLite,
//! `synchronous=FULL`: every update is durably stored before its 200, every reply goes through the
//! durable outbox); the peers keep nothing. Pacing is off on our side: the stand-in has no rate
//! limits and the peers do not pace. Our read receipts and typing actions stay on (real work the
//! peers do not do).
//!
//! `cargo bench --bench channels`. Peers are skipped with a notice when not installed (see
//! docs/BENCHMARKS.md). Knobs: `BENCH_MESSAGES` (default 4000), `BENCH_CLIENTS` (default 32
//! concurrent connections), `BENCH_CHATS` (default 512).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{env_or, ms, percentile};

use async_trait::async_trait;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Responder, Turn};
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::startup::Application;
use switchboard::store::Store;
use switchboard_channel::Secret;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "123456:BENCH-token";
const TG_SECRET: &str = "bench_secret";
const APP_SECRET: &str = "bench-app-secret";
const PHONE_ID: &str = "1122334455667";

/// Reply arrival time by message key (`m<n>`).
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

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

#[derive(Debug, Clone, Copy)]
enum Provider {
    Telegram,
    Whatsapp,
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    ack_p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_MESSAGES", 4000);
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let chats: usize = env_or("BENCH_CHATS", 512).max(clients);
    println!("channels bench: {messages} updates, {clients} connections, {chats} chats");
    println!(
        "{:<10} {:<22} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "provider", "who", "replies/s", "e2e p50", "e2e p99", "ack p99", "ratio"
    );
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for provider in [Provider::Telegram, Provider::Whatsapp] {
        let arrivals: Arrivals = Arc::default();
        let stand_in = start_stand_in(arrivals.clone()).await?;
        let ours =
            switchboard_run(provider, &stand_in, &arrivals, messages, clients, chats).await?;
        print_row(provider, "switchboard (sqlite)", &ours, None);
        let peer = match provider {
            Provider::Telegram => grammy(&root, &stand_in),
            Provider::Whatsapp => pywa(&root, &stand_in),
        };
        match peer {
            Some((name, command, env)) => {
                lock(&arrivals).clear();
                match peer_run(provider, command, env, &arrivals, messages, clients, chats).await {
                    Ok(theirs) => {
                        print_row(provider, name, &theirs, None);
                        println!(
                            "{:<10} {:<22} {:>54.2}x",
                            "",
                            "switchboard / peer",
                            ours.rate / theirs.rate
                        );
                    }
                    Err(e) => println!("{provider:?}: {name} failed: {e:#}"),
                }
            }
            None => println!("{provider:?}: peer not installed (see docs/BENCHMARKS.md); skipped"),
        }
    }
    Ok(())
}

fn print_row(provider: Provider, who: &str, f: &Figures, ratio: Option<f64>) {
    println!(
        "{:<10} {:<22} {:>10.0} {:>10} {:>10} {:>10} {:>8}",
        format!("{provider:?}").to_lowercase(),
        who,
        f.rate,
        ms(f.p50),
        ms(f.p99),
        ms(f.ack_p99),
        ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stand-in for both providers: the Bot API (`/bot<token>/<method>`) and the Graph API
/// (`/<version>/<phone>/messages`). Records when each `echo: m<n>` reply arrives.
async fn start_stand_in(arrivals: Arrivals) -> anyhow::Result<String> {
    async fn bot_api(
        State(arrivals): State<Arrivals>,
        Path((_bot, method)): Path<(String, String)>,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        let at = Instant::now();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let method = method.to_ascii_lowercase();
        if method == "getme" {
            return axum::Json(json!({ "ok": true, "result": {
                "id": 123456, "is_bot": true, "first_name": "Bench", "username": "BenchBot",
                "can_join_groups": true, "can_read_all_group_messages": false,
                "supports_inline_queries": false, "can_connect_to_business": false,
                "has_main_web_app": false } }));
        }
        if method != "sendmessage" {
            return axum::Json(json!({ "ok": true, "result": true }));
        }
        let text = body["text"].as_str().unwrap_or_default();
        if let Some(key) = text.strip_prefix("echo: ") {
            lock(&arrivals).entry(key.to_owned()).or_insert(at);
        }
        axum::Json(json!({ "ok": true, "result": {
            "message_id": 1, "date": 1_700_000_000,
            "chat": { "id": body["chat_id"], "type": "private", "first_name": "A" },
            "from": { "id": 123456, "is_bot": true, "first_name": "Bench" },
            "text": text } }))
    }
    async fn graph(
        State(arrivals): State<Arrivals>,
        Path((_version, _phone)): Path<(String, String)>,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        let at = Instant::now();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if body["status"] == "read" {
            return axum::Json(json!({ "success": true }));
        }
        let text = body["text"]["body"].as_str().unwrap_or_default();
        if let Some(key) = text.strip_prefix("echo: ") {
            lock(&arrivals).entry(key.to_owned()).or_insert(at);
        }
        axum::Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
            "messages": [{ "id": format!("wamid.{}", uuid_like()) }] }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/{bot}/{method}", axum::routing::post(bot_api))
        .route("/{version}/{phone}/messages", axum::routing::post(graph))
        .with_state(arrivals);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

fn uuid_like() -> String {
    switchboard::store::new_id()
}

/// The provider's webhook request for message `n` from `chat`: (body, headers).
fn update(provider: Provider, n: usize, chat: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    match provider {
        Provider::Telegram => {
            let chat = 1_000_000 + chat as i64;
            let body = json!({ "update_id": n, "message": { "message_id": n, "date": 1_700_000_000,
                "chat": { "id": chat, "type": "private", "first_name": "A" },
                "from": { "id": chat, "is_bot": false, "first_name": "A" },
                "text": format!("m{n}") } });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            (
                body,
                vec![("X-Telegram-Bot-Api-Secret-Token", TG_SECRET.to_owned())],
            )
        }
        Provider::Whatsapp => {
            let wa_id = format!("1555{:07}", chat);
            let now = (switchboard::store::now_ms() / 1000).to_string();
            let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1",
                "changes": [{ "field": "messages", "value": { "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550000000", "phone_number_id": PHONE_ID },
                    "contacts": [{ "profile": { "name": "A" }, "wa_id": wa_id,
                        "user_id": format!("US.{wa_id}") }],
                    "messages": [{ "from": wa_id, "id": format!("wamid.bench{n}"), "timestamp": now,
                        "type": "text", "text": { "body": format!("m{n}") } }] } }] }] });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let signature = switchboard_channel_api::outbound::sign(APP_SECRET, &body);
            (body, vec![("X-Hub-Signature-256", signature)])
        }
    }
}

/// 32 connections post `messages` updates round-robin over their chats (each chat's updates in
/// order, each after the previous was acknowledged), then wait for every reply.
async fn load(
    provider: Provider,
    url: &str,
    arrivals: &Arrivals,
    messages: usize,
    clients: usize,
    chats: usize,
) -> anyhow::Result<Figures> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let per_client = messages / clients;
    let chats_per_client = chats / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, sent) = (http.clone(), url.to_owned(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let n = 1 + c * per_client + i;
                let chat = c * chats_per_client + i % chats_per_client.max(1);
                let (body, headers) = update(provider, n, chat);
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                let t0 = Instant::now();
                lock(&sent).insert(format!("m{n}"), t0);
                let res = req.send().await?;
                anyhow::ensure!(
                    res.status().is_success(),
                    "webhook answered {}",
                    res.status()
                );
                acks.push(t0.elapsed());
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    let expected = per_client * clients;
    let deadline = Instant::now() + Duration::from_secs(180);
    while lock(arrivals).len() < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {expected} replies arrived",
            lock(arrivals).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = lock(arrivals).clone();
    let sent = lock(&sent).clone();
    let last = arrivals.values().max().copied().unwrap_or(started);
    let mut e2e: Vec<Duration> = sent
        .iter()
        .filter_map(|(k, t0)| arrivals.get(k).map(|a| a.saturating_duration_since(*t0)))
        .collect();
    Ok(Figures {
        rate: expected as f64 / (last - started).as_secs_f64(),
        p50: percentile(&mut e2e, 0.50),
        p99: percentile(&mut e2e, 0.99),
        ack_p99: percentile(&mut acks, 0.99),
    })
}

async fn switchboard_run(
    provider: Provider,
    stand_in: &str,
    arrivals: &Arrivals,
    messages: usize,
    clients: usize,
    chats: usize,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(Secret::new(url)),
        // The stand-ins listen on loopback: the operator's exception.
        egress_allow: vec!["127.0.0.0/8".into(), "localhost".into()],
        ..Config::default()
    };
    config.outbox.poll_ms = 100;
    config.outbox.pacing = false;
    config.database_max_connections = 16;
    let store = Store::connect(&config.database_url(), 4).await?;
    store.migrate().await?;
    let tenant = store
        .create_tenant(
            &TenantSlug::parse("bench").map_err(anyhow::Error::msg)?,
            "Bench",
        )
        .await?;
    store.close().await;
    let app = Application::build_with_responder(config, Arc::new(Echo)).await?;
    let base = format!("http://{}", app.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let connect = match provider {
        Provider::Telegram => json!({ "kind": "telegram", "config": {
            "bot_token": TOKEN, "webhook_secret": TG_SECRET, "api_url": stand_in } }),
        Provider::Whatsapp => json!({ "kind": "whatsapp", "config": {
            "phone_number_id": PHONE_ID, "access_token": "EAAbench", "app_secret": APP_SECRET,
            "verify_token": "v", "graph_url": format!("{stand_in}/v21.0") } }),
    };
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/channels"))
        .bearer_auth(&tenant.admin_key)
        .json(&connect)
        .send()
        .await?;
    anyhow::ensure!(res.status().as_u16() == 201, "connect: {}", res.status());
    let connected: Value = res.json().await?;
    let kind = match provider {
        Provider::Telegram => "telegram",
        Provider::Whatsapp => "whatsapp",
    };
    let webhook = format!(
        "{base}/webhooks/{kind}/{}",
        connected["channel_id"].as_str().unwrap_or_default()
    );
    let figures = load(provider, &webhook, arrivals, messages, clients, chats).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    figures
}

type PeerCommand = (&'static str, Vec<String>, Vec<(String, String)>);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

/// grammY in webhook mode, if `npm install` ran in benches/peers/grammy.
fn grammy(root: &std::path::Path, stand_in: &str) -> Option<PeerCommand> {
    let dir = root.join("benches/peers/grammy");
    if !dir.join("node_modules/grammy").exists() {
        return None;
    }
    let port = free_port().to_string();
    Some((
        "grammY (no storage)",
        vec!["node".into(), dir.join("bot.mjs").display().to_string()],
        vec![
            ("BOT_TOKEN".into(), TOKEN.into()),
            ("API_ROOT".into(), stand_in.into()),
            ("PORT".into(), port.clone()),
            ("SECRET".into(), TG_SECRET.into()),
            ("PEER_URL".into(), format!("http://127.0.0.1:{port}/")),
        ],
    ))
}

/// pywa on FastAPI + uvicorn, if its venv exists in benches/peers/pywa.
fn pywa(root: &std::path::Path, stand_in: &str) -> Option<PeerCommand> {
    let dir = root.join("benches/peers/pywa");
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        return None;
    }
    let port = free_port().to_string();
    Some((
        "pywa (no storage)",
        vec![
            python.display().to_string(),
            "-m".into(),
            "uvicorn".into(),
            "--app-dir".into(),
            dir.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.clone(),
            "--log-level".into(),
            "warning".into(),
            "app:app".into(),
        ],
        vec![
            ("PHONE_ID".into(), PHONE_ID.into()),
            ("ACCESS_TOKEN".into(), "EAAbench".into()),
            ("VERIFY_TOKEN".into(), "v".into()),
            ("APP_SECRET".into(), APP_SECRET.into()),
            ("GRAPH_URL".into(), stand_in.into()),
            ("PORT".into(), port.clone()),
            ("PEER_URL".into(), format!("http://127.0.0.1:{port}/")),
        ],
    ))
}

async fn peer_run(
    provider: Provider,
    command: Vec<String>,
    env: Vec<(String, String)>,
    arrivals: &Arrivals,
    messages: usize,
    clients: usize,
    chats: usize,
) -> anyhow::Result<Figures> {
    let url = env
        .iter()
        .find(|(k, _)| k == "PEER_URL")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let port = env
        .iter()
        .find(|(k, _)| k == "PORT")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
    }
    // Ready when it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the peer did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let figures = load(provider, &url, arrivals, messages, clients, chats).await;
    let _ = child.kill().await;
    figures
}
