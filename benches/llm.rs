//! Time to first token added by the gateway.
//!
//! One model server (a local stand-in speaking Ollama's `/api/chat`: the first NDJSON line goes
//! out as soon as the request is read, then ten more 2 ms apart, then `done`), two ways to reach
//! its first token, measured alternately in the same run:
//!
//! - **direct**: `POST /api/chat` from a client, until the first line with text arrives — what an
//!   application calling the model itself would see;
//! - **gateway**: a web visitor's `send` frame on the widget WebSocket, until the first `stream`
//!   frame arrives — the message is stored (SQLite, committed), the router takes the turn, the
//!   tenant's knowledge is searched (embedded Qdrant Edge, the demo notes), the prompt templates
//!   are rendered, the guard admits the call, the provider streams, and the delta travels back
//!   through the hub and the socket.
//!
//! The difference of the medians is what the gateway adds (target ≤ 5 ms). Each visitor message
//! waits for its complete answer before the next is sent, so turns do not queue.
//!
//! `cargo bench --bench llm` (`SB_BENCH_TTFT_N` rounds per side, default 300).

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::startup::Application;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const QUESTIONS: [&str; 4] = [
    "When should I stop drinking coffee?",
    "How do I calm down before a difficult conversation?",
    "How can I build a new habit that lasts?",
    "What should I do when I cannot fall asleep?",
];

fn line(content: &str, done: bool) -> String {
    let mut v = json!({"model": "stub", "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": {"role": "assistant", "content": content}, "done": done});
    if done {
        v["done_reason"] = json!("stop");
    }
    format!("{v}\n")
}

/// The stand-in model: answers at once, streams the rest.
async fn stub() -> String {
    async fn chat() -> Response {
        let stream = futures::stream::unfold(0usize, |i| async move {
            if i > 11 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let text = match i {
                0 => line("Stop ", false),
                11 => line("", true),
                _ => line("coffee [1] ", false),
            };
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from(text)),
                i + 1,
            ))
        });
        Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(stream))
            .unwrap_or_default()
    }
    let app = axum::Router::new().route("/api/chat", post(chat)).route(
        "/api/tags",
        get(|| async { axum::Json(json!({"models": [{"name": "stub:latest"}]})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Time to the first line with text of a direct `/api/chat`.
async fn direct(client: &reqwest::Client, url: &str, question: &str) -> Duration {
    let body = json!({"model": "stub", "stream": true,
        "messages": [{"role": "system", "content": "You answer from the sources."},
                     {"role": "user", "content": question}],
        "options": {"num_predict": 512, "temperature": 0.2}});
    let started = Instant::now();
    let mut response = client
        .post(format!("{url}/api/chat"))
        .json(&body)
        .send()
        .await
        .expect("chat");
    let mut first = None;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        if first.is_none() && chunk.windows(11).any(|w| w == b"\"content\":\"") {
            first = Some(started.elapsed());
        }
    }
    first.expect("a token")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Time from a visitor's `send` to the first `stream` frame; then waits for the stored answer.
async fn gateway(ws: &mut Ws, client_id: &str, question: &str) -> Duration {
    // The gateway allows a socket 20 frames a second: stay under it (outside the timing).
    tokio::time::sleep(Duration::from_millis(60)).await;
    let frame = json!({"type": "send", "client_id": client_id, "text": question}).to_string();
    let started = Instant::now();
    ws.send(Message::text(frame)).await.expect("send");
    let mut first = None;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            other => panic!("socket closed: {other:?}"),
        };
        let frame: serde_json::Value = serde_json::from_str(&text).expect("json");
        match frame["type"].as_str() {
            Some("stream") if first.is_none() => first = Some(started.elapsed()),
            Some("message") if frame["author"] == "bot" => break,
            Some("error") => panic!("{frame}"),
            _ => {}
        }
    }
    first.expect("a stream frame before the answer")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = support::env_or("SB_BENCH_TTFT_N", 300);
    let stub = stub().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        llm_provider: "ollama".into(),
        llm_url: stub.clone(),
        chat_model: "stub".into(),
        // The stand-ins listen on loopback: the operator's exception.
        egress_allow: vec!["127.0.0.0/8".into(), "localhost".into()],
        ..Config::default()
    };
    config.widget.send_burst = 1_000_000;
    let store = switchboard::store::Store::connect(&config.database_url(), 2)
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let tenant = store
        .create_tenant(&TenantSlug::parse("bench").expect("slug"), "Bench")
        .await
        .expect("tenant");
    store.close().await;
    let app = Application::build(config).await.expect("app");
    let files = switchboard::knowledge::files::collect(&[std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/knowledge"
    ))])
    .expect("knowledge files");
    for outcome in
        switchboard::knowledge::files::ingest_files(app.knowledge(), &tenant.tenant_id, &files)
            .await
    {
        outcome.expect("ingest");
    }
    let addr = app.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let mut request = format!("ws://{addr}/v1/widget/ws?key={}", tenant.widget_key)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Origin", format!("http://{addr}").parse().expect("origin"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    ws.send(Message::text(r#"{"type":"hello","v":1}"#))
        .await
        .expect("hello");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => break,
            Some(Ok(_)) => continue,
            other => panic!("no welcome: {other:?}"),
        }
    }
    let client = switchboard::startup::llm_http().expect("client");

    // Warm-up of both paths, then alternate blocks of ten.
    for i in 0..20 {
        let q = QUESTIONS[i % QUESTIONS.len()];
        direct(&client, &stub, q).await;
        gateway(&mut ws, &format!("warm{i}"), q).await;
    }
    let (mut straight, mut through) = (Vec::new(), Vec::new());
    let mut i = 0;
    while straight.len() < rounds {
        for _ in 0..10 {
            let q = QUESTIONS[i % QUESTIONS.len()];
            straight.push(direct(&client, &stub, q).await);
            i += 1;
        }
        for _ in 0..10 {
            let q = QUESTIONS[i % QUESTIONS.len()];
            through.push(gateway(&mut ws, &format!("m{i}"), q).await);
            i += 1;
        }
    }
    let p = |v: &mut Vec<Duration>, q: f64| support::percentile(v, q).as_secs_f64() * 1000.0;
    let (d50, d99) = (p(&mut straight, 0.5), p(&mut straight, 0.99));
    let (g50, g99) = (p(&mut through, 0.5), p(&mut through, 0.99));
    println!("time to first token, {rounds} rounds each (alternating blocks of 10)");
    println!("  direct  /api/chat          p50 {d50:7.3} ms   p99 {d99:7.3} ms");
    println!("  gateway widget send→stream p50 {g50:7.3} ms   p99 {g99:7.3} ms");
    println!(
        "  added by the gateway: p50 {:+.3} ms (target ≤ 5 ms), p99 {:+.3} ms",
        g50 - d50,
        g99 - d99
    );
    // Stopped before its data directory goes (the vector shard flushes when it closes).
    drop(ws);
    let _ = stop.send(());
    let _ = running.await;
}
