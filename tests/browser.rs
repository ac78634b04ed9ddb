//! The widget end to end in a real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/widget_e2e.mjs`) opens `/demo`, sends a message, sees
//! the streamed answer, loses its connection mid-stream, types while offline, and ends with every
//! message exactly once. A screenshot is saved as `target/widget-e2e.png`.
//!
//! Between the browser and the gateway sits a TCP proxy this test controls: `POST /cut` drops
//! every open connection (the network failing under the page), `/block` refuses new ones (the
//! page is offline), `/unblock` lets them through again.
//!
//! Needs `node`, Chromium and `npm ci` in `tests/browser`; without them the test prints SKIPPED,
//! unless `SWITCHBOARD_TEST_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::routing::post;
use switchboard::answer::{Answer, Deltas, Responder, Turn};
use switchboard::core::TenantSlug;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::{Backend, TestApp};

/// Streams `You said: <text>.` and twenty filler words, one every 150 ms.
struct SlowStreamingEcho;

fn words(text: &str) -> Vec<String> {
    let mut words = vec![format!("You said: {text}.")];
    words.extend((1..=20).map(|i| format!(" word{i}")));
    words
}

#[async_trait]
impl Responder for SlowStreamingEcho {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        Ok(Answer {
            trace: None,
            grounding: None,
            kind: switchboard::answer::AnswerKind::Answered,
            text: words(&turn.text).concat(),
            citations: Vec::new(),
        })
    }

    async fn respond_streaming(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        for word in words(&turn.text) {
            deltas.delta(&word);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        self.respond(turn).await
    }
}

/// A TCP proxy whose connections the test can cut.
#[derive(Clone, Default)]
struct Proxy {
    blocked: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<CancellationToken>>>,
}

impl Proxy {
    async fn start(self, upstream: std::net::SocketAddr) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if self.blocked.load(Ordering::SeqCst) {
                    drop(client); // refused: the page is "offline"
                    continue;
                }
                let cut = CancellationToken::new();
                self.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(cut.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        addr
    }

    fn cut(&self) {
        for token in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            token.cancel();
        }
    }

    async fn control(self) -> std::net::SocketAddr {
        let app = axum::Router::new()
            .route(
                "/cut",
                post({
                    let p = self.clone();
                    move || async move { p.cut() }
                }),
            )
            .route(
                "/block",
                post({
                    let p = self.clone();
                    move || async move { p.blocked.store(true, Ordering::SeqCst) }
                }),
            )
            .route(
                "/unblock",
                post({
                    let p = self.clone();
                    move || async move { p.blocked.store(false, Ordering::SeqCst) }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind control");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

fn skip(why: &str) {
    assert!(
        std::env::var("SWITCHBOARD_TEST_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "SWITCHBOARD_TEST_REQUIRE_BROWSER=1 but {why}"
    );
    eprintln!(
        "SKIPPED (browser): {why}; run `apt-get install chromium` and `npm ci` in tests/browser"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_page_survives_a_dropped_connection_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script_dir = root.join("tests/browser");
    let Some(chromium) = chromium() else {
        return skip("Chromium is not installed (/usr/bin/chromium)");
    };
    if !script_dir.join("node_modules/playwright-core").exists() {
        return skip("tests/browser/node_modules is missing");
    }
    let Some(mut app) =
        TestApp::spawn_with(Backend::Sqlite, |_| {}, Some(Arc::new(SlowStreamingEcho))).await
    else {
        return;
    };
    let demo = app
        .store
        .create_tenant(&TenantSlug::parse("demo").expect("slug"), "Demo")
        .await
        .expect("demo tenant");
    app.admin_key = demo.admin_key;
    let proxy = Proxy::default();
    let page_addr = proxy.clone().start(app.addr).await;
    let control = proxy.control().await;
    let screenshot = root.join("target/widget-e2e.png");
    std::fs::create_dir_all(root.join("target")).expect("target dir");

    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("widget_e2e.mjs")
            .current_dir(&script_dir)
            .env("SB_DEMO_URL", format!("http://{page_addr}/demo"))
            .env("SB_CONTROL_URL", format!("http://{control}"))
            .env("SB_SCREENSHOT", &screenshot)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finishes within 2 minutes")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.contains("widget e2e: ok"),
        "the browser story failed"
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );

    // What the page showed is what is stored: two questions, two answers, once each.
    let conversation = app.first_conversation("widget").await;
    let messages = app.messages(&conversation).await;
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(messages.len(), 4, "{texts:?}");
    assert_eq!(texts[0], "hello from the browser");
    assert!(texts[1].starts_with("You said: hello from the browser."));
    assert_eq!(texts[2], "sent while offline");
    assert!(texts[3].starts_with("You said: sent while offline."));
    app.stop().await;
}
