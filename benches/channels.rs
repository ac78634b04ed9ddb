//! Channel webhooks the way a user compares bots: the released `switchboard serve` binary against
//! a popular bot library doing the same job, each pinned to the same core, alternated A/B/A/B in
//! one run, driven by the same load over loopback against the same provider stand-in.
//!
//! - Telegram: webhook → stored → answered → `sendMessage`, against grammY
//!   (`benches/peers/grammy`, webhook mode, `apiRoot` pointed at the stand-in).
//! - WhatsApp: signed webhook → stored → answered → Graph `messages`, against pywa
//!   (`benches/peers/pywa`, FastAPI + uvicorn, one worker).
//! - Widget: `BENCH_WIDGET_SOCKETS` visitors (default 1,000) on `/v1/widget/ws`, each sending its
//!   next message when the bot answered the previous one (no peer speaks our protocol).
//!
//! Both sides answer every text with `echo: <text>`. Switchboard runs its real path: a tenant made
//! with `switchboard tenant create`, its `no_answer` template set to `echo: {{ question }}` (no
//! model, no knowledge), pacing off (the stand-in has no limits and the peers do not pace), its
//! typing action and read receipts on (work the peers do not do), SQLite with `synchronous=FULL`
//! (every update durably stored before its 200, every reply through the durable outbox) or, with
//! `SWITCHBOARD_BENCH_POSTGRES_URL`, a fresh PostgreSQL database per run. The peers keep nothing.
//!
//! Cores: the gateway or the peer on `BENCH_CPUS` (default `1`, via `taskset`); this process —
//! the load (`BENCH_CLIENTS` keep-alive connections, default 32, each posting its next update
//! when the previous one was acknowledged) and the stand-in — on `BENCH_LOAD_CPUS` (default `0`).
//! Each run: `BENCH_WARMUP` seconds (default 3), then a `BENCH_SECONDS` window (default 10), then
//! the load stops and replies may drain for 5 s. Reported per run: acknowledgements/s and
//! replies/s inside the window, end-to-end latency (update posted → its reply at the stand-in) of
//! the updates posted inside the window, how many of those were never answered, CPU time and
//! context switches of the bot's process per reply, and its RSS at the end of the window; on
//! PostgreSQL also the database server's CPU time per reply (every `postgres` process).
//! `BENCH_ROUNDS` (default 2) alternations; `BENCH_PROVIDERS` (default `telegram,whatsapp`);
//! `BENCH_SOAK` seconds (default 60, 0 skips): one more Switchboard SQLite run under the same
//! load, RSS at 10 s and at the end. `BENCH_BASELINE=<path to an earlier switchboard binary>`
//! adds that build to every round (SQLite, and PostgreSQL too when it is set), for before/after
//! figures from one run.
//! `BENCH_GATEWAY_LOG=<RUST_LOG filter>` keeps each gateway's log beside its data directory
//! (`switchboard-gateway-<round>-<port>.log`) instead of dropping it.
//!
//! `cargo bench --bench channels` (one command; peers are skipped with a notice when not
//! installed, see docs/BENCHMARKS.md).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{env_or, percentile};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "123456:BENCH-token";
const TG_SECRET: &str = "bench_secret";
const APP_SECRET: &str = "bench-app-secret";
const PHONE_ID: &str = "1122334455667";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Provider {
    Telegram,
    Whatsapp,
    /// The web widget: `BENCH_WIDGET_SOCKETS` visitors (default 1,000) on WebSockets.
    Widget,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Telegram => "telegram",
            Provider::Whatsapp => "whatsapp",
            Provider::Widget => "widget",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Sqlite,
    Postgres,
    Peer,
    /// An earlier build of Switchboard (`BENCH_BASELINE`), on SQLite.
    Baseline,
    /// The same earlier build on PostgreSQL (with `SWITCHBOARD_BENCH_POSTGRES_URL`).
    BaselinePostgres,
}

struct Knobs {
    cpus: String,
    clients: usize,
    chats: usize,
    warmup: Duration,
    window: Duration,
    postgres: Option<String>,
    root: PathBuf,
    baseline: Option<PathBuf>,
    sockets: usize,
}

