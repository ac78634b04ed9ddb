//! Memory per idle widget session: Switchboard's `/v1/widget/ws` beside Node's `ws` (the
//! baseline), measured in the same run.
//!
//! Each server runs as its own process (the release `switchboard serve` with SQLite, and
//! `benches/peers/ws-idle/server.mjs`). This process opens `WIDGET_BENCH_SESSIONS` sockets
//! (10,000 by default) to it, each completing the handshake (`hello` → `welcome`), and reads the
//! server's resident memory (VmRSS) before and after. The figure is (after − before) / sessions,
//! over `WIDGET_BENCH_ROUNDS` rounds (2), alternating the servers.
//!
//! Run: `cargo bench --bench widget_memory` (needs `npm ci` in benches/peers/ws-idle for the
//! baseline; without it only Switchboard is measured). Figures go to docs/BENCHMARKS.md.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    name: &'static str,
    child: Child,
    url: String,
    origin: String,
    _dir: Option<tempfile::TempDir>,
}

async fn switchboard() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let created = Command::new(BIN)
        .args(["tenant", "create", "bench", "--json"])
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .output()
        .await
        .expect("tenant create");
    assert!(created.status.success(), "tenant create failed");
    let tenant: serde_json::Value = serde_json::from_slice(&created.stdout).expect("json");
    let key = tenant["widget_key"]
        .as_str()
        .expect("widget key")
        .to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(BIN)
        .arg("serve")
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        // BM25 retrieval: the embedding model's ~90 MB of weights are not what this measures.
        .env("SWITCHBOARD_EMBED_MODEL", "none")
        .env("SWITCHBOARD_WIDGET_MAX_SOCKETS_PER_IP", "10000000")
        .env("SWITCHBOARD_WIDGET_CONNECT_BURST_PER_IP", "10000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("serve");
    let health = format!("http://127.0.0.1:{port}/healthz");
    let start = Instant::now();
    while !reqwest::get(&health)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        name: "switchboard",
        child,
        url: format!("ws://127.0.0.1:{port}/v1/widget/ws?key={key}"),
        origin: format!("http://127.0.0.1:{port}"),
        _dir: Some(dir),
    }
}

async fn node_ws() -> Option<Server> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/ws-idle");
    if !dir.join("node_modules/ws").exists() {
        eprintln!("baseline skipped: run `npm ci` in {}", dir.display());
        return None;
    }
    let mut child = Command::new("node")
        .args(["server.mjs", "0"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await.ok()??;
    let port = line.strip_prefix("listening ")?.trim().to_owned();
    Some(Server {
        name: "node ws",
        child,
        url: format!("ws://127.0.0.1:{port}/"),
        origin: format!("http://127.0.0.1:{port}"),
        _dir: None,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens one session: connect, `hello`, wait for `welcome`.
async fn session(url: &str, origin: &str) -> Ws {
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", origin.parse().expect("origin"));
    // Small client buffers: the client's memory is not measured, but 128 KiB each would not fit.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .expect("connect");
    ws.send(Message::text(r#"{"type":"hello","v":1}"#))
        .await
        .expect("hello");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return ws,
            Some(Ok(_)) => continue,
            other => panic!("no welcome: {other:?}"),
        }
    }
}

/// Opens `n` sessions (64 handshakes at a time) and returns them with the RSS growth in KiB.
async fn measure(server: &Server, n: usize) -> (Vec<Ws>, f64) {
    let pid = server.child.id().expect("pid");
    // Warm up (allocator arenas, caches, the first conversation lookups), then settle.
    let warm = open_many(server, 200).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);
    let sockets = open_many(server, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let per_session = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    (sockets, per_session)
}

async fn open_many(server: &Server, n: usize) -> Vec<Ws> {
    let mut sockets = Vec::with_capacity(n);
    let mut pending = futures::stream::iter(0..n)
        .map(|_| session(&server.url, &server.origin))
        .buffer_unordered(64);
    while let Some(ws) = pending.next().await {
        sockets.push(ws);
    }
    sockets
}

#[tokio::main]
async fn main() {
    let n = support::env_or("WIDGET_BENCH_SESSIONS", 10_000);
    let rounds = support::env_or("WIDGET_BENCH_ROUNDS", 2);
    println!("idle widget sessions: {n} per server per round, {rounds} rounds");
    println!(
        "{:<12} {:>6} {:>14} {:>16}",
        "server", "round", "bytes/session", "sessions/GiB"
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 1..=rounds {
        for which in ["switchboard", "node ws"] {
            let server = match which {
                "switchboard" => switchboard().await,
                _ => match node_ws().await {
                    Some(s) => s,
                    None => continue,
                },
            };
            let (sockets, per) = measure(&server, n).await;
            let per_gib = (1u64 << 30) as f64 / per.max(1.0);
            println!(
                "{:<12} {:>6} {:>14.0} {:>16.0}",
                server.name, round, per, per_gib
            );
            if which == "switchboard" {
                ours.push(per);
            } else {
                theirs.push(per);
            }
            drop(sockets);
            drop(server);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (o, t) = (mean(&ours), mean(&theirs));
    println!(
        "switchboard: {:.1} KB/session, {:.0} sessions/GiB (target ≥ 50,000)",
        o / 1000.0,
        (1u64 << 30) as f64 / o.max(1.0)
    );
    if !theirs.is_empty() {
        println!(
            "node ws:     {:.1} KB/session; switchboard uses {:.2}× the baseline's memory per session",
            t / 1000.0,
            o / t.max(1.0)
        );
    }
}
