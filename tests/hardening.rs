//! A tenant's key must not take the gateway down or read our network (issue "Hardening"): prompt
//! templates that never finish, tenant-set URLs toward loopback and the metadata address,
//! requests that never finish arriving, NUL characters on PostgreSQL, plain-text errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, CallbackReceiver, Mode, TestApp, test_config};
use serde_json::{Value, json};
use switchboard_channel::egress::{EgressPolicy, client_builder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn put_prompt(app: &TestApp, name: &str, body: &str) -> (u16, Value) {
    let res = app
        .http
        .put(format!("{}/v1/prompts/{name}", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "body": body }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("PUT /v1/prompts");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Three templates with nested `range(100000)` loops, saved at once: each is refused for doing
/// too much work, quickly, while `/healthz` keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_templates_are_refused_and_the_gateway_keeps_answering() {
    let app = TestApp::spawn(Backend::Sqlite).await.expect("app");
    let loops = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{{ j }}{% endfor %}{% endfor %}";
    let started = Instant::now();
    let saves = (0..3).map(|_| put_prompt(&app, "persona", loops));
    let health = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let (status, _) = app.get(&app.admin_key, "/healthz").await;
        (status.as_u16(), started.elapsed())
    };
    let (saved, (health_status, health_time)) =
        tokio::join!(futures::future::join_all(saves), health);
    for (status, body) in saved {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_template", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("too much work")),
            "{body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(health_status, 200);
    assert!(
        health_time < Duration::from_secs(2),
        "/healthz took {health_time:?}"
    );

    // Output bombs and recursion are refused too.
    for body in [
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ 'a' * 100000000 }}",
    ] {
        let (status, reply) = put_prompt(&app, "persona", body).await;
        assert_eq!(status, 400, "{body}: {reply}");
    }
    app.stop().await;
}

/// A template that passed its check but runs away at answer time (a large question makes it
/// loop longer): the answer still comes, from the built-in template, within the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_runs_away_at_answer_time_falls_back_to_the_built_in_one() {
    let app = TestApp::spawn(Backend::Sqlite).await.expect("app");
    // Loops as many times as the question has characters, squared: fine for the sample
    // question at save time, out of fuel for a long one.
    let body = "{% for a in question %}{% for b in question %}.{% endfor %}{% endfor %}Sorry, nothing on that.";
    let (status, reply) = put_prompt(&app, "no_answer", body).await;
    assert_eq!(status, 200, "{reply}");
    let question = "q".repeat(2_000);
    let started = Instant::now();
    let reply = app
        .send("runaway", &question, json!({ "wait": true }))
        .await;
    let text = reply["reply"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!text.is_empty() && !text.starts_with('.'), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

/// Tenant-set URLs toward our own network are refused when they are saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_urls_toward_internal_addresses_are_refused_when_saved() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.egress_allow.clear(), None)
        .await
        .expect("app");
    for (kind, config) in [
        ("api", json!({ "callback_url": "http://127.0.0.1:9/cb" })),
        ("api", json!({ "callback_url": "http://localhost:9/cb" })),
        ("api", json!({ "callback_url": "http://0.0.0.0:22/" })),
        ("api", json!({ "callback_url": "http://[::1]:8080/" })),
        (
            "telegram",
            json!({ "bot_token": "1:a", "mode": "polling", "api_url": "http://169.254.169.254/latest" }),
        ),
        (
            "whatsapp",
            json!({ "phone_number_id": "1", "access_token": "t", "app_secret": "s",
                    "verify_token": "v", "graph_url": "http://10.0.0.1/v21.0" }),
        ),
    ] {
        let res = app
            .http
            .post(format!("{}/v1/channels", app.base))
            .bearer_auth(&app.admin_key)
            .json(&json!({ "kind": kind, "config": config }))
            .send()
            .await
            .expect("POST /v1/channels");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{config}: {body}");
        assert_eq!(body["error"]["code"], "egress_refused", "{body}");
    }
    let (_, channels) = app.get(&app.admin_key, "/v1/channels").await;
    assert_eq!(
        channels["channels"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["kind"] != "api").count()),
        Some(0),
        "{channels}"
    );
    app.stop().await;
}

/// A callback URL saved while the operator allowed loopback, then sent to after the allowance
/// was withdrawn: the send is refused at connect time, nothing reaches the address, and the
/// dead letter says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_refused_address_stop_at_connect_time_and_say_why() {
    let receiver = CallbackReceiver::start(Mode::Accept).await;
    let app = TestApp::spawn(Backend::Sqlite).await.expect("app");
    app.set_callback(&receiver.url).await;
    let (tenant_id, admin_key) = (app.tenant_id.clone(), app.admin_key.clone());
    let db = app.stop().await;
    let mut config = test_config(&db);
    config.egress_allow.clear();
    let mut app = TestApp::start(db, config, None).await;
    app.tenant_id = tenant_id;
    app.admin_key = admin_key;
    app.send("someone", "hello", json!({})).await;
    let dead = app.dead_letters().await;
    let error = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("egress refused") && error.contains("loopback"),
        "{dead:?}"
    );
    assert!(
        receiver.seen().is_empty(),
        "the refused address was reached"
    );
    app.stop().await;
}

