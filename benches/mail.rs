//! SMS and email benchmark.
//!
//! 1. **SMS**: Twilio's signed inbound webhook → stored → answered → `Messages.json` on a local
//!    Twilio stand-in received the reply: replies/s, end-to-end p50/p99 and the webhook's
//!    acknowledgement p99, with persistence on (SQLite, `synchronous=FULL`), pacing off (the
//!    stand-in has no rate limit).
//! 2. **Email**: a 50 KB multipart/alternative mail with a quoted thread, posted raw
//!    (`message/rfc822`) → stored (with its original) → answered → the reply sent over SMTP to a
//!    real SMTP server (aiosmtpd, writing a Maildir): messages/s until the last reply is on disk.
//! 3. **MIME parsing**: the same mails (and the real SendGrid raw sample) parsed by
//!    `mail-parser` alone, by the whole email adapter (parse + quote and signature stripping +
//!    threading headers), and by CPython's `email` package (`BytesParser(policy=default)` plus
//!    `get_body()`), in MB/s, each on the same single core (`taskset`), in the same run.
//!
//! The gateway runs in this process, as in `benches/channels.rs` (no peer is compared end to
//! end here; the parse comparison is library against library on one core).
//!
//! `cargo bench --bench mail`. Knobs: `BENCH_SMS` (default 2000), `BENCH_MAILS` (default 300),
//! `BENCH_CLIENTS` (default 32), `BENCH_PARSE_SECS` (default 3), `BENCH_CORE` (default 1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{env_or, ms, percentile};

use async_trait::async_trait;
use axum::extract::State;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use switchboard::answer::{Answer, Responder, Turn};
use switchboard::config::Config;
use switchboard::core::TenantSlug;
use switchboard::startup::Application;
use switchboard::store::Store;
use switchboard_channel::Secret;

const ACCOUNT_SID: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const AUTH_TOKEN: &str = "bench-auth-token";
const PUBLIC_URL: &str = "https://bench.example.test";
const SECRET: &str = "bench-inbound-secret";

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

struct Echo;