/// What one run measured.
#[derive(Clone)]
struct Figures {
    acks: f64,
    replies: f64,
    p50: Duration,
    p99: Duration,
    unanswered: usize,
    posted: usize,
    cpu_ms_per_reply: f64,
    /// PostgreSQL's server processes' CPU time per reply (0 on SQLite and for the peers).
    db_cpu_ms_per_reply: f64,
    switches_per_reply: f64,
    /// read/write system calls (files and sockets, `/proc/<pid>/io` `syscr + syscw`) per reply.
    io_calls_per_reply: f64,
    /// Bytes the process sent to storage (`write_bytes`: WAL frames, checkpoints), KB per reply.
    kb_written_per_reply: f64,
    rss_mb: f64,
    rss_early_mb: f64,
    /// Anonymous memory (heap), without the database file's mapped pages.
    anon_mb: f64,
    anon_early_mb: f64,
}

/// What the load and the stand-in record during a run.
#[derive(Default)]
struct Shared {
    next: AtomicU64,
    stop: AtomicBool,
    sent: Mutex<HashMap<u64, Instant>>,
    acks: Mutex<Vec<Instant>>,
    replies: Mutex<HashMap<u64, Instant>>,
    provider_ids: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn main() -> anyhow::Result<()> {
    let load_cpus = std::env::var("BENCH_LOAD_CPUS").unwrap_or_else(|_| "0".into());
    pin_self(&load_cpus)?;
    let clients = env_or("BENCH_CLIENTS", 32);
    let knobs = Knobs {
        cpus: std::env::var("BENCH_CPUS").unwrap_or_else(|_| "1".into()),
        clients,
        chats: env_or("BENCH_CHATS", 512).max(clients),
        warmup: Duration::from_secs(env_or("BENCH_WARMUP", 3) as u64),
        window: Duration::from_secs(env_or("BENCH_SECONDS", 10) as u64),
        postgres: std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL")
            .ok()
            .filter(|v| !v.is_empty()),
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        baseline: std::env::var_os("BENCH_BASELINE").map(PathBuf::from),
        sockets: env_or("BENCH_WIDGET_SOCKETS", 1000),
    };
    let rounds = env_or("BENCH_ROUNDS", 2);
    let soak = env_or("BENCH_SOAK", 60) as u64;
    let providers =
        std::env::var("BENCH_PROVIDERS").unwrap_or_else(|_| "telegram,whatsapp,widget".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "channels bench: bots on cores {}, load + stand-in on {load_cpus}; {} connections over {} chats; \
             {} s warm-up, {} s window, {rounds} rounds; binary {BIN}",
            knobs.cpus,
            knobs.clients,
            knobs.chats,
            knobs.warmup.as_secs(),
            knobs.window.as_secs()
        );
        header();
        for provider in [Provider::Telegram, Provider::Whatsapp, Provider::Widget] {
            if !providers.contains(provider.name()) {
                continue;
            }
            let peer = peer_command(provider, &knobs.root);
            if peer.is_none() && provider != Provider::Widget {
                println!("{}: peer not installed (see docs/BENCHMARKS.md); ours alone", provider.name());
            }
            let mut all: Vec<(Who, Figures)> = Vec::new();
            for round in 1..=rounds {
                let mut order = vec![Who::Sqlite];
                if peer.is_some() {
                    order.push(Who::Peer);
                }
                if knobs.postgres.is_some() {
                    order.push(Who::Postgres);
                }
                if knobs.baseline.is_some() {
                    order.push(Who::Baseline);
                    if knobs.postgres.is_some() {
                        order.push(Who::BaselinePostgres);
                    }
                }
                for who in order {
                    let figures = match who {
                        Who::Peer => {
                            let Some((name, command)) = &peer else { continue };
                            let figures = run_peer(provider, command, &knobs, None).await;
                            (name.to_string(), figures)
                        }
                        _ => (
                            match who {
                                Who::Sqlite => "switchboard (sqlite)",
                                Who::Postgres => "switchboard (postgres)",
                                Who::BaselinePostgres => "baseline (postgres)",
                                _ => "baseline (sqlite)",
                            }
                            .to_string(),
                            run_switchboard(provider, who, &knobs, round, None).await,
                        ),
                    };
                    match figures.1 {
                        Ok(f) => {
                            row(provider, &figures.0, round, &f);
                            all.push((who, f));
                        }
                        Err(e) => println!("{} {} round {round}: failed: {e:#}", provider.name(), figures.0),
                    }
                }
            }
            summary(provider, &all);
        }
        if soak > 0 && providers.contains("telegram") {
            let soak = Duration::from_secs(soak);
            match run_switchboard(Provider::Telegram, Who::Sqlite, &Knobs { window: soak, ..knobs_clone(&knobs) }, 0, Some(Duration::from_secs(10))).await {
                Ok(f) => println!(
                    "soak: switchboard (sqlite), telegram, {} s under load: RSS {:.1} MB after 10 s, {:.1} MB at the end ({:.2}x); \
                     of which anonymous {:.1} MB → {:.1} MB ({:.2}x), the rest the database file's mapped pages; {:.0} replies/s",
                    soak.as_secs(),
                    f.rss_early_mb,
                    f.rss_mb,
                    f.rss_mb / f.rss_early_mb.max(0.1),
                    f.anon_early_mb,
                    f.anon_mb,
                    f.anon_mb / f.anon_early_mb.max(0.1),
                    f.replies
                ),
                Err(e) => println!("soak failed: {e:#}"),
            }
        }
        anyhow::Ok(())
    })
}