/// A tiny HTTP server that counts its requests and answers with `reply`.
async fn counting_server(reply: axum::response::Response<String>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let (parts, body) = reply.into_parts();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let response = axum::response::Response::from_parts(parts.clone(), body.clone());
        async move { response }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("127.0.0.1:{}", addr.port()), hits)
}

fn redirect_to(location: &str) -> axum::response::Response<String> {
    axum::response::Response::builder()
        .status(302)
        .header("location", location)
        .body(String::new())
        .expect("response")
}

/// The channel client: names are checked on what they resolve to, literals and redirects
/// before they connect, `host:port` entries allow that port only.
#[tokio::test]
async fn the_channel_client_checks_every_connection_redirects_included() {
    let (secret, secret_hits) = counting_server(
        axum::response::Response::builder()
            .body("the metadata".to_owned())
            .expect("response"),
    )
    .await;
    let secret_port = secret.rsplit(':').next().unwrap_or_default().to_owned();
    let (to_literal, _) = counting_server(redirect_to(&format!("http://{secret}/x"))).await;
    let (to_name, _) =
        counting_server(redirect_to(&format!("http://localhost:{secret_port}/x"))).await;
    // Only the two redirecting servers are allowed, each on its own port.
    let policy = EgressPolicy::parse(&[to_literal.as_str(), to_name.as_str()]).expect("policy");
    let client = client_builder(policy).build().expect("client");

    for url in [
        format!("http://{secret}/x"),
        format!("http://localhost:{secret_port}/x"),
        format!("http://{to_literal}/"),
        format!("http://{to_name}/"),
    ] {
        let error = client
            .get(&url)
            .send()
            .await
            .expect_err(&format!("{url} must be refused"));
        let chain = format!("{error:?}");
        assert!(chain.contains("egress refused"), "{url}: {chain}");
    }
    assert_eq!(
        secret_hits.load(Ordering::SeqCst),
        0,
        "the refused server was reached"
    );

    // With the secret server allowed by name, the same client reaches it.
    let allowed = EgressPolicy::parse(&[format!("localhost:{secret_port}")]).expect("policy");
    let client = client_builder(allowed).build().expect("client");
    let body = client
        .get(format!("http://localhost:{secret_port}/x"))
        .send()
        .await
        .expect("allowed")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "the metadata");
}

/// Half a request, then silence: the connection is closed after the header timeout. At the
/// connection cap, the next client waits until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_are_cut_off_and_connections_are_capped() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        |c| {
            c.header_timeout_ms = 500;
            c.max_connections = 4;
        },
        None,
    )
    .await
    .expect("app");
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fifth client is not served while four slow ones hold every slot…
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(250))
        .build()
        .expect("client");
    assert!(
        quick
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err(),
        "a fifth connection was served beyond the cap"
    );
    // …and each slow one is closed by the header timeout, which frees the slots.
    let started = Instant::now();
    for mut s in held {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a half-sent request was kept open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = app.get(&app.admin_key, "/healthz").await;
    assert_eq!(status.as_u16(), 200);

    // A connection that sends nothing at all is closed too.
    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent connection was kept open");
    app.stop().await;
}

/// NUL characters in knowledge content, a document title and a prompt body: never a 500, the
/// same outcome on both stores.
async fn nul_characters_are_stripped_or_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let res = app
        .http
        .post(format!("{}/v1/knowledge/documents", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "title": "Sle\u{0}ep", "content": "# Sleep\n\nDark\u{0} rooms help.\u{0}", "format": "markdown" }))
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status().as_u16(), 201);
    let (_, hits) = app.get(&app.admin_key, "/v1/knowledge/search?q=dark").await;
    assert_eq!(hits["hits"][0]["title"], "Sleep", "{hits}");
    assert_eq!(
        hits["hits"][0]["text"]
            .as_str()
            .map(|t| t.contains('\u{0}')),
        Some(false)
    );
    // A multipart text file with NULs, and its file name.
    let part = reqwest::multipart::Part::bytes(b"Magnesium\x00 at night.".to_vec())
        .file_name("mag\u{0}.txt");
    let res = app
        .http
        .post(format!("{}/v1/knowledge/documents", app.base))
        .bearer_auth(&app.admin_key)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload");
    assert!(res.status().as_u16() < 500, "{}", res.status());
    let (status, body) = put_prompt(&app, "persona", "You are {{ assistant }}.\u{0}").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_template");
    app.stop().await;
}

