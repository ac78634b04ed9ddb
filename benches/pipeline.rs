//! Pipeline benchmark: messages in through HTTP → stored → answered → delivered to a local
//! callback receiver, against the raw durable single-row insert rate of the same database measured
//! in the same run (the denominator).
//!
//! `cargo bench --bench pipeline` (SQLite; add `SWITCHBOARD_BENCH_POSTGRES_URL=postgres://…/postgres`
//! for PostgreSQL). Knobs: `BENCH_MESSAGES` (default 4000), `BENCH_CLIENTS` (default 32 concurrent
//! HTTP clients), `BENCH_CONTACTS_PER_CLIENT` (default 16: each client cycles through its own
//! contacts, so 512 conversations are active; each contact's messages still go in order).
//! Results and how to read them: docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{env_or, ms, percentile};

use axum::extract::State;
use serde_json::{Value, json};
use sqlx::{Executor, Row};
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::startup::Application;
use switchboard::store::{Backend, Store, new_id, now_ms};
use switchboard_channel::Secret;

type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_MESSAGES", 4000);
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let contacts: usize = env_or("BENCH_CONTACTS_PER_CLIENT", 16).max(1);
    println!(
        "pipeline bench: {messages} messages from {clients} concurrent HTTP clients, {} conversations",
        clients * contacts
    );
    println!(
        "{:<9} {:>14} {:>14} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "backend",
        "raw insert/s",
        "pipeline msg/s",
        "ratio",
        "ack p50",
        "ack p99",
        "e2e p50",
        "e2e p99"
    );
    let dir = tempfile::tempdir()?;
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    run(
        Backend::Sqlite,
        &sqlite,
        dir.path(),
        messages,
        clients,
        contacts,
    )
    .await?;
    match std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            let url = support::fresh_postgres(&admin, &format!("sb_bench_{}", std::process::id()))
                .await?;
            run(
                Backend::Postgres,
                &url,
                dir.path(),
                messages,
                clients,
                contacts,
            )
            .await?;
        }
        _ => println!("postgres  skipped: set SWITCHBOARD_BENCH_POSTGRES_URL"),
    }
    Ok(())
}