fn knobs_clone(k: &Knobs) -> Knobs {
    Knobs {
        cpus: k.cpus.clone(),
        clients: k.clients,
        chats: k.chats,
        warmup: k.warmup,
        window: k.window,
        postgres: k.postgres.clone(),
        root: k.root.clone(),
        baseline: k.baseline.clone(),
        sockets: k.sockets,
    }
}

fn header() {
    println!(
        "{:<9} {:<22} {:>2} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8} {:>7} {:>7} {:>7}",
        "provider",
        "who",
        "#",
        "acks/s",
        "replies/s",
        "e2e p50",
        "e2e p99",
        "unanswered",
        "cpu/reply",
        "ctx/rep",
        "io/rep",
        "KBw/rep",
        "RSS MB"
    );
}

fn row(provider: Provider, who: &str, round: usize, f: &Figures) {
    println!(
        "{:<9} {:<22} {:>2} {:>8.0} {:>9.0} {:>9} {:>9} {:>10} {:>9} {:>8.1} {:>7.1} {:>7.1} {:>7.1}",
        provider.name(),
        who,
        round,
        f.acks,
        f.replies,
        format!("{:.1} ms", f.p50.as_secs_f64() * 1e3),
        format!("{:.1} ms", f.p99.as_secs_f64() * 1e3),
        format!("{}/{}", f.unanswered, f.posted),
        format!("{:.3} ms", f.cpu_ms_per_reply),
        f.switches_per_reply,
        f.io_calls_per_reply,
        f.kb_written_per_reply,
        f.rss_mb
    );
    if who.contains("postgres") {
        println!(
            "{:<9} {:<22}    + the PostgreSQL server's CPU: {:.3} ms per reply",
            "", "", f.db_cpu_ms_per_reply
        );
    }
}

fn summary(provider: Provider, all: &[(Who, Figures)]) {
    let median = |who: Who| {
        let mut v: Vec<f64> = all
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, f)| f.replies)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let peer = median(Who::Peer);
    for (who, name) in [
        (Who::Sqlite, "switchboard (sqlite)"),
        (Who::Postgres, "switchboard (postgres)"),
        (Who::Baseline, "baseline (sqlite)"),
        (Who::BaselinePostgres, "baseline (postgres)"),
    ] {
        if let (Some(ours), Some(theirs)) = (median(who), peer) {
            println!(
                "{:<9} {name} / peer, median replies/s: {ours:.0} / {theirs:.0} = {:.2}x",
                provider.name(),
                ours / theirs
            );
        }
    }
}

