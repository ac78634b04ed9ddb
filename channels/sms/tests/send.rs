//! Sends and downloads against a stand-in Twilio API on 127.0.0.1:0.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use switchboard_channel::{Button, Content, Media, OutboundMessage, SendError, Template};
use switchboard_channel_sms::segments::split;
use switchboard_channel_sms::{SmsConfig, SmsSender};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    form: Vec<(String, String)>,
}

impl Seen {
    fn get(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer: status, extra header, JSON body.
type Answer = (u16, Option<(&'static str, &'static str)>, Value);

#[derive(Default)]
struct Twilio {
    seen: Mutex<Vec<Seen>>,
    answers: Mutex<VecDeque<Answer>>,
}

impl Twilio {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn messages(
    State(twilio): State<Arc<Twilio>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let n = {
        let mut seen = twilio.seen.lock().expect("lock");
        seen.push(Seen {
            path: uri.path().to_owned(),
            authorization: text(header::AUTHORIZATION),
            content_type: text(header::CONTENT_TYPE),
            form: form_urlencoded::parse(&body).into_owned().collect(),
        });
        seen.len()
    };
    let answer = twilio.answers.lock().expect("lock").pop_front();
    let (status, extra, body) = answer.unwrap_or((
        201,
        None,
        json!({ "sid": format!("SM{n:032}"), "status": "queued" }),
    ));
    let mut response = (
        StatusCode::from_u16(status).expect("status"),
        axum::Json(body),
    )
        .into_response();
    if let Some((name, value)) = extra {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

async fn media(uri: Uri, headers: HeaderMap) -> Response {
    let authorized = headers.get(header::AUTHORIZATION).is_some();
    match uri.path() {
        "/media/ok" if authorized => (StatusCode::OK, "GIF89a-bytes").into_response(),
        "/media/ok" => StatusCode::UNAUTHORIZED.into_response(),
        "/media/big" => (StatusCode::OK, vec![0u8; 17 * 1024 * 1024]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn spawn(answers: Vec<Answer>) -> (String, Arc<Twilio>) {
    let twilio = Arc::new(Twilio {
        answers: Mutex::new(answers.into()),
        ..Twilio::default()
    });
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
        .route("/media/{name}", get(media))
        .with_state(twilio.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (format!("http://{addr}"), twilio)
}

fn config(api_url: &str, extra: Value) -> SmsConfig {
    let mut value = json!({
        "account_sid": SID, "auth_token": "token-1", "from": "+15005550006", "api_url": api_url
    });
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            value.as_object_mut().expect("object").remove(k);
        } else {
            value[k] = v.clone();
        }
    }
    SmsConfig::parse(&value).expect("valid config")
}

fn sender() -> SmsSender {
    SmsSender::new(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
    )
}

fn outbound(text: &str) -> OutboundMessage {
    OutboundMessage {
        delivery_id: "d1".into(),
        conversation_id: "c1".into(),
        message_id: "m1".into(),
        seq: 1,
        to: "+15558675310".into(),
        text: text.into(),
        content: Content::default(),
        parts_sent: 0,
        progress: Default::default(),
        contact_last_wrote_at: None,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A GSM-7 text of `len` characters with spaces to cut at.
fn gsm_text(len: usize) -> String {
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        .repeat(len / 50 + 1)
        .chars()
        .take(len)
        .collect()
}

#[tokio::test]
async fn a_send_posts_the_form_with_basic_auth() {
    let (url, twilio) = spawn(Vec::new()).await;
    let receipt = sender()
        .send(
            &config(&url, json!({})),
            &outbound("Hello there"),
            Some("https://gw.example/v1/webhooks/sms/ch1"),
        )
        .await
        .expect("sent");
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some(format!("SM{:032}", 1).as_str())
    );
    let seen = twilio.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        request.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(basic(SID, "token-1").as_str())
    );
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.get("To"), Some("+15558675310"));
    assert_eq!(request.get("From"), Some("+15005550006"));
    assert_eq!(request.get("Body"), Some("Hello there"));
    assert_eq!(
        request.get("StatusCallback"),
        Some("https://gw.example/v1/webhooks/sms/ch1")
    );
    assert_eq!(request.get("MessagingServiceSid"), None);
    assert_eq!(request.get("MediaUrl"), None);
}

#[tokio::test]
async fn an_api_key_a_messaging_service_and_media_by_url() {
    let (url, twilio) = spawn(Vec::new()).await;
    let config = config(
        &url,
        json!({ "from": null, "messaging_service_sid": "MG123",
                "api_key_sid": "SK123", "api_key_secret": "key-secret" }),
    );
    let mut msg = outbound("Your chart");
    msg.content.media = Some(Media {
        kind: "image".into(),
        url: Some("https://cdn.example/chart.png".into()),
        id: None,
        filename: None,
    });
    sender().send(&config, &msg, None).await.expect("sent");
    // Media alone goes without a body.
    msg.text = String::new();
    sender().send(&config, &msg, None).await.expect("sent");
    let seen = twilio.seen();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(basic("SK123", "key-secret").as_str())
    );
    assert_eq!(seen[0].get("MessagingServiceSid"), Some("MG123"));
    assert_eq!(seen[0].get("From"), None);
    assert_eq!(
        seen[0].get("MediaUrl"),
        Some("https://cdn.example/chart.png")
    );
    assert_eq!(seen[0].get("Body"), Some("Your chart"));
    assert_eq!(seen[0].get("StatusCallback"), None);
    assert_eq!(seen[1].get("Body"), None);
    assert_eq!(
        seen[1].get("MediaUrl"),
        Some("https://cdn.example/chart.png")
    );
}

#[tokio::test]
async fn buttons_go_as_numbered_lines() {
    let (url, twilio) = spawn(Vec::new()).await;
    let mut msg = outbound("Ready?");
    msg.content.buttons = vec![
        Button {
            id: "yes".into(),
            title: "Yes".into(),
            url: None,
        },
        Button {
            id: "no".into(),
            title: "No".into(),
            url: None,
        },
    ];
    sender()
        .send(&config(&url, json!({})), &msg, None)
        .await
        .expect("sent");
    assert_eq!(twilio.seen()[0].get("Body"), Some("Ready?\n1. Yes\n2. No"));
}

#[tokio::test]
async fn what_sms_cannot_carry_is_refused_before_any_request() {
    let (url, twilio) = spawn(Vec::new()).await;
    let config = config(&url, json!({}));
    let mut template = outbound("x");
    template.content.template = Some(Template {
        name: "hello".into(),
        language: None,
        parameters: Vec::new(),
    });
    let mut by_id = outbound("x");
    by_id.content.media = Some(Media {
        kind: "image".into(),
        url: None,
        id: Some("123".into()),
        filename: None,
    });
    for msg in [template, by_id, outbound("")] {
        let err = sender()
            .send(&config, &msg, None)
            .await
            .expect_err("refused");
        assert!(matches!(err, SendError::Permanent(_)), "{err:?}");
    }
    assert!(twilio.seen().is_empty());
}

#[tokio::test]
async fn a_long_text_goes_as_few_messages_as_twilio_concatenates() {
    let (url, twilio) = spawn(Vec::new()).await;
    let config = config(&url, json!({}));
    // 1,000 GSM-7 characters: 7 segments, one request.
    let receipt = sender()
        .send(&config, &outbound(&gsm_text(1000)), None)
        .await
        .expect("sent");
    assert_eq!(twilio.seen().len(), 1);
    assert_eq!(twilio.seen()[0].get("Body").map(str::len), Some(1000));
    assert!(receipt.provider_message_id.is_some());

    // 3,000 characters with at most 10 segments a message: two requests, in order; the
    // receipt names the last.
    let text = gsm_text(3000);
    let msg = outbound(&text);
    let receipt = sender().send(&config, &msg, None).await.expect("sent");
    let seen = twilio.seen();
    assert_eq!(seen.len(), 3);
    let parts = split(&text, 10);
    assert_eq!(parts.len(), 2);
    assert_eq!(seen[1].get("Body"), Some(parts[0].as_str()));
    assert_eq!(seen[2].get("Body"), Some(parts[1].as_str()));
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some(format!("SM{:032}", 3).as_str())
    );
    assert_eq!(msg.progress.get(), 2);

    // With max_segments 1, every message is one SMS.
    let short = config_with_segments(&url, 1);
    sender()
        .send(&short, &outbound(&gsm_text(400)), None)
        .await
        .expect("sent");
    let seen = twilio.seen();
    assert_eq!(seen.len(), 6, "400 characters in 160-character messages");
    assert!(
        seen[3..]
            .iter()
            .all(|s| s.get("Body").is_some_and(|b| b.len() <= 160))
    );
}

fn config_with_segments(url: &str, max: u32) -> SmsConfig {
    config(url, json!({ "max_segments": max }))
}

#[tokio::test]
async fn a_failure_after_a_part_is_partial_and_the_retry_resumes() {
    let text = gsm_text(3000);
    let parts = split(&text, 10);
    let (url, twilio) = spawn(vec![
        (201, None, json!({ "sid": "SMfirst" })),
        (
            500,
            None,
            json!({ "code": 20500, "message": "Internal Server Error", "status": 500 }),
        ),
    ])
    .await;
    let config = config(&url, json!({}));
    let msg = outbound(&text);
    let err = sender().send(&config, &msg, None).await.expect_err("fails");
    match &err {
        SendError::Partial { parts_sent, error } => {
            assert_eq!(*parts_sent, 1);
            assert!(matches!(**error, SendError::Transient(_)), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(msg.progress.get(), 1);

    // The outbox retries with parts_sent = 1: only the second part goes.
    let mut retry = outbound(&text);
    retry.parts_sent = 1;
    let receipt = sender().send(&config, &retry, None).await.expect("sent");
    let seen = twilio.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].get("Body"), Some(parts[1].as_str()));
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some(format!("SM{:032}", 3).as_str())
    );
    assert_eq!(retry.progress.get(), 2);

    // A message already sent whole sends nothing.
    let mut done = outbound(&text);
    done.parts_sent = 2;
    sender()
        .send(&config, &done, None)
        .await
        .expect("nothing left");
    assert_eq!(twilio.seen().len(), 3);
}

#[tokio::test]
async fn twilio_errors_are_classified() {
    let (url, _twilio) = spawn(vec![
        (
            400,
            None,
            json!({ "code": 21610, "message": "Attempt to send to unsubscribed recipient",
                    "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400 }),
        ),
        (
            400,
            None,
            json!({ "code": 21211, "message": "The 'To' number +1555 is not a valid phone number.", "status": 400 }),
        ),
        (
            429,
            Some(("retry-after", "7")),
            json!({ "code": 20429, "message": "Too Many Requests", "status": 429 }),
        ),
        (
            401,
            None,
            json!({ "code": 20003, "message": "Authenticate", "status": 401 }),
        ),
        (502, None, Value::Null),
    ])
    .await;
    let config = config(&url, json!({}));
    let msg = outbound("hi");
    let sms = sender();
    let send = || sms.send(&config, &msg, None);
    assert!(matches!(send().await, Err(SendError::OptedOut(r)) if r.contains("21610")));
    assert!(matches!(send().await, Err(SendError::Unreachable(r)) if r.contains("21211")));
    assert!(matches!(
        send().await,
        Err(SendError::RetryAfter(wait, _)) if wait == Duration::from_secs(7)
    ));
    assert!(
        matches!(send().await, Err(SendError::Permanent(r)) if r.contains("20003: Authenticate"))
    );
    assert!(matches!(send().await, Err(SendError::Transient(_))));

    // Nobody listening: a transient error, and no URL or secret in it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    match sender()
        .send(&self::config(&dead_url, json!({})), &msg, None)
        .await
    {
        Err(SendError::Transient(reason)) => {
            assert!(!reason.contains("token-1"), "{reason}");
            assert!(!reason.contains(SID), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn media_downloads_with_the_accounts_auth_and_a_cap() {
    let (url, _twilio) = spawn(Vec::new()).await;
    let config = config(&url, json!({}));
    let bytes = sender()
        .download(&config, &format!("{url}/media/ok"))
        .await
        .expect("downloaded");
    assert_eq!(bytes, b"GIF89a-bytes");
    let missing = sender()
        .download(&config, &format!("{url}/media/gone"))
        .await;
    assert!(
        matches!(missing, Err(SendError::Permanent(_))),
        "{missing:?}"
    );
    let big = sender()
        .download(&config, &format!("{url}/media/big"))
        .await;
    match big {
        Err(SendError::Permanent(reason)) => assert!(reason.contains("larger"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The credentials never go to a host that is neither Twilio nor api_url's.
    let elsewhere = sender()
        .download(&config, "http://www.contoso.com/media/ok")
        .await;
    assert!(
        matches!(elsewhere, Err(SendError::Permanent(_))),
        "{elsewhere:?}"
    );
}
