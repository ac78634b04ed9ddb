//! Inbound against real captures (Mailgun routes, SendGrid Inbound Parse), Mailgun's signature
//! vectors, hand-written RFC 5322 mails (replies, auto-replies, list mail, bounces) and hostile
//! input. Fixture origins: `tests/fixtures/README.md`.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_channel::{InboundError, InboundEvent, Secret};
use switchboard_channel_email::inbound::{self, verify_mailgun_signature};
use switchboard_channel_email::{EmailConfig, attachment, events, original_mime, parse};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SECRET: &str = "parse-secret";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{path}")).expect("fixture")
}

/// A capture: dummy status line, request headers, blank line, body → (content type, body).
fn capture(path: &str) -> (String, Vec<u8>) {
    let raw = fixture(path);
    let crlf = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let (end, skip) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 < b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b).expect("a header block"),
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("a content type");
    (content_type, raw[end + skip..].to_vec())
}

fn config(value: Value) -> EmailConfig {
    EmailConfig::parse(&value).expect("config")
}

fn mailgun_config() -> EmailConfig {
    config(json!({ "from": "bot@multimail.mailgun.org", "mailgun_signing_key": "foo" }))
}

fn basic_config() -> EmailConfig {
    config(json!({ "from": "Coach <coach@acme.example>", "inbound_secret": SECRET }))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn unauthorized(result: Result<inbound::Inbound, InboundError>) -> String {
    match result {
        Err(InboundError::Unauthorized(why)) => why,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

fn raw(mail: &str) -> Result<inbound::Inbound, InboundError> {
    parse(
        &basic_config(),
        Some("message/rfc822"),
        Some(&basic("mta", SECRET)),
        mail.as_bytes(),
        0,
    )
}

// ---------------------------------------------------------------------------------------------
// Mailgun

#[test]
fn every_mailgun_signature_vector_verifies_as_expected() {
    let file: Value =
        serde_json::from_slice(&fixture("mailgun_webhook_signature.json")).expect("json");
    let vectors = file["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 8);
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let expected = v["expected_valid"].as_bool().expect("expected_valid");
        let (ts, token) = (
            v["timestamp"].as_str().expect("ts"),
            v["token"].as_str().expect("token"),
        );
        let Some(key) = v["signing_key"].as_str() else {
            // No key configured: a form carrying the fields is refused, whatever they say.
            let body = form_body(&[
                ("timestamp", ts),
                ("token", token),
                ("signature", v["signature"].as_str().unwrap_or_default()),
                ("from", "a@b.example"),
            ]);
            let config = config(json!({ "from": "bot@x.example" }));
            let why = unauthorized(parse(
                &config,
                Some("application/x-www-form-urlencoded"),
                None,
                &body,
                ts.parse().expect("ts"),
            ));
            assert!(why.contains("mailgun_signing_key"), "{name}: {why}");
            assert!(!expected, "{name}");
            continue;
        };
        let Some(signature) = v["signature"].as_str() else {
            assert!(!expected, "{name}: a missing signature never verifies");
            continue;
        };
        assert_eq!(
            verify_mailgun_signature(&Secret::new(key), ts, token, signature),
            expected,
            "{name}"
        );
        if let Some(correct) = v["note"]
            .as_str()
            .and_then(|n| n.strip_prefix("correct HMAC for this token would be "))
        {
            assert!(
                verify_mailgun_signature(&Secret::new(key), ts, token, correct),
                "{name}: the note's HMAC"
            );
        }
    }
}

fn form_body(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

fn sign(key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn mailgun_parsed_route_capture_is_verified_and_normalized() {
    let (ct, body) = capture("multi_mail_captures/mailgun_parsed/valid.txt");
    assert!(ct.starts_with("multipart/form-data"));
    let ts = 1_366_071_615;
    let inbound = parse(&mailgun_config(), Some(&ct), None, &body, ts + 60).expect("valid");
    assert_eq!(inbound.form, "mailgun");
    assert_eq!(
        inbound.replay_key.as_deref(),
        Some("5o56tmpwd3dnwthehwclemd-i-7u2gv9vb3u745ywj67d0mc87")
    );
    let mail = &inbound.mail;
    let m = &mail.message;
    assert_eq!(
        m.provider_id,
        "E102015D-F580-4316-81FA-7324838A3AE8@opennorth.ca"
    );
    assert_eq!(m.contact.external_id, "james@opennorth.ca");
    assert_eq!(m.contact.display_name.as_deref(), Some("James McKinney"));
    assert_eq!(m.kind, "email");
    assert_eq!(
        m.sent_at,
        Some(1_366_071_612),
        "Mon, 15 Apr 2013 20:20:12 -0400"
    );
    assert_eq!(
        m.text,
        "bold text\n\nsome more bold text\n\nsome italic text"
    );
    assert_eq!(mail.subject.as_deref(), Some("Test"));
    assert_eq!(mail.automatic, None);
    assert!(mail.references.is_empty());
    // To: foo+bar@… is a plus address of the From's local part `foo`? Not here (`bot`).
    assert!(mail.reply_tokens.is_empty());
    let names: Vec<_> = m
        .attachments
        .iter()
        .map(|a| {
            (
                a.kind.as_str(),
                a.reference.as_str(),
                a.mime_type.as_deref(),
                a.caption.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("document", "part:0", Some("text/plain"), Some("foo.txt")),
            ("document", "part:1", Some("text/plain"), Some("bar.txt")),
        ]
    );
    let (mime, filename, bytes) =
        attachment(&mailgun_config(), Some(&ct), &body, 0).expect("attachment 0");
    assert_eq!(
        (mime.as_str(), filename.as_deref()),
        ("text/plain", Some("foo.txt"))
    );
    assert_eq!(
        bytes,
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n"
    );
    assert_eq!(bytes.len(), 58, "the capture's Content-Length");
    let (_, _, bytes) = attachment(&mailgun_config(), Some(&ct), &body, 1).expect("attachment 1");
    assert!(bytes.starts_with(b"Nam accumsan"));
    assert_eq!(attachment(&mailgun_config(), Some(&ct), &body, 2), None);
    assert_eq!(
        original_mime(Some(&ct), &body),
        None,
        "parsed mode has no MIME"
    );
    assert_eq!(events(&inbound).len(), 1);

    // The same mail to a channel sending as foo@…: `foo+bar@` carries the reply token `bar`.
    let foo = config(json!({ "from": "foo@multimail.mailgun.org", "mailgun_signing_key": "foo" }));
    let inbound = parse(&foo, Some(&ct), None, &body, ts).expect("valid");
    assert_eq!(inbound.mail.reply_tokens, vec!["bar".to_owned()]);
}

#[test]
fn mailgun_timestamps_must_be_fresh_either_way() {
    let (ct, body) = capture("multi_mail_captures/mailgun_parsed/valid.txt");
    let ts = 1_366_071_615;
    for now in [ts + 901, ts - 901, 0, i64::MAX, i64::MIN] {
        assert_eq!(
            unauthorized(parse(&mailgun_config(), Some(&ct), None, &body, now)),
            "stale timestamp",
            "now = {now}"
        );
    }
    for now in [ts + 900, ts - 900] {
        assert!(parse(&mailgun_config(), Some(&ct), None, &body, now).is_ok());
    }
    let strict = config(json!({
        "from": "bot@x.example", "mailgun_signing_key": "foo", "max_age_secs": 30
    }));
    assert!(parse(&strict, Some(&ct), None, &body, ts + 31).is_err());
}

#[test]
fn mailgun_mime_capture_parses_body_mime() {
    let (ct, body) = capture("multi_mail_captures/mailgun_raw/valid.txt");
    assert_eq!(ct, "application/x-www-form-urlencoded");
    let inbound = parse(&mailgun_config(), Some(&ct), None, &body, 1_366_071_615).expect("valid");
    assert_eq!(inbound.form, "mailgun_mime");
    let mail = &inbound.mail;
    assert_eq!(mail.subject.as_deref(), Some("Test"));
    assert_eq!(mail.message.contact.external_id, "james@opennorth.ca");
    assert!(
        mail.message.provider_id.ends_with("@opennorth.ca"),
        "{}",
        mail.message.provider_id
    );
    assert!(
        mail.message.text.contains("bold text"),
        "{:?}",
        mail.message.text
    );
    assert!(
        !mail.message.text.contains("> multiline"),
        "{:?}",
        mail.message.text
    );
    let mime = original_mime(Some(&ct), &body).expect("body-mime");
    assert!(mime.starts_with(b"Received: by luna.mailgun.net"));
    for (i, a) in mail.message.attachments.iter().enumerate() {
        let (mime, _, _) = attachment(&mailgun_config(), Some(&ct), &body, i).expect("attachment");
        assert_eq!(Some(mime), a.mime_type);
    }
}

#[test]
fn invalid_missing_and_foreign_key_captures_are_refused() {
    for (path, why) in [
        ("mailgun_parsed/invalid.txt", "does not match"),
        ("mailgun_raw/invalid.txt", "does not match"),
        ("mailgun_parsed/missing.txt", "missing Mailgun signature"),
        ("mailgun_raw/missing.txt", "missing Mailgun signature"),
        // Signed with the capturer's real key, not `foo`.
        ("mailgun_parsed/spam.txt", "does not match"),
        ("mailgun_raw/spam.txt", "does not match"),
    ] {
        let (ct, body) = capture(&format!("multi_mail_captures/{path}"));
        let ts: i64 = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "timestamp")
            .and_then(|(_, v)| v.parse().ok())
            .expect("timestamp");
        let got = unauthorized(parse(&mailgun_config(), Some(&ct), None, &body, ts));
        assert!(got.contains(why), "{path}: {got}");
        // No key configured: refused too.
        let keyless = config(json!({ "from": "bot@x.example", "inbound_secret": "s" }));
        unauthorized(parse(
            &keyless,
            Some(&ct),
            Some(&basic("u", "s")),
            &body,
            ts,
        ));
    }
    // The valid capture under another key.
    let (ct, body) = capture("multi_mail_captures/mailgun_parsed/valid.txt");
    let other = config(json!({ "from": "bot@x.example", "mailgun_signing_key": "bar" }));
    unauthorized(parse(&other, Some(&ct), None, &body, 1_366_071_615));
}

/// The GTUBE capture re-signed under our key: the provider's spam flag marks it automatic.
#[test]
fn mailgun_spam_flag_marks_the_mail_automatic() {
    let (ct, body) = capture("multi_mail_captures/mailgun_parsed/spam.txt");
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect("field")
    };
    let (ts, token) = (get("timestamp"), get("token"));
    let signature = sign("foo", &ts, &token);
    let resigned: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| {
            if k == "signature" {
                (k.as_str(), signature.as_str())
            } else {
                (k.as_str(), v.as_str())
            }
        })
        .collect();
    let body = form_body(&resigned);
    let inbound = parse(
        &mailgun_config(),
        Some(&ct),
        None,
        &body,
        ts.parse().expect("ts"),
    )
    .expect("signed");
    assert_eq!(inbound.mail.automatic.as_deref(), Some("spam"));
    assert_eq!(inbound.mail.message.kind, "spam");
    assert!(inbound.mail.message.text.contains("GTUBE"));
}

/// A parsed route POST built like Mailgun's: headers come from `message-headers`.
#[test]
fn mailgun_message_headers_thread_and_mark_the_mail() {
    let headers = json!([
        ["From", "Ann <ann@example.com>"],
        ["To", "Coach <reply+t9@acme.example>"],
        ["Subject", "Re: plan"],
        ["Message-Id", "<ann-3@example.com>"],
        ["In-Reply-To", "<sb.c7.d1@acme.example>"],
        [
            "References",
            "<ann-1@example.com>\r\n <sb.c7.d1@acme.example>"
        ],
        ["Auto-Submitted", "auto-replied"],
        ["Bad Name", "ignored"],
    ])
    .to_string();
    let (ts, token) = ("1700000000", "tok-abc");
    let signature = sign("foo", ts, token);
    let body = form_body(&[
        ("timestamp", ts),
        ("token", token),
        ("signature", &signature),
        ("recipient", "reply+t9@acme.example"),
        ("sender", "ann@example.com"),
        ("subject", "Re: plan"),
        ("body-plain", "I am away until Monday."),
        ("message-headers", &headers),
    ]);
    let inbound = parse(
        &mailgun_config(),
        Some("application/x-www-form-urlencoded"),
        None,
        &body,
        1_700_000_100,
    )
    .expect("signed");
    let mail = &inbound.mail;
    assert_eq!(inbound.form, "mailgun");
    assert_eq!(mail.message.provider_id, "ann-3@example.com");
    assert_eq!(mail.message.contact.display_name.as_deref(), Some("Ann"));
    assert_eq!(
        mail.references,
        vec!["sb.c7.d1@acme.example", "ann-1@example.com"]
    );
    assert_eq!(mail.reply_tokens, vec!["t9"]);
    assert_eq!(mail.automatic.as_deref(), Some("auto_reply"));
    assert_eq!(mail.message.text, "I am away until Monday.");
}

// ---------------------------------------------------------------------------------------------
// SendGrid

#[test]
fn sendgrid_captures_need_the_inbound_secret() {
    let (ct, body) = capture("multi_mail_captures/sendgrid/valid.txt");
    let why = unauthorized(parse(&basic_config(), Some(&ct), None, &body, 0));
    assert!(why.contains("missing Authorization"), "{why}");
    for header in [
        basic("sendgrid", "wrong"),
        basic("sendgrid", ""),
        format!("Bearer {SECRET}"),
        "Basic !!!".to_owned(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(SECRET)
        ),
    ] {
        unauthorized(parse(&basic_config(), Some(&ct), Some(&header), &body, 0));
    }
    let no_secret = config(json!({ "from": "bot@x.example" }));
    unauthorized(parse(
        &no_secret,
        Some(&ct),
        Some(&basic("u", SECRET)),
        &body,
        0,
    ));
}

#[test]
fn sendgrid_parsed_capture_is_normalized() {
    let (ct, body) = capture("multi_mail_captures/sendgrid/valid.txt");
    let inbound = parse(
        &basic_config(),
        Some(&ct),
        Some(&basic("any-user", SECRET)),
        &body,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.form, "sendgrid");
    assert_eq!(inbound.replay_key, None);
    let mail = &inbound.mail;
    assert_eq!(
        mail.message.provider_id,
        "D0AB77C1-A89D-4D9E-A207-5E20A6D36BEF@opennorth.ca"
    );
    assert_eq!(mail.message.contact.external_id, "james@opennorth.ca");
    assert_eq!(
        mail.message.text,
        "bold text\n\nsome more bold text\n\nsome italic text"
    );
    assert_eq!(mail.subject.as_deref(), Some("Test"));
    assert_eq!(mail.automatic, None, "spam_score -2.6");
    let captions: Vec<_> = mail
        .message
        .attachments
        .iter()
        .map(|a| {
            (
                a.reference.as_str(),
                a.caption.as_deref(),
                a.mime_type.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        captions,
        vec![
            ("part:0", Some("foo.txt"), Some("text/plain")),
            ("part:1", Some("msg-12415-313.html"), Some("text/html")),
            ("part:2", Some("bar.txt"), Some("text/plain")),
            ("part:3", Some("msg-12415-314.html"), Some("text/html")),
        ],
        "in attachmentN order, not field order"
    );
    let (_, name, bytes) = attachment(&basic_config(), Some(&ct), &body, 2).expect("bar.txt");
    assert_eq!(name.as_deref(), Some("bar.txt"));
    assert!(bytes.starts_with(b"Nam accumsan euismod eros et rhoncus."));
}

#[test]
fn sendgrid_charsets_decode_the_fields() {
    let (ct, body) = capture("multi_mail_captures/sendgrid/encoding.txt");
    let inbound = parse(
        &basic_config(),
        Some(&ct),
        Some(&basic("u", SECRET)),
        &body,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.mail.message.text, "World €", "windows-1252 0x80");
    assert_eq!(inbound.mail.subject.as_deref(), Some("Hello €"));
    assert_eq!(inbound.mail.automatic, None);
}

#[test]
fn sendgrid_spam_score_marks_the_mail_automatic() {
    let (ct, body) = capture("multi_mail_captures/sendgrid/spam.txt");
    let inbound = parse(
        &basic_config(),
        Some(&ct),
        Some(&basic("u", SECRET)),
        &body,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.mail.automatic.as_deref(), Some("spam"));
}

#[test]
fn sendgrid_sample_data_default_and_raw_modes() {
    let ct = "multipart/form-data; boundary=xYzZY";
    let auth = basic("parse", SECRET);
    let body = fixture("sendgrid_inbound_parse/default_data.txt");
    let inbound = parse(&basic_config(), Some(ct), Some(&auth), &body, 0).expect("default");
    assert_eq!(inbound.form, "sendgrid");
    assert_eq!(inbound.mail.message.text, "Hello Twilio SendGrid!");
    assert_eq!(inbound.mail.subject.as_deref(), Some("Testing non-raw"));
    assert_eq!(inbound.mail.message.contact.external_id, "test@example.com");
    assert!(
        inbound.mail.message.provider_id.starts_with("sha256:"),
        "no Message-ID"
    );
    let again = parse(&basic_config(), Some(ct), Some(&auth), &body, 0).expect("again");
    assert_eq!(
        again.mail.message.provider_id, inbound.mail.message.provider_id,
        "stable"
    );

    let body = fixture("sendgrid_inbound_parse/raw_data.txt");
    let inbound = parse(&basic_config(), Some(ct), Some(&auth), &body, 0).expect("raw");
    assert_eq!(inbound.form, "sendgrid_raw");
    assert_eq!(inbound.mail.message.text, "Hello Twilio SendGrid!");
    assert_eq!(
        inbound.mail.subject.as_deref(),
        Some("Inbound Parse Test Raw Data")
    );
    assert!(
        original_mime(Some(ct), &body)
            .expect("email")
            .starts_with(b"MIME-Version: 1.0")
    );

    let body = fixture("sendgrid_inbound_parse/raw_data_with_attachments.txt");
    let inbound = parse(&basic_config(), Some(ct), Some(&auth), &body, 0).expect("attachments");
    let a = &inbound.mail.message.attachments;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].kind, "image");
    assert_eq!(a[0].reference, "part:0");
    assert_eq!(a[0].mime_type.as_deref(), Some("image/jpeg"));
    assert_eq!(a[0].caption.as_deref(), Some("SendGrid.jpg"));
    let (mime, name, bytes) = attachment(&basic_config(), Some(ct), &body, 0).expect("jpeg");
    assert_eq!(
        (mime.as_str(), name.as_deref()),
        ("image/jpeg", Some("SendGrid.jpg"))
    );
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "a JPEG, base64-decoded");
}

// ---------------------------------------------------------------------------------------------
// Raw RFC 5322

const REPLY: &str = "From: Ann Example <Ann@Example.COM>\r\n\
To: Coach <reply+conv_42.x-y@acme.example>, other@example.com\r\n\
Cc: coach+t2@acme.example\r\n\
Subject: Re: Your plan\r\n\
Date: Tue, 16 Apr 2013 10:00:00 +0000\r\n\
Message-ID: <ann-2@example.com>\r\n\
In-Reply-To: <sb.c1.d2@acme.example>\r\n\
References: <ann-1@example.com> <sb.c1.d1@acme.example> <sb.c1.d2@acme.example>\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Sounds great, see you at caf=E9 Nord.\r\n\
\r\n\
On Mon, 15 Apr 2013, Coach <coach@acme.example> wrote:\r\n\
> How about Tuesday?\r\n";

#[test]
fn a_raw_reply_threads_by_references_and_reply_tokens() {
    let inbound = raw(REPLY).expect("valid");
    assert_eq!(inbound.form, "rfc822");
    let mail = &inbound.mail;
    let m = &mail.message;
    assert_eq!(m.provider_id, "ann-2@example.com");
    assert_eq!(m.contact.external_id, "ann@example.com");
    assert_eq!(m.contact.display_name.as_deref(), Some("Ann Example"));
    assert_eq!(m.text, "Sounds great, see you at café Nord.");
    assert_eq!(m.reply_to.as_deref(), Some("sb.c1.d2@acme.example"));
    assert_eq!(m.sent_at, Some(1_366_106_400));
    assert_eq!(mail.subject.as_deref(), Some("Re: Your plan"));
    assert_eq!(
        mail.references,
        vec![
            "sb.c1.d2@acme.example",
            "sb.c1.d1@acme.example",
            "ann-1@example.com"
        ],
        "In-Reply-To first, then References newest first, once each"
    );
    assert_eq!(mail.reply_tokens, vec!["conv_42.x-y", "t2"]);
    assert_eq!(
        original_mime(Some("message/rfc822"), REPLY.as_bytes()).as_deref(),
        Some(REPLY.as_bytes())
    );
}

#[test]
fn raw_posts_need_the_secret_and_a_message() {
    let c = basic_config();
    unauthorized(parse(&c, Some("message/rfc822"), None, REPLY.as_bytes(), 0));
    unauthorized(parse(
        &c,
        Some("message/rfc822"),
        Some(&basic("u", "x")),
        REPLY.as_bytes(),
        0,
    ));
    let auth = basic("u", SECRET);
    assert!(matches!(
        parse(&c, Some("application/json"), Some(&auth), b"{}", 0),
        Err(InboundError::Malformed(_))
    ));
    assert!(matches!(
        parse(&c, Some("message/rfc822"), Some(&auth), b"", 0),
        Err(InboundError::Malformed(_))
    ));
    let no_from = "Subject: hi\r\n\r\nbody\r\n";
    assert!(matches!(raw(no_from), Err(InboundError::Malformed(_))));
    // A mail without Message-ID gets a stable hash.
    let no_id = "From: a@b.example\r\n\r\nhello\r\n";
    let a = raw(no_id).expect("ok").mail.message.provider_id;
    assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
    assert_eq!(raw(no_id).expect("ok").mail.message.provider_id, a);
}

#[test]
fn automatic_mail_is_marked() {
    let cases = [
        ("Auto-Submitted: auto-replied\r\n", Some("auto_reply")),
        (
            "Auto-Submitted: auto-generated; owner-email=x@y\r\n",
            Some("auto_reply"),
        ),
        ("Auto-Submitted: no\r\n", None),
        ("X-Autoreply: yes\r\n", Some("auto_reply")),
        ("X-Autorespond: Out of office\r\n", Some("auto_reply")),
        ("Precedence: bulk\r\n", Some("bulk")),
        ("Precedence: junk\r\n", Some("bulk")),
        ("Precedence: list\r\n", Some("bulk")),
        ("Precedence: auto_reply\r\n", Some("auto_reply")),
        ("List-Id: Coaches <coaches.lists.example>\r\n", Some("bulk")),
        ("X-Auto-Response-Suppress: All\r\n", None),
        ("X-Spam-Flag: YES\r\n", Some("spam")),
        ("", None),
    ];
    for (header, expected) in cases {
        let mail = format!(
            "From: a@b.example\r\nSubject: Out of Office: away\r\nMessage-ID: <x@b>\r\n{header}\r\nI am away.\r\n"
        );
        let inbound = raw(&mail).expect("valid");
        assert_eq!(inbound.mail.automatic.as_deref(), expected, "{header:?}");
        assert_eq!(
            inbound.mail.message.kind,
            expected.unwrap_or("email"),
            "{header:?}"
        );
        assert_eq!(events(&inbound).len(), 1);
    }
}

const BOUNCE: &str = "From: Mail Delivery System <MAILER-DAEMON@mx.acme.example>\r\n\
To: coach@acme.example\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Message-ID: <bounce-1@mx.acme.example>\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\
\r\n\
--B\r\n\
Content-Type: text/plain\r\n\
\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
--B\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.acme.example\r\n\
\r\n\
Final-Recipient: rfc822; Gone@Example.com\r\n\
Original-Recipient: rfc822;gone@example.com\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.com>: Recipient address rejected\r\n\
--B\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: Coach <coach@acme.example>\r\n\
To: gone@example.com\r\n\
Message-ID: <sb.conv9.del3@acme.example>\r\n\
--B--\r\n";

#[test]
fn a_hard_bounce_reports_the_recipient_unreachable() {
    let inbound = raw(BOUNCE).expect("valid");
    let mail = &inbound.mail;
    assert_eq!(mail.automatic.as_deref(), Some("bounce"));
    assert_eq!(mail.message.kind, "bounce");
    assert_eq!(
        mail.references,
        vec!["sb.conv9.del3@acme.example"],
        "the returned mail's id"
    );
    let all = events(&inbound);
    assert_eq!(all.len(), 2);
    match &all[1] {
        InboundEvent::Reachability {
            external_id,
            reachable,
            reason,
            at,
        } => {
            assert_eq!(external_id, "gone@example.com");
            assert!(!reachable);
            assert_eq!(
                reason,
                "hard bounce: 5.1.1 550 5.1.1 <gone@example.com>: Recipient address rejected"
            );
            assert_eq!(*at, None);
        }
        other => panic!("expected Reachability, got {other:?}"),
    }
    // A delay notice is a bounce too, but says nothing about reachability.
    let delayed = BOUNCE
        .replace("Action: failed", "Action: delayed")
        .replace("Status: 5.1.1", "Status: 4.4.7");
    let inbound = raw(&delayed).expect("valid");
    assert_eq!(inbound.mail.automatic.as_deref(), Some("bounce"));
    assert_eq!(events_of(&inbound), 1);
    // Exim's X-Failed-Recipients without a DSN part (answering a mail of ours).
    let exim = "From: Mail Delivery System <Mailer-Daemon@mx.example>\r\nX-Failed-Recipients: lost@example.org\r\nIn-Reply-To: <sb.conv9.del4@acme.example>\r\nSubject: Mail delivery failed\r\n\r\nA message that you sent could not be delivered.\r\n";
    let inbound = raw(exim).expect("valid");
    assert_eq!(inbound.mail.automatic.as_deref(), Some("bounce"));
    assert!(matches!(
        &events(&inbound)[1],
        InboundEvent::Reachability { external_id, .. } if external_id == "lost@example.org"
    ));
    // Anyone can write a bounce: one that names no mail of ours marks nobody unreachable.
    let forged = BOUNCE.replace(
        "Message-ID: <sb.conv9.del3@acme.example>",
        "Message-ID: <x@elsewhere.example>",
    );
    let inbound = raw(&forged).expect("valid");
    assert_eq!(inbound.mail.automatic.as_deref(), Some("bounce"));
    assert_eq!(
        events_of(&inbound),
        1,
        "a forged bounce is stored, nothing more"
    );
    // An out-of-office subject alone is a person's mail.
    let ooo = "From: a@b.example\r\nSubject: Automatic reply: Out of office\r\n\r\nback monday\r\n";
    assert_eq!(raw(ooo).expect("valid").mail.automatic, None);
}

fn events_of(inbound: &inbound::Inbound) -> usize {
    events(inbound).len()
}

#[test]
fn html_only_mail_and_other_charsets() {
    let html = b"From: a@b.example\r\nContent-Type: text/html; charset=windows-1252\r\n\r\n<p>Gr\xfc\xdf dich &amp; \x80</p><div class=\"gmail_quote\">old</div>\r\n";
    let inbound = parse(
        &basic_config(),
        Some("message/rfc822"),
        Some(&basic("u", SECRET)),
        html,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.mail.message.text, "Grüß dich & €");
    let mut latin = b"From: a@b.example\r\nSubject: =?ISO-8859-1?Q?Caf=E9?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf".to_vec();
    latin.extend_from_slice(&[0xE9, b'\r', b'\n']);
    let inbound = parse(
        &basic_config(),
        Some("message/rfc822"),
        Some(&basic("u", SECRET)),
        &latin,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.mail.message.text, "Café");
    assert_eq!(inbound.mail.subject.as_deref(), Some("Café"));
    let sjis = b"From: a@b.example\r\nContent-Type: text/plain; charset=shift_jis\r\n\r\n\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd\r\n";
    let inbound = parse(
        &basic_config(),
        Some("message/rfc822"),
        Some(&basic("u", SECRET)),
        sjis,
        0,
    )
    .expect("valid");
    assert_eq!(inbound.mail.message.text, "こんにちは");
    // An unknown charset and invalid bytes still give text, never an error.
    let weird =
        b"From: a@b.example\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe ok\r\n";
    let inbound = parse(
        &basic_config(),
        Some("message/rfc822"),
        Some(&basic("u", SECRET)),
        weird,
        0,
    )
    .expect("valid");
    assert!(inbound.mail.message.text.ends_with("ok"));
}

#[test]
fn mime_attachments_are_listed_and_served() {
    let mail = "From: a@b.example\r\nMessage-ID: <att@b>\r\nContent-Type: multipart/mixed; boundary=\"X\"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--X\r\nContent-Type: application/pdf; name=\"plan.pdf\"\r\nContent-Disposition: attachment; filename=\"plan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--X\r\nContent-Type: audio/ogg\r\nContent-Disposition: attachment; filename=\"note.ogg\"\r\n\r\nOggS\r\n--X--\r\n";
    let inbound = raw(mail).expect("valid");
    let a = &inbound.mail.message.attachments;
    assert_eq!(inbound.mail.message.text, "See attached.");
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].kind.as_str(), a[0].caption.as_deref()),
        ("document", Some("plan.pdf"))
    );
    assert_eq!(
        (a[1].kind.as_str(), a[1].reference.as_str()),
        ("audio", "part:1")
    );
    let (mime, name, bytes) =
        attachment(&basic_config(), Some("message/rfc822"), mail.as_bytes(), 0).expect("pdf");
    assert_eq!(
        (mime.as_str(), name.as_deref()),
        ("application/pdf", Some("plan.pdf"))
    );
    assert_eq!(bytes, b"%PDF-1.4\n");
    assert_eq!(
        attachment(&basic_config(), Some("message/rfc822"), mail.as_bytes(), 5),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input: bounded time, no panic.

fn bounded(what: &str, limit: Duration, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    let took = start.elapsed();
    assert!(took < limit, "{what} took {took:?}");
}

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn deeply_nested_multiparts() {
    let depth = 10_000;
    let mut mail = String::from("From: a@b.example\r\n");
    for i in 0..depth {
        mail.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    mail.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    for i in (0..depth).rev() {
        mail.push_str(&format!("--b{i}--\r\n"));
    }
    bounded("10,000 nested multiparts", LIMIT, || {
        let inbound = raw(&mail).expect("a mail");
        assert_eq!(inbound.mail.message.text, "deep");
        let _ = attachment(&basic_config(), Some("message/rfc822"), mail.as_bytes(), 3);
    });
    // Messages inside messages, 10,000 deep.
    let mut mail = String::new();
    for _ in 0..depth {
        mail.push_str("From: a@b.example\r\nContent-Type: message/rfc822\r\n\r\n");
    }
    mail.push_str("From: c@d.example\r\n\r\ninnermost\r\n");
    bounded("10,000 nested messages", LIMIT, || {
        let _ = raw(&mail);
        let _ = attachment(&basic_config(), Some("message/rfc822"), mail.as_bytes(), 0);
    });
}

#[test]
fn a_five_megabyte_header_line() {
    let mail = format!(
        "From: a@b.example\r\nSubject: {}\r\nX-Long: {}\r\n\r\nbody\r\n",
        "s".repeat(5 << 20),
        "=?utf-8?q?".repeat(500_000)
    );
    bounded("a 5 MB header", LIMIT, || {
        let inbound = raw(&mail).expect("still a mail");
        assert_eq!(inbound.mail.message.text, "body");
    });
}

#[test]
fn a_hundred_thousand_parts() {
    let mut mail =
        String::from("From: a@b.example\r\nContent-Type: multipart/mixed; boundary=\"P\"\r\n\r\n");
    for i in 0..100_000 {
        mail.push_str(&format!(
            "--P\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"f{i}\"\r\n\r\nx\r\n"
        ));
    }
    mail.push_str("--P--\r\n");
    bounded("100k parts", LIMIT, || {
        let inbound = raw(&mail).expect("a mail");
        assert_eq!(
            inbound.mail.message.attachments.len(),
            inbound::MAX_ATTACHMENTS
        );
    });
    // The same as a form post of 100k fields.
    let mut form = String::new();
    for i in 0..100_000 {
        form.push_str(&format!(
            "--F\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"
        ));
    }
    form.push_str("--F--\r\n");
    bounded("100k form fields", LIMIT, || {
        let got = parse(
            &basic_config(),
            Some("multipart/form-data; boundary=F"),
            Some(&basic("u", SECRET)),
            form.as_bytes(),
            0,
        );
        assert!(matches!(got, Err(InboundError::Malformed(_))), "{got:?}");
    });
}

#[test]
fn base64_bombs_and_quoted_printable_garbage() {
    let mail = format!(
        "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=\"Q\"\r\n\r\n--Q\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--Q\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--Q--\r\n",
        "=Z=\r=\n==3=\u{0}=FF=fF=G1".repeat(50_000),
        "A".repeat(1 << 20)
    );
    bounded("base64 and QP garbage", LIMIT, || {
        let inbound = raw(&mail).expect("a mail");
        let index = inbound
            .mail
            .message
            .attachments
            .iter()
            .position(|a| a.mime_type.as_deref() == Some("application/octet-stream"))
            .expect("the base64 part");
        let (_, _, bytes) = attachment(
            &basic_config(),
            Some("message/rfc822"),
            mail.as_bytes(),
            index,
        )
        .expect("b64");
        assert_eq!(bytes.len(), 3 << 18, "1 MiB of base64 is 768 KiB of bytes");
    });
}

#[test]
fn two_hundred_thousand_quote_lines() {
    let mail = format!(
        "From: a@b.example\r\n\r\nMy answer.\r\n{}",
        "> > quoted\r\n".repeat(200_000)
    );
    bounded("200k quote lines", LIMIT, || {
        assert_eq!(raw(&mail).expect("a mail").mail.message.text, "My answer.");
    });
}

#[test]
fn a_hundred_thousand_references() {
    let ids: Vec<String> = (0..100_000).map(|i| format!("<id{i}@x.example>")).collect();
    let mail = format!(
        "From: a@b.example\r\nIn-Reply-To: <id99999@x.example>\r\nReferences: {}\r\n\r\nhi\r\n",
        ids.join(" ")
    );
    bounded("100k references", LIMIT, || {
        let refs = raw(&mail).expect("a mail").mail.references;
        assert_eq!(refs.len(), inbound::MAX_REFERENCES);
        assert_eq!(refs[0], "id99999@x.example");
        assert_eq!(refs[1], "id99998@x.example", "newest first, no duplicate");
    });
}

#[test]
fn garbage_never_panics() {
    let auth = basic("u", SECRET);
    let bodies: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00\x00".to_vec(),
        b"--\r\n--\r\n".to_vec(),
        b"From:\r\n\r\n".to_vec(),
        b"From: <>\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\r\n".to_vec(),
        b"From: a@b\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@d\r\nContent-Type: message/rfc822\r\n\r\n".to_vec(),
        vec![b'\n'; 100_000],
        b":".repeat(100_000),
    ];
    for body in &bodies {
        for ct in [
            "message/rfc822",
            "multipart/form-data; boundary=--",
            "multipart/form-data; boundary=x",
            "multipart/form-data",
            "application/x-www-form-urlencoded",
        ] {
            let _ = parse(&basic_config(), Some(ct), Some(&auth), body, 0);
            let _ = attachment(&basic_config(), Some(ct), body, 0);
            let _ = original_mime(Some(ct), body);
        }
    }
}
