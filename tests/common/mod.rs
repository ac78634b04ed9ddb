//! Test support: the real application on port 0 with a fresh database (SQLite in a temp dir, or a
//! new PostgreSQL database), a local callback receiver standing in for a tenant's endpoint, and a
//! macro that runs one test story on both backends.
//!
//! PostgreSQL runs when `SWITCHBOARD_TEST_POSTGRES_URL` points at a server we may create databases
//! on (e.g. `postgres://postgres@127.0.0.1:5432/postgres`). Without it the Postgres variant prints
//! a SKIPPED notice — unless `SWITCHBOARD_TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes
//! a missing server a failure.
#![allow(dead_code)]

pub mod gateway;
pub mod graph;
pub mod llm;
pub mod smtp;
pub mod telegram;
pub mod twilio;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use switchboard::answer::Responder;
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::knowledge::Knowledge;
use switchboard::startup::Application;
use switchboard::store::Store;
use switchboard_channel::Secret;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `async fn $name(backend: Backend)` as `$name::sqlite` and `$name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}

/// A fresh, empty database of `backend`, or `None` (with a printed notice) when Postgres is not
/// configured and not required.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("switchboard.db").display()
                ),
                dir,
            }),
            Backend::Postgres => {
                let Some(admin_url) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                else {
                    assert!(
                        std::env::var("SWITCHBOARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                        "SWITCHBOARD_TEST_REQUIRE_POSTGRES=1 but SWITCHBOARD_TEST_POSTGRES_URL is not set"
                    );
                    eprintln!(
                        "SKIPPED (postgres): set SWITCHBOARD_TEST_POSTGRES_URL to run this test on PostgreSQL"
                    );
                    return None;
                };
                sqlx::any::install_default_drivers();
                let name = format!("sb_test_{}", unique_suffix());
                let mut conn = sqlx::AnyConnection::connect(&admin_url)
                    .await
                    .expect("connect to SWITCHBOARD_TEST_POSTGRES_URL");
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    dir,
                })
            }
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Logs of the app under test, captured per test; `RUST_LOG` widens them (default: warnings).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A configuration for tests: port 0, the given database, fast retries.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: db.dir.path().to_path_buf(),
        database_url: Some(Secret::new(db.url.clone())),
        wait_timeout_ms: 10_000,
        // No model unless a test connects one: answers quote the knowledge, deterministically.
        llm_provider: "none".into(),
        // BM25 retrieval unless a test names an embedding model (the built-in one would be
        // fetched into every test's data directory).
        embed_model: Some("none".into()),
        // The provider stand-ins listen on loopback: the operator's exception, as in SPEC §5.
        egress_allow: vec!["127.0.0.0/8".into(), "::1".into(), "localhost".into()],
        // PDFs are read by the binary cargo built for this package (the test binary is not one).
        pdf_worker: Some(env!("CARGO_BIN_EXE_switchboard").into()),
        ..Config::default()
    };
    config.outbox.base_delay_ms = 20;
    config.outbox.max_delay_ms = 200;
    config.outbox.poll_ms = 50;
    config.outbox.max_attempts = 5;
    config.outbox.send_timeout_ms = 500;
    config.outbox.lease_ms = 1_000;
    config
}

/// A running gateway and a tenant on it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    /// The gateway's knowledge service (and through it the vector index itself).
    pub knowledge: Knowledge,
    /// The program engine (its clock can be frozen and moved by hand).
    pub programs: switchboard::programs::Programs,
    /// The tenants' moderation policies and the hand-off timeout's sweep.
    pub moderation: Arc<switchboard::moderation::Moderation>,
    pub tenant_id: String,
    pub admin_key: String,
    pub widget_key: String,
    pub db: TestDb,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the gateway on a fresh database of `backend` with tenant `acme`.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}, None).await
    }

    pub async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
        responder: Option<Arc<dyn Responder>>,
    ) -> Option<TestApp> {
        let db = TestDb::fresh(backend).await?;
        let mut config = test_config(&db);
        tweak(&mut config);
        let store = Store::connect(&config.database_url(), 4)
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let tenant = store
            .create_tenant(&TenantSlug::parse("acme").expect("slug"), "Acme")
            .await
            .expect("tenant");
        store.close().await;
        let mut app = Self::start(db, config, responder).await;
        app.tenant_id = tenant.tenant_id;
        app.admin_key = tenant.admin_key;
        app.widget_key = tenant.widget_key;
        Some(app)
    }

    /// Starts the gateway on an existing database (no tenant created).
    pub async fn start(
        db: TestDb,
        config: Config,
        responder: Option<Arc<dyn Responder>>,
    ) -> TestApp {
        init_logs();
        let app = match responder {
            Some(r) => Application::build_with_responder(config, r).await,
            None => Application::build(config).await,
        }
        .expect("build app");
        let addr = app.local_addr().expect("addr");
        let store = app.store().clone();
        let knowledge = app.knowledge().clone();
        let programs = app.programs().clone();
        let moderation = app.moderation().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            store,
            knowledge,
            programs,
            moderation,
            tenant_id: String::new(),
            admin_key: String::new(),
            widget_key: String::new(),
            db,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns the database so a test can start again on it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("app task").expect("app run");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                dir,
            },
        )
    }

    /// Stops gracefully and starts again on the same database with the test configuration
    /// (workers on), keeping the tenant and its keys.
    pub async fn restart(self) -> TestApp {
        let (tenant_id, admin_key, widget_key) = (
            self.tenant_id.clone(),
            self.admin_key.clone(),
            self.widget_key.clone(),
        );
        let db = self.stop().await;
        let config = test_config(&db);
        let mut app = TestApp::start(db, config, None).await;
        app.tenant_id = tenant_id;
        app.admin_key = admin_key;
        app.widget_key = widget_key;
        app
    }

    pub async fn post_message(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("POST /v1/messages")
    }

    /// `POST /v1/messages` as admin, expecting success; returns the JSON body.
    pub async fn send(&self, external_id: &str, text: &str, extra: Value) -> Value {
        let mut body = json!({ "contact": { "external_id": external_id }, "text": text });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let res = self.post_message(&self.admin_key, body).await;
        let status = res.status();
        let json: Value = res.json().await.expect("json body");
        assert!(status.is_success(), "{status}: {json}");
        json
    }

    /// Uploads a Markdown document as admin; the answer body.
    pub async fn upload_markdown(&self, title: &str, content: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/v1/knowledge/documents", self.base))
            .bearer_auth(&self.admin_key)
            .json(&json!({"title": title, "content": content, "format": "markdown"}))
            .send()
            .await
            .expect("upload");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("json")
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET");
        let status = StatusCode::from_u16(res.status().as_u16()).expect("status");
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn messages(&self, conversation_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get(
                &self.admin_key,
                &format!("/v1/conversations/{conversation_id}/messages"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until there are dead letters, and returns them.
    pub async fn dead_letters(&self) -> Vec<Value> {
        eventually("a dead letter", Duration::from_secs(20), || async {
            let (_, body) = self
                .get(&self.admin_key, "/v1/deliveries?status=dead")
                .await;
            body["deliveries"]
                .as_array()
                .filter(|d| !d.is_empty())
                .cloned()
        })
        .await
    }

    /// `POST /v1/deliveries/{id}/retry`; the status code.
    pub async fn retry_delivery(&self, id: &str) -> u16 {
        self.http
            .post(format!("{}/v1/deliveries/{id}/retry", self.base))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .expect("retry")
            .status()
            .as_u16()
    }

    /// The most recently active conversation on a channel kind.
    pub async fn first_conversation(&self, channel: &str) -> String {
        let (_, list) = self
            .get(
                &self.admin_key,
                &format!("/v1/conversations?channel={channel}"),
            )
            .await;
        list["conversations"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no {channel} conversation: {list}"))
            .to_owned()
    }

    /// `POST /v1/conversations/{id}/messages` as admin (an agent's message); the status.
    pub async fn agent_message(&self, conversation_id: &str, body: Value) -> u16 {
        self.http
            .post(format!(
                "{}/v1/conversations/{conversation_id}/messages",
                self.base
            ))
            .bearer_auth(&self.admin_key)
            .json(&body)
            .send()
            .await
            .expect("agent message")
            .status()
            .as_u16()
    }

    /// `GET /v1/messages/{id}/attachments/{index}` with `key`: (status, content type, bytes).
    pub async fn attachment(
        &self,
        key: &str,
        message_id: &str,
        index: usize,
    ) -> (u16, Option<String>, Vec<u8>) {
        let res = self
            .http
            .get(format!(
                "{}/v1/messages/{message_id}/attachments/{index}",
                self.base
            ))
            .bearer_auth(key)
            .send()
            .await
            .expect("fetch");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (
            status,
            content_type,
            res.bytes().await.expect("bytes").to_vec(),
        )
    }

    /// Points the tenant's `api` channel at a callback URL.
    pub async fn set_callback(&self, url: &str) {
        let res = self
            .http
            .post(format!("{}/v1/channels", self.base))
            .bearer_auth(&self.admin_key)
            .json(&json!({ "kind": "api", "config": { "callback_url": url, "signing_secret": "cb-secret" } }))
            .send()
            .await
            .expect("POST /v1/channels");
        assert_eq!(res.status().as_u16(), 201);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the callback receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 to everything.
    Accept,
    /// 503 to the first `n` requests, then 200.
    FailFirst(usize),
    /// 500 to everything.
    FailAlways,
    /// 429 with `Retry-After: n` seconds to the first request, then 200.
    RetryAfterOnce(u64),
    /// 503 to everything until switched.
    Down,
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub raw: Vec<u8>,
    pub idempotency_key: String,
    pub signature: Option<String>,
    pub accepted: bool,
    pub at: Instant,
}

#[derive(Default)]
struct ReceiverState {
    mode: Option<Mode>,
    seen: Vec<Received>,
}

/// A local stand-in for a tenant's callback endpoint: records every request and answers by mode.
#[derive(Clone)]
pub struct CallbackReceiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl CallbackReceiver {
    pub async fn start(mode: Mode) -> CallbackReceiver {
        Self::start_on("127.0.0.1:0", mode).await
    }

    pub async fn start_on(addr: &str, mode: Mode) -> CallbackReceiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            mode: Some(mode),
            seen: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let url = format!("http://{}/callback", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/callback", axum::routing::post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        CallbackReceiver { url, state }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("lock").mode = Some(mode);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.state.lock().expect("lock").seen.clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.seen().into_iter().filter(|r| r.accepted).collect()
    }

    /// Accepted deliveries grouped by conversation id, in arrival order.
    pub fn accepted_by_conversation(&self) -> HashMap<String, Vec<Value>> {
        let mut map: HashMap<String, Vec<Value>> = HashMap::new();
        for r in self.accepted() {
            let conv = r.body["conversation_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            map.entry(conv).or_default().push(r.body);
        }
        map
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let mut s = state.lock().expect("lock");
    let n = s.seen.len();
    let mode = s.mode.unwrap_or(Mode::Accept);
    let (status, retry_after) = match mode {
        Mode::Accept => (StatusCode::OK, None),
        Mode::FailFirst(k) if n < k => (StatusCode::SERVICE_UNAVAILABLE, None),
        Mode::FailFirst(_) => (StatusCode::OK, None),
        Mode::FailAlways => (StatusCode::INTERNAL_SERVER_ERROR, None),
        Mode::RetryAfterOnce(secs) if n == 0 => (StatusCode::TOO_MANY_REQUESTS, Some(secs)),
        Mode::RetryAfterOnce(_) => (StatusCode::OK, None),
        Mode::Down => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.seen.push(Received {
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        signature: header("x-switchboard-signature"),
        accepted: status == StatusCode::OK,
        at: Instant::now(),
    });
    let mut response = status.into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().expect("header"));
    }
    response
}

impl TestApp {
    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let res = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200);
        res.text().await.expect("metrics text")
    }

    /// The value of one series of `GET /metrics`: `name` with exactly `labels`; 0 when absent.
    /// The recorder is per process (the tests running beside this one count too): compare a
    /// value before and after, and expect at least this test's increase.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text().await, name, labels)
    }
}

/// The value of the series `name` with exactly `labels` (in any order) in Prometheus text; 0 when
/// the series is absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (series_name, set) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let mut have = label_pairs(set);
        have.sort();
        if have == want {
            return value
                .parse()
                .unwrap_or_else(|_| panic!("not a metric value: {line}"));
        }
    }
    0.0
}

/// `a="x",b="y"` → `["a=\"x\"", "b=\"y\""]` (commas inside quoted values kept).
fn label_pairs(set: &str) -> Vec<String> {
    let mut pairs = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in set.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            pairs.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    if !current.is_empty() {
        pairs.push(current);
    }
    pairs
}

/// `s` percent-encoded for a query string.
/// The six-digit code in the bot's answer to `/link` ("Your link code is 123456. …").
pub fn link_code(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.len() == 7 && w.ends_with('.') && w[..6].bytes().all(|b| b.is_ascii_digit()))
        .map(|w| w[..6].to_owned())
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