/// Pins this process (and the threads it starts) to `cpus` (a `taskset -c` list such as `0` or `0,1`).
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for indices below
    // CPU_SETSIZE, which is checked; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for part in cpus.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
            for cpu in a..=b {
                anyhow::ensure!(cpu < libc::CPU_SETSIZE as usize, "cpu {cpu} out of range");
                libc::CPU_SET(cpu, &mut set);
            }
        }
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity({cpus}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

/// The number in the first `echo: m<n>` of a reply body.
fn echo_key(body: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"echo: m";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The Bot API (`/bot<token>/<method>`) and the Graph API (`/<version>/<phone>/messages`), as
/// documented, recording when each `echo: m<n>` reply arrives.
async fn stand_in(shared: Arc<Shared>) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, shared.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((base, task))
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Bot API method names are case-insensitive (teloxide sends `SendMessage`).
    let path = req.uri().path().to_ascii_lowercase();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let at = Instant::now();
    if let Some(n) = echo_key(&body) {
        lock(&shared.replies).entry(n).or_insert(at);
    }
    let id = shared.provider_ids.fetch_add(1, Ordering::Relaxed) + 1;
    let reply = if path.ends_with("/getme") {
        json!({ "ok": true, "result": {
            "id": 123456, "is_bot": true, "first_name": "Bench", "username": "BenchBot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false } })
    } else if path.ends_with("/sendmessage") {
        let chat = serde_json::from_slice::<Value>(&body)
            .ok()
            .map(|v| v["chat_id"].clone())
            .unwrap_or(Value::Null);
        json!({ "ok": true, "result": {
            "message_id": id, "date": 1_700_000_000,
            "chat": { "id": chat, "type": "private", "first_name": "A" },
            "from": { "id": 123456, "is_bot": true, "first_name": "Bench" },
            "text": "" } })
    } else if path.ends_with("/messages") {
        if body.windows(15).any(|w| w == b"\"status\":\"read\"") {
            json!({ "success": true })
        } else {
            // As the Graph API answers: the recipient echoed back (pywa reads `wa_id`).
            let to = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["to"].as_str().map(str::to_owned))
                .unwrap_or_default();
            json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": to, "wa_id": to }],
                "messages": [{ "id": format!("wamid.bench{id}") }] })
        }
    } else {
        json!({ "ok": true, "result": true })
    };
    let mut res = Response::new(Full::new(Bytes::from(reply.to_string())));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// The provider's webhook request for message `n` from `chat`: (body, headers).
fn update(provider: Provider, n: u64, chat: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    match provider {
        // Visitors speak the widget protocol (`chat`), not webhooks.
        Provider::Widget => (Vec::new(), Vec::new()),
        Provider::Telegram => {
            let chat = 1_000_000 + chat as i64;
            let body = json!({ "update_id": n, "message": { "message_id": n, "date": 1_700_000_000,
                "chat": { "id": chat, "type": "private", "first_name": "A" },
                "from": { "id": chat, "is_bot": false, "first_name": "A" },
                "text": format!("m{n}") } });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            (
                body,
                vec![("x-telegram-bot-api-secret-token", TG_SECRET.to_owned())],
            )
        }
        Provider::Whatsapp => {
            let wa_id = format!("1555{chat:07}");
            let now = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0))
            .to_string();
            let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1",
                "changes": [{ "field": "messages", "value": { "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550000000", "phone_number_id": PHONE_ID },
                    "contacts": [{ "profile": { "name": "A" }, "wa_id": wa_id,
                        "user_id": format!("US.{wa_id}") }],
                    "messages": [{ "from": wa_id, "id": format!("wamid.bench{n}"), "timestamp": now,
                        "type": "text", "text": { "body": format!("m{n}") } }] } }] }] });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let signature = switchboard_channel_api::outbound::sign(APP_SECRET, &body);
            (body, vec![("x-hub-signature-256", signature)])
        }
    }
}