/// Errors that axum's extractors produce as plain text are JSON error bodies.
async fn every_error_is_a_json_error_body(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for path in [
        "/v1/knowledge/search?q=x&k=-1",
        "/v1/messages/01234567-0000-0000-0000-000000000000/attachments/abc",
        "/v1/conversations?limit=lots",
    ] {
        let res = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("GET");
        let status = res.status().as_u16();
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(kind.starts_with("application/json"), "{path}: {kind}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{path}: {body}"
        );
    }
    app.stop().await;
}

/// A page whose origin the tenant has not allowed learns why its socket was refused (the widget
/// asks `GET /v1/widget/config`, answered to any origin), instead of showing "Offline" for ever.
async fn widget_config_tells_a_page_whether_it_may_chat(backend: Backend) {
    let app = TestApp::spawn(backend).await.expect("app");
    let saved = app
        .http
        .put(format!("{}/v1/widget/settings", app.base))
        .bearer_auth(&app.admin_key)
        .json(&json!({"allowed_origins": ["https://shop.example"]}))
        .send()
        .await
        .expect("put settings");
    assert_eq!(saved.status().as_u16(), 200);
    let ask = |key: String, origin: &'static str| {
        app.http
            .get(format!("{}/v1/widget/config?key={key}", app.base))
            .header("origin", origin)
            .send()
    };
    for (origin, allowed) in [
        ("https://elsewhere.example", false),
        ("https://shop.example", true),
    ] {
        let res = ask(app.widget_key.clone(), origin).await.expect("config");
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("*")
        );
        let body: Value = res.json().await.expect("json");
        assert_eq!(body, json!({"origin": origin, "origin_allowed": allowed}));
    }
    // Without an `Origin` (a same-origin fetch: browsers leave it off) the gateway cannot tell,
    // and says so: `false` here made a page the gateway serves itself (/demo) disable its chat
    // when the check answered while the socket was down.
    let res = app
        .http
        .get(format!(
            "{}/v1/widget/config?key={}",
            app.base, app.widget_key
        ))
        .send()
        .await
        .expect("config");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body, json!({"origin": null, "origin_allowed": null}));
    // The admin key is not a widget key, and an unknown key is named as such; both readable
    // from any page.
    for key in [app.admin_key.clone(), "sbw_nosuchkey".to_owned()] {
        let res = ask(key, "https://shop.example").await.expect("config");
        assert_eq!(res.status().as_u16(), 401);
        assert!(res.headers().contains_key("access-control-allow-origin"));
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_key", "{body}");
    }
    app.stop().await;
}

both_backends!(
    widget_config_tells_a_page_whether_it_may_chat,
    nul_characters_are_stripped_or_refused,
    every_error_is_a_json_error_body
);