async fn run(
    backend: Backend,
    url: &str,
    data_dir: &std::path::Path,
    messages: usize,
    clients: usize,
    contacts: usize,
) -> anyhow::Result<()> {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        database_url: Some(Secret::new(url)),
        // The stand-ins listen on loopback: the operator's exception.
        egress_allow: vec!["127.0.0.0/8".into(), "localhost".into()],
        ..Config::default()
    };
    config.outbox.poll_ms = 100;
    config.outbox.concurrency = env_or("BENCH_OUTBOX_CONCURRENCY", config.outbox.concurrency);
    config.database_max_connections = std::env::var("BENCH_DB_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let store = Store::connect(&config.database_url(), 4).await?;
    store.migrate().await?;
    let raw = raw_insert_rate(&store, messages, clients).await?;
    let tenant = store
        .create_tenant(
            &TenantSlug::parse("bench").map_err(anyhow::Error::msg)?,
            "Bench",
        )
        .await?;
    store.close().await;

    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(arrivals.clone()).await?;
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    http.post(format!("{base}/v1/channels"))
        .bearer_auth(&tenant.admin_key)
        .json(&json!({ "kind": "api", "config": { "callback_url": receiver } }))
        .send()
        .await?
        .error_for_status()?;

    let per_client = messages / clients;
    let started = Instant::now();
    let tasks = (0..clients).map(|c| {
        let http = http.clone();
        let base = base.clone();
        let key = tenant.admin_key.clone();
        tokio::spawn(async move {
            // Per conversation: when each message was sent, in order.
            let mut sent_at: HashMap<String, Vec<Instant>> = HashMap::new();
            let mut acks = Vec::with_capacity(per_client);
            for m in 0..per_client {
                let t = Instant::now();
                let res: Value = http
                    .post(format!("{base}/v1/messages"))
                    .bearer_auth(&key)
                    .json(&json!({ "contact": { "external_id": format!("client-{c}-{}", m % contacts) },
                                   "text": format!("message {m}"),
                                   "idempotency_key": format!("{c}-{m}") }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                acks.push(t.elapsed());
                let conversation = res["conversation_id"].as_str().unwrap_or_default().to_owned();
                sent_at.entry(conversation).or_default().push(t);
            }
            anyhow::Ok((sent_at, acks))
        })
    });
    let mut sent: HashMap<String, Vec<Instant>> = HashMap::new();
    let mut acks: Vec<Duration> = Vec::new();
    for t in futures::future::join_all(tasks).await {
        let (sent_at, a) = t??;
        sent.extend(sent_at);
        acks.extend(a);
    }
    let total = per_client * clients;
    let acked_at = started.elapsed();
    let backlog = backlog(url).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let delivered: usize = arrivals
            .lock()
            .map(|a| a.values().map(Vec::len).sum())
            .unwrap_or(0);
        if delivered >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {delivered}/{total} delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let last = arrivals
        .values()
        .flatten()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    let throughput = total as f64 / (last - started).as_secs_f64();
    let mut e2e: Vec<Duration> = Vec::new();
    for (conversation, sent_at) in &sent {
        let got = arrivals.get(conversation).cloned().unwrap_or_default();
        e2e.extend(
            sent_at
                .iter()
                .zip(got.iter())
                .map(|(s, a)| a.saturating_duration_since(*s)),
        );
    }
    let _ = stop_tx.send(());
    server.await??;
    eprintln!(
        "{}: all {total} acknowledged after {:.2} s; then {} unanswered, {} undelivered",
        backend.name(),
        acked_at.as_secs_f64(),
        backlog.0,
        backlog.1
    );
    println!(
        "{:<9} {:>14.0} {:>14.0} {:>7.0}% {:>10} {:>10} {:>10} {:>10}",
        backend.name(),
        raw,
        throughput,
        100.0 * throughput / raw,
        ms(percentile(&mut acks, 0.50)),
        ms(percentile(&mut acks, 0.99)),
        ms(percentile(&mut e2e, 0.50)),
        ms(percentile(&mut e2e, 0.99)),
    );
    Ok(())
}

/// The denominator: durable single-row inserts (one transaction each) from the same number of
/// concurrent writers, through the same store (SQLite: WAL + synchronous=FULL; Postgres: default
/// synchronous_commit=on).
async fn raw_insert_rate(store: &Store, n: usize, writers: usize) -> anyhow::Result<f64> {
    store
        .pool()
        .execute("CREATE TABLE bench_raw (id TEXT PRIMARY KEY, body TEXT NOT NULL, created_at BIGINT NOT NULL)")
        .await?;
    let per_writer = n / writers;
    let started = Instant::now();
    let tasks = (0..writers).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..per_writer {
                let mut w = store.begin_write().await?;
                sqlx::query("INSERT INTO bench_raw (id, body, created_at) VALUES ($1, $2, $3)")
                    .bind(new_id())
                    .bind("a message body of a typical length, about sixty characters")
                    .bind(now_ms())
                    .execute(&mut *w.tx)
                    .await?;
                w.commit().await?;
            }
            anyhow::Ok(())
        })
    });
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
}

/// (unanswered inbound messages, undelivered replies) right now.
async fn backlog(url: &str) -> anyhow::Result<(i64, i64)> {
    let store = Store::connect(&Secret::new(url), 1).await?;
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            anyhow::Ok(
                sqlx::query(sql)
                    .fetch_one(store.pool())
                    .await?
                    .try_get::<i64, _>("n")?,
            )
        }
    };
    let unanswered = count(
        "SELECT COUNT(*) AS n FROM message WHERE direction = 'inbound' AND processed_at IS NULL",
    )
    .await?;
    let undelivered = count("SELECT COUNT(*) AS n FROM delivery WHERE status = 'pending'").await?;
    store.close().await;
    Ok((unanswered, undelivered))
}

async fn start_receiver(arrivals: Arrivals) -> anyhow::Result<String> {
    async fn receive(State(arrivals): State<Arrivals>, body: axum::body::Bytes) -> &'static str {
        let at = Instant::now();
        let conversation = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["conversation_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Ok(mut a) = arrivals.lock() {
            a.entry(conversation).or_default().push(at);
        }
        "ok"
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/cb", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/cb", axum::routing::post(receive))
        .with_state(arrivals);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}