/// One keep-alive connection posting updates for its own chats, each after the previous one was
/// acknowledged, until `stop`.
async fn connection(
    provider: Provider,
    addr: SocketAddr,
    path: String,
    shared: Arc<Shared>,
    chats: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = addr.to_string();
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let n = shared.next.fetch_add(1, Ordering::Relaxed) + 1;
        let chat = chats.start + i % chats.len().max(1);
        i += 1;
        let (body, headers) = update(provider, n, chat);
        let mut req = Request::post(path.as_str())
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let t0 = Instant::now();
        lock(&shared.sent).insert(n, t0);
        let res = sender.send_request(req).await?;
        let status = res.status();
        res.into_body().collect().await?;
        anyhow::ensure!(status.is_success(), "webhook answered {status}");
        lock(&shared.acks).push(Instant::now());
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One widget visitor: connect, `hello`, `welcome`.
async fn visitor(url: &str, origin: &str) -> anyhow::Result<Ws> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("Origin", origin.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(Message::text(r#"{"type":"hello","v":1}"#)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no welcome: {other:?}"),
        }
    }
}

/// A visitor's messages, each sent when the bot answered the previous one; the `sent` frame is
/// the acknowledgement, the bot's `message` frame with `echo: m<n>` the reply. Every `message`
/// frame is acknowledged (`ack`) as the widget's script does.
async fn chat(mut ws: Ws, shared: Arc<Shared>) -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    while !shared.stop.load(Ordering::Relaxed) {
        let n = shared.next.fetch_add(1, Ordering::Relaxed) + 1;
        let frame =
            json!({ "type": "send", "client_id": format!("c{n}"), "text": format!("m{n}") });
        lock(&shared.sent).insert(n, Instant::now());
        ws.send(Message::text(frame.to_string())).await?;
        loop {
            let frame = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(other) => anyhow::bail!("socket ended: {other:?}"),
                Err(_) if shared.stop.load(Ordering::Relaxed) => return Ok(()),
                Err(_) => anyhow::bail!("no answer to m{n} within 10 s"),
            };
            let at = Instant::now();
            if frame.contains("\"type\":\"sent\"") {
                lock(&shared.acks).push(at);
            } else if frame.contains("\"type\":\"message\"") {
                // Acknowledged as `widget/widget.js` does every message frame it shows (the
                // visitor's own message and the reply): the gateway records the reply delivered.
                let seq = serde_json::from_str::<Value>(frame.as_str())
                    .ok()
                    .and_then(|v| v["seq"].as_i64());
                if let Some(seq) = seq {
                    let ack = json!({ "type": "ack", "seq": seq });
                    ws.send(Message::text(ack.to_string())).await?;
                }
                if echo_key(frame.as_bytes()) == Some(n) {
                    lock(&shared.replies).entry(n).or_insert(at);
                    break;
                }
            } else if frame.contains("\"type\":\"error\"") {
                anyhow::bail!("refused: {frame}");
            }
        }
    }
    Ok(())
}

/// CPU time (ms) of every `postgres` process so far: the database's share of a PostgreSQL run
/// (other clients of the same server count too; the machine runs nothing else meanwhile).
fn postgres_cpu_ms() -> f64 {
    let mut total = 0.0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            total += usage_ms(pid);
        }
    }
    total
}