/// Connects the stand-in's bot with `config` (the token added); its channel id.
async fn connect_telegram(app: &TestApp, mut config: Value) -> String {
    config["bot_token"] = json!(common::telegram::TOKEN);
    let (status, connected) = channels_request(
        app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": config })),
    )
    .await;
    assert_eq!(status, 201, "{connected}");
    connected["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn channels_request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(&app.admin_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A channel can be changed (`PATCH`, checked like a new connection) and removed (`DELETE`:
/// the webhook is removed at Telegram, the channel takes no webhooks and is not listed).
async fn channels_can_be_changed_and_removed(backend: Backend) {
    let api = common::telegram::BotApi::start().await;
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (status, connected) = channels_request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": {
            "bot_token": common::telegram::TOKEN, "mode": "polling", "api_url": api.base } })),
    )
    .await;
    assert_eq!(status, 201, "{connected}");
    let id = connected["channel_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = format!("/v1/channels/{id}");

    // Into webhook mode: the secret is required, as on connect.
    let (status, body) = channels_request(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "config": { "mode": "webhook" } })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = channels_request(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "config": { "mode": "webhook", "webhook_secret": "s3cret" } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel_id"], id.as_str());
    assert!(
        body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("SWITCHBOARD_PUBLIC_URL")),
        "a webhook URL built without SWITCHBOARD_PUBLIC_URL is warned about: {body}"
    );
    let (_, listed) = app.get(&app.admin_key, "/v1/channels").await;
    let item = listed["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel_id"] == id.as_str()).cloned())
        .expect("listed");
    assert_eq!(item["mode"], "webhook", "{listed}");
    assert_eq!(
        item["bot_username"],
        common::telegram::BOT_USERNAME,
        "{listed}"
    );
    // Pointing it at our own network is refused.
    app.stop().await;
    let _ = app_with_strict_egress_refuses_a_patch(backend, &api).await;

    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = connect_telegram(
        &app,
        json!({ "webhook_secret": "s3cret", "api_url": api.base }),
    )
    .await;
    let path = format!("/v1/channels/{id}");
    let webhooks_deleted = api.calls("deleteWebhook").len();
    let (status, body) = channels_request(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook_removed"], true, "{body}");
    assert_eq!(api.calls("deleteWebhook").len(), webhooks_deleted + 1);
    let (_, listed) = app.get(&app.admin_key, "/v1/channels").await;
    assert!(
        !listed.to_string().contains(&id),
        "a removed channel is not listed: {listed}"
    );
    let update = app
        .http
        .post(format!("{}/webhooks/telegram/{id}", app.base))
        .header("X-Telegram-Bot-Api-Secret-Token", "s3cret")
        .json(&json!({ "update_id": 1, "message": { "message_id": 1, "date": 0,
            "chat": { "id": 5, "type": "private" }, "from": { "id": 5, "is_bot": false, "first_name": "A" },
            "text": "hi" } }))
        .send()
        .await
        .expect("webhook");
    assert_eq!(update.status().as_u16(), 404);
    for method in [reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let (status, _) =
            channels_request(&app, method, &path, Some(json!({ "config": {} }))).await;
        assert_eq!(status, 404);
    }
    let (_, channels) = app.get(&app.admin_key, "/v1/channels").await;
    let api_channel = channels["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "api").cloned());
    if let Some(api_channel) = api_channel {
        let path = format!(
            "/v1/channels/{}",
            api_channel["channel_id"].as_str().unwrap_or_default()
        );
        let (status, _) = channels_request(&app, reqwest::Method::DELETE, &path, None).await;
        assert_eq!(status, 400);
    }
    app.stop().await;
}

/// With loopback not allowed, a PATCH toward it is refused (the channel was connected while it
/// was allowed).
async fn app_with_strict_egress_refuses_a_patch(
    backend: Backend,
    api: &common::telegram::BotApi,
) -> Option<()> {
    let app = TestApp::spawn(backend).await?;
    let id = connect_telegram(&app, json!({ "mode": "polling", "api_url": api.base })).await;
    let (tenant_id, admin_key) = (app.tenant_id.clone(), app.admin_key.clone());
    let db = app.stop().await;
    let mut config = test_config(&db);
    config.egress_allow.clear();
    let mut app = TestApp::start(db, config, None).await;
    app.tenant_id = tenant_id;
    app.admin_key = admin_key;
    let (status, body) = channels_request(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/channels/{id}"),
        Some(json!({ "config": { "api_url": "http://169.254.169.254/" } })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "egress_refused", "{body}");
    app.stop().await;
    Some(())
}

/// `getMe` answered without the fields Telegram documents as optional is read; a `getMe` that
/// fails at connect is retried in the background, and the listing says so until it works.
async fn get_me_is_lenient_and_retried(backend: Backend) {
    let api = common::telegram::BotApi::start().await;
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    api.fail_next(
        "getMe",
        1,
        200,
        json!({ "ok": true, "result": { "id": 123456, "is_bot": true, "first_name": "Coach",
                "username": common::telegram::BOT_USERNAME } }),
    );
    let (status, body) = channels_request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": {
            "bot_token": common::telegram::TOKEN, "mode": "polling", "api_url": api.base } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("get_me_error").is_none(), "{body}");
    let (_, listed) = app.get(&app.admin_key, "/v1/channels").await;
    assert!(
        listed.to_string().contains(common::telegram::BOT_USERNAME),
        "{listed}"
    );

    // Another bot whose getMe fails twice with a 502, then works.
    app.stop().await;
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    api.fail_next(
        "getMe",
        2,
        502,
        json!({ "ok": false, "error_code": 502, "description": "Bad Gateway" }),
    );
    let (status, body) = channels_request(
        &app,
        reqwest::Method::POST,
        "/v1/channels",
        Some(json!({ "kind": "telegram", "config": {
            "bot_token": common::telegram::TOKEN, "mode": "polling", "api_url": api.base } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["get_me_error"].is_string(), "{body}");
    assert!(body["warnings"].to_string().contains("getMe"), "{body}");
    common::eventually("getMe retried", Duration::from_secs(30), || async {
        let (_, listed) = app.get(&app.admin_key, "/v1/channels").await;
        (listed["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["kind"] == "telegram").cloned())?["bot_username"]
            == common::telegram::BOT_USERNAME)
            .then_some(())
    })
    .await;
    app.stop().await;
}

both_backends!(
    channels_can_be_changed_and_removed,
    get_me_is_lenient_and_retried
);
