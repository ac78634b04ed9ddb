//! A local stand-in for Twilio Programmable Messaging: `POST
//! /2010-04-01/Accounts/{AccountSid}/Messages.json` (form-encoded, HTTP Basic auth) answering as
//! Twilio documents (`201` with a `sid`, or a `{"code","message","status"}` error), and MMS media
//! served behind the same Basic auth. Inbound webhooks are signed here as Twilio signs them.

use std::sync::{Arc, Mutex};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

pub const ACCOUNT_SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";
/// A recipient the stand-in refuses with 21610 (the number replied STOP).
pub const OPTED_OUT: &str = "+15005550021";
/// A recipient the stand-in refuses with 21211 (not a valid number).
pub const INVALID: &str = "+15005550001";
/// What every media download returns.
pub const MEDIA_BYTES: &[u8] = b"\x89PNG twilio media";

/// One `Messages.json` call: the Basic auth user and the form fields.
#[derive(Debug, Clone)]
pub struct SentSms {
    pub user: String,
    pub form: Vec<(String, String)>,
}

impl SentSms {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Sent = Arc<Mutex<Vec<SentSms>>>;

/// Starts the stand-in; returns its base URL (the channel's `api_url`) and what it received.
pub async fn twilio_stand_in() -> (String, Sent) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    async fn messages(
        State(sent): State<Sent>,
        Path(account): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        let Some(user) = basic_user(&headers) else {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"code": 20003, "message": "Authenticate", "status": 401})),
            );
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let to = form
            .iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if to == OPTED_OUT {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}),
                ),
            );
        }
        if to == INVALID {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}),
                ),
            );
        }
        let mut sent = sent.lock().expect("lock");
        sent.push(SentSms { user, form });
        let sid = format!("SM{:032}", sent.len());
        (
            StatusCode::CREATED,
            axum::Json(json!({"sid": sid, "account_sid": account, "to": to, "status": "queued"})),
        )
    }
    fn basic_user(headers: &HeaderMap) -> Option<String> {
        let value = headers.get("authorization")?.to_str().ok()?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.strip_prefix("Basic ")?)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        (password == AUTH_TOKEN).then(|| user.to_owned())
    }
    let sent: Sent = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            axum::routing::post(messages),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{sid}/Media/{media}",
            axum::routing::get(|headers: HeaderMap| async move {
                if basic_user(&headers).is_none() {
                    return (StatusCode::UNAUTHORIZED, Vec::new());
                }
                (StatusCode::OK, MEDIA_BYTES.to_vec())
            }),
        )
        .with_state(sent.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, sent)
}

/// `X-Twilio-Signature` for a form POST to `url`, as Twilio computes it: base64 of HMAC-SHA1
/// over the URL followed by every parameter's name and value, sorted by name.
pub fn sign(url: &str, form: &[(String, String)]) -> String {
    let mut params = form.to_vec();
    params.sort();
    let mut data = url.to_owned();
    for (k, v) in params {
        data.push_str(&k);
        data.push_str(&v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(AUTH_TOKEN.as_bytes()).expect("key");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An inbound SMS form as Twilio posts it (the fields of its documented example).
pub fn inbound(sid: &str, from: &str, body: &str) -> Vec<(String, String)> {
    [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94103"),
        ("SmsSid", sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", FROM),
        ("MessagingServiceSid", ""),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A form as an `application/x-www-form-urlencoded` body.
pub fn encode(form: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}