#[async_trait]
impl Responder for Echo {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        let first = turn.text.lines().next().unwrap_or_default();
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: format!("echo: {first}"),
            citations: Vec::new(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let core: usize = env_or("BENCH_CORE", 1);
    parse_bench(core)?;
    sms_bench().await?;
    email_bench().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gateway under test.

struct Gateway {
    base: String,
    admin_key: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn gateway() -> anyhow::Result<Gateway> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(Secret::new(url)),
        egress_allow: vec!["127.0.0.0/8".into(), "localhost".into()],
        public_url: Some(PUBLIC_URL.into()),
        embed_model: Some("none".into()),
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
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    Ok(Gateway {
        base,
        admin_key: tenant.admin_key,
        stop,
        server,
        _dir: dir,
    })
}

impl Gateway {
    async fn connect(&self, request: Value) -> anyhow::Result<String> {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/channels", self.base))
            .bearer_auth(&self.admin_key)
            .json(&request)
            .send()
            .await?;
        anyhow::ensure!(res.status().as_u16() == 201, "connect: {}", res.status());
        let body: Value = res.json().await?;
        Ok(body["channel_id"].as_str().unwrap_or_default().to_owned())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

// ---------------------------------------------------------------------------------------------
// SMS.

async fn twilio_stand_in(arrivals: Arrivals) -> anyhow::Result<String> {
    async fn messages(
        State(arrivals): State<Arrivals>,
        body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        let at = Instant::now();
        let text = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "Body")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if let Some(key) = text.strip_prefix("echo: ") {
            lock(&arrivals).entry(key.to_owned()).or_insert(at);
        }
        (
            axum::http::StatusCode::CREATED,
            axum::Json(
                json!({ "sid": format!("SM{}", switchboard::store::new_id().replace('-', "")), "status": "queued" }),
            ),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            axum::routing::post(messages),
        )
        .with_state(arrivals);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

fn twilio_signature(url: &str, form: &[(String, String)]) -> String {
    let mut params = form.to_vec();
    params.sort();
    let mut data = url.to_owned();
    for (k, v) in params {
        data.push_str(&k);
        data.push_str(&v);
    }
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(AUTH_TOKEN.as_bytes()) else {
        return String::new();
    };
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn sms_bench() -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_SMS", 2000);
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let arrivals: Arrivals = Arc::default();
    let stand_in = twilio_stand_in(arrivals.clone()).await?;
    let gw = gateway().await?;
    let id = gw
        .connect(
            json!({ "kind": "sms", "config": { "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN, "from": "+15005550006", "api_url": stand_in } }),
        )
        .await?;
    let path = format!("/webhooks/sms/{id}");
    let url = format!("{}{path}", gw.base);
    let signed_url = format!("{PUBLIC_URL}{path}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let sent: Arrivals = Arc::default();
    let per_client = messages / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, signed_url, sent) =
            (http.clone(), url.clone(), signed_url.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let n = 1 + c * per_client + i;
                let form: Vec<(String, String)> = [
                    ("MessageSid", format!("SM{n:032}")),
                    ("SmsSid", format!("SM{n:032}")),
                    ("AccountSid", ACCOUNT_SID.to_owned()),
                    ("From", format!("+1555{:07}", c * 16 + i % 16)),
                    ("To", "+15005550006".to_owned()),
                    ("Body", format!("m{n}")),
                    ("NumMedia", "0".to_owned()),
                    ("SmsStatus", "received".to_owned()),
                    ("ApiVersion", "2010-04-01".to_owned()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                let signature = twilio_signature(&signed_url, &form);
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&form)
                    .finish();
                let t0 = Instant::now();
                lock(&sent).insert(format!("m{n}"), t0);
                let res = http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("X-Twilio-Signature", signature)
                    .body(body)
                    .send()
                    .await?;
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
    let deadline = Instant::now() + Duration::from_secs(300);
    while lock(&arrivals).len() < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {expected} SMS replies arrived",
            lock(&arrivals).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = lock(&arrivals).clone();
    let sent = lock(&sent).clone();
    let last = arrived.values().max().copied().unwrap_or(started);
    let mut e2e: Vec<Duration> = sent
        .iter()
        .filter_map(|(k, t0)| arrived.get(k).map(|a| a.saturating_duration_since(*t0)))
        .collect();
    println!(
        "sms: {expected} inbound SMS, {clients} connections: {:.0} replies/s, e2e p50 {}, p99 {}, ack p99 {}",
        expected as f64 / (last - started).as_secs_f64(),
        ms(percentile(&mut e2e, 0.50)),
        ms(percentile(&mut e2e, 0.99)),
        ms(percentile(&mut acks, 0.99)),
    );
    gw.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Email.

/// A 50 KB multipart/alternative mail: one new line on top of a long quoted thread, as text and
/// as HTML (Gmail's quote markup).
fn thread_mail(n: usize, from: &str) -> String {
    let mut quoted = String::new();
    let mut html_quoted = String::new();
    let mut i = 0;
    while quoted.len() < 25_000 {
        i += 1;
        let line = format!(
            "Earlier message {i}: we talked about sleep, caffeine after noon, the wind-down hour and a dark, cool bedroom."
        );
        quoted.push_str(&format!("> {line}\r\n"));
        html_quoted.push_str(&format!("<p>{line}</p>\r\n"));
    }
    format!(
        "From: Person {n} <{from}>\r\nTo: Coach <coach@bench.example.test>\r\nSubject: Re: Sleep plan\r\n\
         Message-ID: <bench-{n}@mail.example.com>\r\nDate: Sun, 06 Dec 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt-{n}\"\r\n\r\n\
         --alt-{n}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         m{n}\r\n\r\nOn Sat, 5 Dec 2026 at 09:00, Coach <coach@bench.example.test> wrote:\r\n{quoted}\r\n\
         --alt-{n}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <div dir=\"ltr\">m{n}</div><div class=\"gmail_quote\"><blockquote class=\"gmail_quote\">{html_quoted}</blockquote></div>\r\n\
         --alt-{n}--\r\n"
    )
}

async fn email_bench() -> anyhow::Result<()> {
    let mails: usize = env_or("BENCH_MAILS", 300);
    let clients: usize = env_or("BENCH_CLIENTS", 32).min(mails.max(1));
    let python = std::env::var("SWITCHBOARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir()?;
    let maildir = dir.path().join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut smtp = match std::process::Command::new(&python)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("email: aiosmtpd could not start ({e}): pip install aiosmtpd; skipped");
            return Ok(());
        }
    };
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        let _ = smtp.kill();
        println!("email: aiosmtpd is not installed (pip install aiosmtpd); skipped");
        return Ok(());
    }
    let gw = gateway().await?;
    let id = gw
        .connect(json!({ "kind": "email", "config": {
            "from": "Coach <coach@bench.example.test>",
            "smtp_url": format!("smtp://127.0.0.1:{port}?tls=none"),
            "inbound_secret": SECRET } }))
        .await?;
    let url = format!("{}/webhooks/email/{id}", gw.base);
    let bodies: Vec<String> = (0..mails)
        .map(|n| thread_mail(n, &format!("p{}@mail.example.com", n % 64)))
        .collect();
    let size = bodies.first().map_or(0, String::len);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = Arc::new(bodies);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, next, bodies) = (http.clone(), url.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(());
                };
                let res = http
                    .post(&url)
                    .basic_auth("parse", Some(SECRET))
                    .header("content-type", "message/rfc822")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    res.status().is_success(),
                    "email webhook answered {}",
                    res.status()
                );
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let acked = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let count = || std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count());
    while count() < mails {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {mails} replies reached the SMTP server",
            count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "email: {mails} mails of {:.0} KB ({clients} connections): all stored in {:.2} s ({:.0}/s); every reply on the SMTP server's disk after {:.2} s: {:.0} mails/s",
        size as f64 / 1024.0,
        acked.as_secs_f64(),
        mails as f64 / acked.as_secs_f64(),
        elapsed.as_secs_f64(),
        mails as f64 / elapsed.as_secs_f64(),
    );
    gw.stop().await;
    let _ = smtp.kill();
    let _ = smtp.wait();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MIME parsing against CPython's `email`.

/// The raw MIME of SendGrid's real raw-mode sample (its `email` field).
fn sendgrid_raw() -> Option<Vec<u8>> {
    let path = format!(
        "{}/channels/email/tests/fixtures/sendgrid_inbound_parse/raw_data_with_attachments.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let body = std::fs::read(path).ok()?;
    switchboard_channel_email::original_mime(Some("multipart/form-data; boundary=xYzZY"), &body)
}

fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// MB/s of `f` over `files`, run round-robin for `secs` seconds.
fn throughput(files: &[Vec<u8>], secs: f64, mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let mut bytes = 0usize;
    let mut sink = 0usize;
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        for file in files {
            sink = sink.wrapping_add(f(file));
            bytes += file.len();
        }
    }
    std::hint::black_box(sink);
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

const PYTHON_PARSE: &str = r#"
import sys, time, email, email.policy
from email.parser import BytesParser
files = [open(p, 'rb').read() for p in sys.argv[2:]]
secs = float(sys.argv[1])
parser = BytesParser(policy=email.policy.default)
n = 0; sink = 0
start = time.perf_counter()
while time.perf_counter() - start < secs:
    for f in files:
        m = parser.parsebytes(f)
        b = m.get_body(preferencelist=('plain', 'html'))
        sink += len(b.get_content()) if b is not None else 0
        n += len(f)
print(n / (time.perf_counter() - start) / 1e6)
"#;

fn parse_bench(core: usize) -> anyhow::Result<()> {
    let secs = env_or("BENCH_PARSE_SECS", 3) as f64;
    let mut files: Vec<Vec<u8>> = (0..4)
        .map(|n| thread_mail(n, "p@mail.example.com").into_bytes())
        .collect();
    if let Some(raw) = sendgrid_raw() {
        files.push(raw);
    }
    let total: usize = files.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let p = dir.path().join(format!("{i}.eml"));
        std::fs::write(&p, f)?;
        paths.push(p.display().to_string());
    }
    let config = switchboard_channel_email::EmailConfig::parse(&json!({
        "from": "coach@bench.example.test", "inbound_secret": SECRET }))
    .map_err(anyhow::Error::msg)?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("parse:{SECRET}"))
    );
    let now = switchboard::store::now_ms() / 1000;
    // Ours, on one core (a thread pinned to it).
    let (parser_only, adapter) = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(core);
            let parser_only = throughput(&files, secs, |f| {
                mail_parser::MessageParser::default()
                    .parse(f)
                    .and_then(|m| m.body_text(0).map(|t| t.len()))
                    .unwrap_or(0)
            });
            let adapter = throughput(&files, secs, |f| {
                switchboard_channel_email::parse(
                    &config,
                    Some("message/rfc822"),
                    Some(&auth),
                    f,
                    now,
                )
                .map(|i| i.mail.message.text.len())
                .unwrap_or(0)
            });
            (parser_only, adapter)
        })
        .join()
        .unwrap_or((0.0, 0.0))
    });
    // CPython's email package, on the same core.
    let python = std::env::var("SWITCHBOARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new("taskset")
        .args([
            "-c",
            &core.to_string(),
            &python,
            "-c",
            PYTHON_PARSE,
            &secs.to_string(),
        ])
        .args(&paths)
        .output();
    let python_rate = out.ok().filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<f64>()
            .ok()
    });
    println!(
        "mime parse ({} files, {:.0} KB, core {core}): mail-parser {parser_only:.1} MB/s; the email adapter (parse + new text + threading) {adapter:.1} MB/s; {}",
        files.len(),
        total as f64 / 1024.0,
        match python_rate {
            Some(p) => format!(
                "CPython email {p:.1} MB/s → mail-parser {:.1}x, adapter {:.1}x",
                parser_only / p,
                adapter / p
            ),
            None => "CPython email: not run (python3 or taskset missing)".into(),
        }
    );
    Ok(())
}