/// CPU time (ms) of `pid` so far (all its threads).
fn usage_ms(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// CPU time (ms) and context switches (all threads) of `pid` so far.
fn usage(pid: u32) -> (f64, u64) {
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                for line in status.lines() {
                    if let Some(v) = line
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                    {
                        switches += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    (usage_ms(pid), switches)
}

/// `pid`'s read and write system calls so far (`syscr + syscw`: files and sockets alike) and
/// the bytes it sent to storage (`write_bytes`), from `/proc/<pid>/io`. Counts, not times:
/// the same work gives the same figures however busy the machine is.
fn io_counters(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("syscr:") + field("syscw:"), field("write_bytes:"))
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`), in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS")
}

async fn wait_listening(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited before listening: {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "not listening after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Drives the HTTP load at `url` for warm-up + window, then lets replies drain; `pid` is measured.
async fn measure(
    provider: Provider,
    url: &str,
    pid: u32,
    shared: Arc<Shared>,
    knobs: &Knobs,
    early: Option<Duration>,
) -> anyhow::Result<Figures> {
    let parsed: hyper::Uri = url.parse()?;
    let authority = parsed.authority().context("url without host")?.as_str();
    let addr: SocketAddr = authority.parse()?;
    let path = parsed.path().to_owned();
    let per = knobs.chats / knobs.clients;
    let mut tasks = Vec::new();
    for c in 0..knobs.clients {
        tasks.push(tokio::spawn(connection(
            provider,
            addr,
            path.clone(),
            shared.clone(),
            c * per..(c + 1) * per,
        )));
    }
    window(pid, shared, knobs, early, tasks).await
}

/// Warm-up, then the measured window, then the drain, over load `tasks` already started.
async fn window(
    pid: u32,
    shared: Arc<Shared>,
    knobs: &Knobs,
    early: Option<Duration>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<Figures> {
    tokio::time::sleep(knobs.warmup).await;
    let start = Instant::now();
    let (cpu0, sw0) = usage(pid);
    let (io0, wb0) = io_counters(pid);
    let db0 = postgres_cpu_ms();
    let (mut rss_early, mut anon_early) = (0.0, 0.0);
    if let Some(early) = early {
        tokio::time::sleep(early).await;
        rss_early = rss_mb(pid);
        anon_early = status_mb(pid, "RssAnon");
        tokio::time::sleep(knobs.window.saturating_sub(early)).await;
    } else {
        tokio::time::sleep(knobs.window).await;
    }
    let end = Instant::now();
    let (cpu1, sw1) = usage(pid);
    let (io1, wb1) = io_counters(pid);
    let db1 = postgres_cpu_ms();
    let rss = rss_mb(pid);
    let anon = status_mb(pid, "RssAnon");
    shared.stop.store(true, Ordering::Relaxed);
    for mut t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), &mut t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => lock(&shared.errors).push(format!("{e:#}")),
            Ok(Err(e)) => lock(&shared.errors).push(e.to_string()),
            Err(_) => {
                t.abort();
                lock(&shared.errors).push("a load task did not stop within 10 s".into());
            }
        }
    }
    if let Some(e) = lock(&shared.errors).first() {
        anyhow::bail!("load: {e}");
    }
    // Drain: the updates posted in the window get 5 s more to be answered.
    let in_window: Vec<(u64, Instant)> = lock(&shared.sent)
        .iter()
        .filter(|(_, t)| **t >= start && **t < end)
        .map(|(n, t)| (*n, *t))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answered = {
            let replies = lock(&shared.replies);
            in_window.iter().all(|(n, _)| replies.contains_key(n))
        };
        if answered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replies = lock(&shared.replies);
    let secs = (end - start).as_secs_f64();
    let acks = lock(&shared.acks)
        .iter()
        .filter(|t| **t >= start && **t < end)
        .count();
    let answered_in_window = replies
        .values()
        .filter(|t| **t >= start && **t < end)
        .count();
    let mut e2e = Vec::with_capacity(in_window.len());
    let mut unanswered = 0;
    for (n, t0) in &in_window {
        match replies.get(n) {
            Some(at) => e2e.push(at.saturating_duration_since(*t0)),
            // Unanswered counts as the slowest: it weighs on the percentiles.
            None => {
                unanswered += 1;
                e2e.push(Duration::from_secs(3600));
            }
        }
    }
    let replied = answered_in_window.max(1) as f64;
    Ok(Figures {
        acks: acks as f64 / secs,
        replies: answered_in_window as f64 / secs,
        p50: percentile(&mut e2e, 0.50),
        p99: percentile(&mut e2e, 0.99),
        unanswered,
        posted: in_window.len(),
        cpu_ms_per_reply: (cpu1 - cpu0) / replied,
        db_cpu_ms_per_reply: (db1 - db0) / replied,
        switches_per_reply: (sw1 - sw0) as f64 / replied,
        io_calls_per_reply: io1.saturating_sub(io0) as f64 / replied,
        kb_written_per_reply: wb1.saturating_sub(wb0) as f64 / 1024.0 / replied,
        rss_mb: rss,
        rss_early_mb: rss_early,
        anon_mb: anon,
        anon_early_mb: anon_early,
    })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn switchboard_env(cmd: &mut Command, data: &Path, database: Option<&str>, listen: &str) {
    cmd.env("SWITCHBOARD_DATA_DIR", data)
        .env("SWITCHBOARD_LISTEN", listen)
        .env("SWITCHBOARD_EGRESS_ALLOW", "127.0.0.0/8")
        .env("SWITCHBOARD_OUTBOX_PACING", "false")
        .env("SWITCHBOARD_EMBED_MODEL", "none")
        .env("SWITCHBOARD_LLM_PROVIDER", "none")
        .env("SWITCHBOARD_WIDGET_MAX_SOCKETS_PER_IP", "10000000")
        .env("SWITCHBOARD_WIDGET_CONNECT_BURST_PER_IP", "10000000")
        // Every visitor comes from 127.0.0.1: the per-address budget must not be what is measured.
        .env("SWITCHBOARD_WIDGET_SEND_BURST", "10000000")
        // (`BENCH_GATEWAY_LOG`: see `run_switchboard`)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("SWITCHBOARD_CONFIG");
    match database {
        Some(url) => cmd.env("SWITCHBOARD_DATABASE_URL", url),
        None => cmd.env_remove("SWITCHBOARD_DATABASE_URL"),
    };
}

async fn run_switchboard(
    provider: Provider,
    who: Who,
    knobs: &Knobs,
    round: usize,
    early: Option<Duration>,
) -> anyhow::Result<Figures> {
    let data = tempfile::tempdir_in(
        std::env::var("BENCH_DATA_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )?;
    let database = match (who, &knobs.postgres) {
        (Who::Postgres | Who::BaselinePostgres, Some(admin)) => Some(
            support::fresh_postgres(
                admin,
                &format!(
                    "switchboard_bench_{}_{round}{}",
                    std::process::id(),
                    if who == Who::BaselinePostgres {
                        "_b"
                    } else {
                        ""
                    }
                ),
            )
            .await?,
        ),
        _ => None,
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = match (who, &knobs.baseline) {
        (Who::Baseline | Who::BaselinePostgres, Some(path)) => path.display().to_string(),
        _ => BIN.to_owned(),
    };
    let mut create = Command::new(&bin);
    create.args(["tenant", "create", "bench", "--json"]);
    switchboard_env(&mut create, data.path(), database.as_deref(), &listen);
    let out = create.output()?;
    anyhow::ensure!(
        out.status.success(),
        "tenant create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)?;
    let key = created["admin_key"]
        .as_str()
        .context("no admin_key")?
        .to_owned();

    let shared = Arc::new(Shared::default());
    let (stand_in_url, stand_in_task) = stand_in(shared.clone()).await?;
    let mut serve = Command::new("taskset");
    serve.args(["-c", &knobs.cpus, &bin, "serve"]);
    // `BENCH_GATEWAY_LOG=<filter>`: the gateway's log is kept beside its data directory
    // (`switchboard-gateway-<round>-<port>.log`), e.g. `warn,sqlx::query=debug` to count the
    // statements per reply.
    if std::env::var_os("BENCH_GATEWAY_LOG").is_some() {
        let log = std::fs::File::create(
            data.path()
                .with_file_name(format!("switchboard-gateway-{round}-{port}.log")),
        )?;
        serve.stdout(log.try_clone()?).stderr(log);
    } else {
        serve.stdout(Stdio::null()).stderr(Stdio::inherit());
    }
    switchboard_env(&mut serve, data.path(), database.as_deref(), &listen);
    let mut child = serve.spawn().context("taskset")?;
    wait_listening(port, &mut child).await?;
    let child = Killed(child);
    let pid = child.0.id();

    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let res = http
        .put(format!("{base}/v1/prompts/no_answer"))
        .bearer_auth(&key)
        .json(&json!({ "body": "echo: {{ question }}" }))
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "prompt: {}", res.status());
    if provider == Provider::Widget {
        let widget_key = created["widget_key"].as_str().context("no widget_key")?;
        let url = format!("ws://{listen}/v1/widget/ws?key={widget_key}");
        let origin = format!("http://{listen}");
        let mut sockets = Vec::with_capacity(knobs.sockets);
        for _ in 0..knobs.sockets {
            sockets.push(visitor(&url, &origin).await?);
        }
        let tasks = sockets
            .into_iter()
            .map(|ws| tokio::spawn(chat(ws, shared.clone())))
            .collect();
        let figures = window(pid, shared, knobs, early, tasks).await;
        drop(child);
        stand_in_task.abort();
        return figures;
    }
    let connect = match provider {
        Provider::Telegram => json!({ "kind": "telegram", "config": {
            "bot_token": TOKEN, "webhook_secret": TG_SECRET, "api_url": stand_in_url } }),
        Provider::Whatsapp => json!({ "kind": "whatsapp", "config": {
            "phone_number_id": PHONE_ID, "access_token": "EAAbench", "app_secret": APP_SECRET,
            "verify_token": "v", "graph_url": format!("{stand_in_url}/v21.0") } }),
        Provider::Widget => anyhow::bail!("the widget has no channel to connect"),
    };
    let res = http
        .post(format!("{base}/v1/channels"))
        .bearer_auth(&key)
        .json(&connect)
        .send()
        .await?;
    anyhow::ensure!(
        res.status().as_u16() == 201,
        "connect: {} {}",
        res.status(),
        res.text().await.unwrap_or_default()
    );
    let connected: Value = res.json().await?;
    let webhook = format!(
        "{base}/webhooks/{}/{}",
        provider.name(),
        connected["channel_id"].as_str().unwrap_or_default()
    );
    let figures = measure(provider, &webhook, pid, shared, knobs, early).await;
    drop(child);
    stand_in_task.abort();
    if let (Some(admin), Some(_)) = (&knobs.postgres, &database) {
        let _ = support::fresh_postgres(
            admin,
            &format!("switchboard_bench_{}_{round}", std::process::id()),
        )
        .await;
    }
    figures
}

type PeerCommand = (&'static str, Vec<String>);

fn peer_command(provider: Provider, root: &Path) -> Option<PeerCommand> {
    match provider {
        // No bot library serves our widget protocol: the figure stands alone.
        Provider::Widget => None,
        Provider::Telegram => {
            let dir = root.join("benches/peers/grammy");
            dir.join("node_modules/grammy").exists().then(|| {
                (
                    "grammY (no storage)",
                    vec!["node".into(), dir.join("bot.mjs").display().to_string()],
                )
            })
        }
        Provider::Whatsapp => {
            let dir = root.join("benches/peers/pywa");
            let python = dir.join(".venv/bin/python");
            python.exists().then(|| {
                (
                    "pywa (no storage)",
                    vec![
                        python.display().to_string(),
                        "-m".into(),
                        "uvicorn".into(),
                        "--app-dir".into(),
                        dir.display().to_string(),
                        "--host".into(),
                        "127.0.0.1".into(),
                        "--log-level".into(),
                        "warning".into(),
                        "app:app".into(),
                        "--port".into(),
                    ],
                )
            })
        }
    }
}

async fn run_peer(
    provider: Provider,
    command: &[String],
    knobs: &Knobs,
    early: Option<Duration>,
) -> anyhow::Result<Figures> {
    let shared = Arc::new(Shared::default());
    let (stand_in_url, stand_in_task) = stand_in(shared.clone()).await?;
    let port = free_port();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &knobs.cpus]).args(command);
    if provider == Provider::Whatsapp {
        cmd.arg(port.to_string());
    }
    cmd.env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match provider {
        Provider::Telegram => cmd
            .env("BOT_TOKEN", TOKEN)
            .env("API_ROOT", &stand_in_url)
            .env("SECRET", TG_SECRET),
        Provider::Widget => &mut cmd,
        Provider::Whatsapp => cmd
            .env("PHONE_ID", PHONE_ID)
            .env("ACCESS_TOKEN", "EAAbench")
            .env("VERIFY_TOKEN", "v")
            .env("APP_SECRET", APP_SECRET)
            .env("GRAPH_URL", &stand_in_url),
    };
    let mut child = cmd.spawn().context("taskset")?;
    wait_listening(port, &mut child).await?;
    let child = Killed(child);
    let pid = child.0.id();
    let figures = measure(
        provider,
        &format!("http://127.0.0.1:{port}/"),
        pid,
        shared,
        knobs,
        early,
    )
    .await;
    drop(child);
    stand_in_task.abort();
    figures
}
