//! Inbound: three ways a mail reaches the one inbound URL of an email channel, each verified,
//! then normalized into one [`Mail`].
//!
//! - **Mailgun routes** (`multipart/form-data` or `x-www-form-urlencoded` with `timestamp`,
//!   `token` and `signature`): the signature is a hex HMAC-SHA256 of `timestamp + token` under
//!   the channel's signing key, compared in constant time; a timestamp further than
//!   `max_age_secs` from now is refused, and the token is handed on as a replay key (the core
//!   refuses one it saw before). Parsed routes carry decoded fields (`body-plain`,
//!   `message-headers`, `attachment-N`…); `forward()` with MIME carries the whole message in
//!   `body-mime`.
//! - **SendGrid Inbound Parse** (`multipart/form-data` with `headers`, `text`, `html`, `from`,
//!   `envelope`, `charsets`, `attachmentN`…, or the whole message in `email` in raw mode): SendGrid
//!   signs nothing, so the URL is given HTTP Basic credentials whose password is the channel's
//!   `inbound_secret`, compared in constant time.
//! - **Raw RFC 5322** (`message/rfc822`, or `text/plain` from a pipe): the tenant's own MTA posts
//!   the message as it is, with the same Basic credentials.
//!
//! Multipart bodies are split by `mail-parser` (a form is a MIME multipart under another name),
//! never by a parser written here. Every step is bounded in time by the size of the request,
//! and nothing here panics on what a sender controls.
//!
//! What it must never do: trust a field before the request is verified, or answer an automatic
//! mail (an auto-reply, a bounce, a list mail): those are marked in [`Mail::automatic`].

use std::collections::HashSet;

use base64::Engine;
use hmac::{Hmac, Mac};
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_channel::{
    Attachment, ContactRef, InboundError, InboundEvent, InboundMessage, Mail, Secret,
};

use crate::config::EmailConfig;
use crate::text::new_text;

/// Most `references` kept per mail (the newest ones).
pub const MAX_REFERENCES: usize = 50;

/// Most attachments listed per mail; the rest stay in the stored request.
pub const MAX_ATTACHMENTS: usize = 100;

/// A verified, normalized inbound mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The mail, as the core stores it.
    pub mail: Mail,
    /// Mailgun's `token`: the core refuses a token it saw before (a replayed POST).
    pub replay_key: Option<String>,
    /// Which form the POST had: `mailgun`, `mailgun_mime`, `sendgrid`, `sendgrid_raw` or
    /// `rfc822`.
    pub form: &'static str,
    /// What a delivery status notification reports, when the mail is one.
    pub bounce: Option<Bounce>,
}

/// The failed delivery a bounce (RFC 3464 delivery status notification) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The address that could not be reached (`Final-Recipient`, else `Original-Recipient`),
    /// lowercased.
    pub recipient: String,
    /// `Status`, e.g. `5.1.1`.
    pub status: String,
    /// `Diagnostic-Code` without its type, e.g. `550 5.1.1 user unknown`.
    pub diagnostic: String,
    /// A permanent failure (`Action: failed` or a `5.x.x` status): the address is unreachable.
    pub hard: bool,
}

/// Verifies and normalizes one inbound POST. `content_type` and `authorization` are the
/// request's headers; `now_unix` is the clock Mailgun's timestamps are checked against.
pub fn parse(
    config: &EmailConfig,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<Inbound, InboundError> {
    match media_type(content_type).as_str() {
        "multipart/form-data" => {
            let form = Form::multipart(body, content_type)?;
            if form.is_mailgun() {
                let replay_key = verify_mailgun(config, &form, now_unix)?;
                mailgun(config, &form, replay_key)
            } else {
                check_basic(config, authorization)?;
                sendgrid(config, &form)
            }
        }
        "application/x-www-form-urlencoded" => {
            let form = Form::urlencoded(body);
            if !form.is_mailgun() {
                return Err(InboundError::Malformed(
                    "a form post needs Mailgun's timestamp, token and signature".into(),
                ));
            }
            let replay_key = verify_mailgun(config, &form, now_unix)?;
            mailgun(config, &form, replay_key)
        }
        "message/rfc822" | "text/plain" | "application/octet-stream" | "" => {
            check_basic(config, authorization)?;
            let message = parse_mime(body).ok_or_else(not_a_message)?;
            let mail = normalize(config, &message, body_parts(&message), Extra::default())?;
            Ok(inbound(mail, None, "rfc822"))
        }
        other => Err(InboundError::Malformed(format!(
            "unsupported content type {other:?}"
        ))),
    }
}

/// What the core records for an inbound mail: the mail, and for a hard bounce of a mail we sent
/// the failed recipient's reachability. (Anyone can write a bounce: one that names none of our
/// Message-IDs marks nobody unreachable.)
pub fn events(inbound: &Inbound) -> Vec<InboundEvent> {
    let mut events = vec![InboundEvent::Mail(Box::new(inbound.mail.clone()))];
    let ours = inbound
        .mail
        .references
        .iter()
        .any(|id| crate::outbound::conversation_of(id).is_some());
    if let Some(bounce) = inbound.bounce.as_ref().filter(|b| b.hard && ours) {
        events.push(InboundEvent::Reachability {
            external_id: bounce.recipient.clone(),
            reachable: false,
            reason: format!("hard bounce: {} {}", bounce.status, bounce.diagnostic)
                .trim_end()
                .to_owned(),
            at: None,
        });
    }
    events
}

/// One attachment of a stored (already verified) inbound POST, by the index in its
/// `part:{index}` reference: its MIME type, file name and bytes. `None` when there is no such
/// attachment. The configuration is not needed to read it; it is taken so every inbound call
/// has the same shape.
pub fn attachment(
    _config: &EmailConfig,
    content_type: Option<&str>,
    body: &[u8],
    index: usize,
) -> Option<(String, Option<String>, Vec<u8>)> {
    if let Some(raw) = original_mime(content_type, body) {
        let message = parse_mime(&raw)?;
        let part = message.attachment(u32::try_from(index).ok()?)?;
        let (mime, filename) = part_type(part);
        return Some((mime, filename, part.contents().to_vec()));
    }
    let form = match media_type(content_type).as_str() {
        "multipart/form-data" => Form::multipart(body, content_type).ok()?,
        _ => return None,
    };
    let file = form.files().into_iter().nth(index)?;
    Some((file.mime(), file.filename.clone(), file.data.clone()))
}

/// The raw RFC 5322 message when the POST carried one: a raw post, Mailgun's `body-mime`,
/// SendGrid's raw-mode `email`.
pub fn original_mime(content_type: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    match media_type(content_type).as_str() {
        "multipart/form-data" => {
            let form = Form::multipart(body, content_type).ok()?;
            form.bytes("body-mime")
                .or_else(|| form.bytes("email"))
                .map(<[u8]>::to_vec)
        }
        "application/x-www-form-urlencoded" => Form::urlencoded(body)
            .bytes("body-mime")
            .map(<[u8]>::to_vec),
        "message/rfc822" | "text/plain" | "application/octet-stream" | "" => Some(body.to_vec()),
        _ => None,
    }
}

/// Checks a Mailgun signature: hex HMAC-SHA256 of `timestamp + token` under `signing_key`,
/// in constant time. Freshness is checked by [`parse`].
pub fn verify_mailgun_signature(
    signing_key: &Secret,
    timestamp: &str,
    token: &str,
    signature: &str,
) -> bool {
    let Ok(signature) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(signing_key.expose().as_bytes()) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    !token.is_empty() && mac.verify_slice(&signature).is_ok()
}

fn inbound(mail: Normalized, replay_key: Option<String>, form: &'static str) -> Inbound {
    Inbound {
        mail: mail.mail,
        replay_key,
        form,
        bounce: mail.bounce,
    }
}

fn not_a_message() -> InboundError {
    InboundError::Malformed("the body is not an RFC 5322 message".into())
}

/// `type/subtype` of a Content-Type header, lowercased; empty when absent.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parses with mail-parser, which promises never to panic; a debug assertion deep inside it
/// is still caught, so hostile input costs a refusal, never the process.
fn parse_mime(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
}

fn parse_headers(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse_headers(raw))
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Authentication

fn verify_mailgun(
    config: &EmailConfig,
    form: &Form,
    now_unix: i64,
) -> Result<Option<String>, InboundError> {
    let unauthorized = |why: &str| InboundError::Unauthorized(why.to_owned());
    let key = config
        .mailgun_signing_key
        .as_ref()
        .ok_or_else(|| unauthorized("no mailgun_signing_key is configured"))?;
    let field = |name: &str| {
        form.text(name)
            .ok_or_else(|| unauthorized(&format!("missing Mailgun {name}")))
    };
    let (timestamp, token, signature) = (field("timestamp")?, field("token")?, field("signature")?);
    if !verify_mailgun_signature(key, &timestamp, &token, &signature) {
        return Err(unauthorized("the Mailgun signature does not match"));
    }
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| unauthorized("the Mailgun timestamp is not a number"))?;
    let max_age = i64::try_from(config.max_age_secs).unwrap_or(i64::MAX);
    if now_unix.saturating_sub(at).saturating_abs() > max_age {
        return Err(unauthorized("stale timestamp"));
    }
    Ok(Some(token))
}

fn check_basic(config: &EmailConfig, authorization: Option<&str>) -> Result<(), InboundError> {
    let unauthorized = |why: &str| InboundError::Unauthorized(why.to_owned());
    let secret = config
        .inbound_secret
        .as_ref()
        .ok_or_else(|| unauthorized("no inbound_secret is configured"))?;
    let header = authorization.ok_or_else(|| unauthorized("missing Authorization"))?;
    let (scheme, credentials) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| unauthorized("Authorization must be Basic"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized("Authorization must be Basic"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .map_err(|_| unauthorized("Authorization is not base64"))?;
    let password = decoded
        .iter()
        .position(|&b| b == b':')
        .map(|i| &decoded[i + 1..])
        .ok_or_else(|| unauthorized("Authorization has no password"))?;
    if bool::from(password.ct_eq(secret.expose().as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("wrong inbound secret"))
    }
}

// ---------------------------------------------------------------------------------------------
// Forms

/// One field of a form post.
#[derive(Debug)]
struct Field {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

impl Field {
    fn mime(&self) -> String {
        self.content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned())
    }
}

/// A form post's fields, in order.
#[derive(Debug, Default)]
struct Form {
    fields: Vec<Field>,
}

impl Form {
    fn urlencoded(body: &[u8]) -> Form {
        let fields = form_urlencoded::parse(body)
            .map(|(name, value)| Field {
                name: name.into_owned(),
                filename: None,
                content_type: None,
                data: value.into_owned().into_bytes(),
            })
            .collect();
        Form { fields }
    }

    /// Splits `multipart/form-data` with mail-parser: the body under a MIME header naming the
    /// boundary is a multipart message whose parts are the fields.
    fn multipart(body: &[u8], content_type: Option<&str>) -> Result<Form, InboundError> {
        let boundary = boundary(content_type.unwrap_or_default()).ok_or_else(|| {
            InboundError::Malformed("multipart/form-data without a usable boundary".into())
        })?;
        let mut raw = Vec::with_capacity(body.len() + boundary.len() + 64);
        raw.extend_from_slice(b"Content-Type: multipart/form-data; boundary=\"");
        raw.extend_from_slice(boundary.as_bytes());
        raw.extend_from_slice(b"\"\r\n\r\n");
        raw.extend_from_slice(body);
        let message = parse_mime(&raw)
            .ok_or_else(|| InboundError::Malformed("unreadable multipart/form-data".into()))?;
        let ids = message
            .root_part()
            .sub_parts()
            .ok_or_else(|| InboundError::Malformed("multipart/form-data without fields".into()))?;
        let mut fields = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(part) = message.part(id) else {
                continue;
            };
            let Some(disposition) = part.content_disposition() else {
                continue;
            };
            let Some(name) = disposition.attribute("name") else {
                continue;
            };
            // A field's bytes are as sent (form fields carry no transfer encoding); a part that
            // declares one anyway is decoded by mail-parser.
            let data = if part.encoding == mail_parser::Encoding::None && !part.is_message() {
                raw.get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or_default()
                    .to_vec()
            } else {
                part.contents().to_vec()
            };
            fields.push(Field {
                name: name.to_owned(),
                filename: disposition.attribute("filename").map(str::to_owned),
                content_type: part.content_type().map(|ct| {
                    match ct.subtype() {
                        Some(sub) => format!("{}/{}", ct.ctype(), sub),
                        None => ct.ctype().to_owned(),
                    }
                    .to_ascii_lowercase()
                }),
                data,
            });
        }
        Ok(Form { fields })
    }

    fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|f| f.data.as_slice())
    }

    /// A field as text (UTF-8, invalid bytes replaced).
    fn text(&self, name: &str) -> Option<String> {
        self.bytes(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// A field as text in the charset SendGrid's `charsets` names for it.
    fn text_in(&self, name: &str, charsets: &serde_json::Value) -> Option<String> {
        let bytes = self.bytes(name)?;
        let label = charsets[name].as_str().unwrap_or("utf-8");
        Some(decode_charset(bytes, label))
    }

    fn is_mailgun(&self) -> bool {
        self.get("signature").is_some()
            || (self.get("timestamp").is_some() && self.get("token").is_some())
    }

    /// The uploaded files (`attachment-N` from Mailgun, `attachmentN` from SendGrid), in their
    /// number's order.
    fn files(&self) -> Vec<&Field> {
        let mut files: Vec<(u64, &Field)> = self
            .fields
            .iter()
            .filter_map(|f| {
                let n = f
                    .name
                    .strip_prefix("attachment-")
                    .or_else(|| f.name.strip_prefix("attachment"))?;
                Some((n.parse().ok()?, f))
            })
            .collect();
        files.sort_by_key(|(n, _)| *n);
        files.into_iter().map(|(_, f)| f).collect()
    }
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        let ok = (1..=200).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' || b == b' ');
        ok.then(|| value.to_owned())
    })
}

fn decode_charset(bytes: &[u8], label: &str) -> String {
    match encoding_rs::Encoding::for_label(label.trim().as_bytes()) {
        Some(encoding) => encoding.decode(bytes).0.into_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The three forms

fn mailgun(
    config: &EmailConfig,
    form: &Form,
    replay_key: Option<String>,
) -> Result<Inbound, InboundError> {
    let extra = Extra {
        envelope_to: form.text("recipient").into_iter().collect(),
        fallback_from: form.text("from").or_else(|| form.text("sender")),
        spam: form
            .text("X-Mailgun-Sflag")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")),
        ..Extra::default()
    };
    if let Some(raw) = form.bytes("body-mime") {
        let message = parse_mime(raw).ok_or_else(not_a_message)?;
        let mail = normalize(config, &message, body_parts(&message), extra)?;
        return Ok(inbound(mail, replay_key, "mailgun_mime"));
    }
    let headers = mailgun_headers(form);
    let message = parse_headers(&headers).ok_or_else(not_a_message)?;
    let files = form.files();
    let plain = form
        .text("body-plain")
        .or_else(|| form.text("stripped-text"));
    let html = form.text("body-html");
    let parts = BodyParts {
        plain,
        html,
        attachments: files
            .iter()
            .map(|f| (f.mime(), f.filename.clone()))
            .collect(),
        dsn: files
            .iter()
            .find(|f| is_dsn_type(&f.mime()))
            .map(|f| String::from_utf8_lossy(&f.data).into_owned()),
        returned_id: files
            .iter()
            .find_map(|f| returned_message_id(&f.mime(), &f.data)),
        hash: hash_of(&[
            &headers,
            form.bytes("body-plain").unwrap_or_default(),
            form.bytes("body-html").unwrap_or_default(),
        ]),
    };
    let extra = Extra {
        subject: form.text("subject"),
        ..extra
    };
    let mail = normalize(config, &message, parts, extra)?;
    Ok(inbound(mail, replay_key, "mailgun"))
}

/// The original headers of a parsed Mailgun route POST as a header block: from
/// `message-headers` (a JSON list of `[name, value]`), else from the form's capitalized fields
/// (Mailgun posts each header as a field of its own name too).
fn mailgun_headers(form: &Form) -> Vec<u8> {
    let mut out = Vec::new();
    let listed: Option<Vec<(String, String)>> = form
        .bytes("message-headers")
        .and_then(|b| serde_json::from_slice::<Vec<(String, String)>>(b).ok());
    let headers: Vec<(String, String)> = match listed {
        Some(list) => list,
        None => form
            .fields
            .iter()
            .filter(|f| f.name.starts_with(|c: char| c.is_ascii_uppercase()))
            .map(|f| {
                (
                    f.name.clone(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                )
            })
            .collect(),
    };
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        for b in value.bytes() {
            out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn sendgrid(config: &EmailConfig, form: &Form) -> Result<Inbound, InboundError> {
    let charsets: serde_json::Value = form
        .bytes("charsets")
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(serde_json::Value::Null);
    let envelope: serde_json::Value = form
        .bytes("envelope")
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut envelope_to: Vec<String> = envelope["to"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    envelope_to.extend(form.text_in("to", &charsets));
    let spam_score = form
        .text("spam_score")
        .and_then(|s| s.trim().parse::<f64>().ok());
    let extra = Extra {
        envelope_to,
        fallback_from: form
            .text_in("from", &charsets)
            .or_else(|| envelope["from"].as_str().map(str::to_owned)),
        spam: spam_score.is_some_and(|s| s >= 5.0),
        ..Extra::default()
    };
    if let Some(raw) = form.bytes("email") {
        let message = parse_mime(raw).ok_or_else(not_a_message)?;
        let mail = normalize(config, &message, body_parts(&message), extra)?;
        return Ok(inbound(mail, None, "sendgrid_raw"));
    }
    let mut headers = form.bytes("headers").unwrap_or_default().to_vec();
    headers.extend_from_slice(b"\r\n\r\n");
    let message = parse_headers(&headers).ok_or_else(|| {
        InboundError::Malformed("a SendGrid post needs headers (or email in raw mode)".into())
    })?;
    let files = form.files();
    let parts = BodyParts {
        plain: form.text_in("text", &charsets),
        html: form.text_in("html", &charsets),
        attachments: files
            .iter()
            .map(|f| (f.mime(), f.filename.clone()))
            .collect(),
        dsn: files
            .iter()
            .find(|f| is_dsn_type(&f.mime()))
            .map(|f| String::from_utf8_lossy(&f.data).into_owned()),
        returned_id: files
            .iter()
            .find_map(|f| returned_message_id(&f.mime(), &f.data)),
        hash: hash_of(&[
            &headers,
            form.bytes("text").unwrap_or_default(),
            form.bytes("html").unwrap_or_default(),
        ]),
    };
    let extra = Extra {
        subject: form.text_in("subject", &charsets),
        ..extra
    };
    let mail = normalize(config, &message, parts, extra)?;
    Ok(inbound(mail, None, "sendgrid"))
}

// ---------------------------------------------------------------------------------------------
// One mail, whatever the form

/// What the body of a mail gives, however it arrived.
#[derive(Debug, Default)]
struct BodyParts {
    plain: Option<String>,
    html: Option<String>,
    /// MIME type and file name of each attachment, in `part:{index}` order.
    attachments: Vec<(String, Option<String>)>,
    /// The `message/delivery-status` part of a bounce.
    dsn: Option<String>,
    /// The Message-ID of the message a bounce returns.
    returned_id: Option<String>,
    /// `sha256:…` of the mail's bytes, the id of a mail without a Message-ID.
    hash: String,
}

/// What the form around the mail adds.
#[derive(Debug, Default)]
struct Extra {
    /// Envelope recipients (`RCPT TO`), when the provider reports them.
    envelope_to: Vec<String>,
    /// The sender when the headers name none.
    fallback_from: Option<String>,
    /// The subject as the provider decoded it.
    subject: Option<String>,
    /// The provider's spam filter flagged the mail.
    spam: bool,
}

struct Normalized {
    mail: Mail,
    bounce: Option<Bounce>,
}

fn hash_of(pieces: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for piece in pieces {
        hasher.update((piece.len() as u64).to_be_bytes());
        hasher.update(piece);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Bodies, attachments and bounce parts of a full MIME message.
fn body_parts(message: &Message<'_>) -> BodyParts {
    let plain = message.text_part(0).and_then(|p| match &p.body {
        PartType::Text(t) => Some(t.to_string()),
        _ => None,
    });
    let html = message.html_part(0).and_then(|p| match &p.body {
        PartType::Html(t) => Some(t.to_string()),
        _ => None,
    });
    let attachments = message
        .attachments()
        .take(MAX_ATTACHMENTS)
        .map(part_type)
        .collect();
    let mut dsn = None;
    let mut returned_id = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let mime =
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase();
        if dsn.is_none() && is_dsn_type(&mime) {
            dsn = Some(String::from_utf8_lossy(part.contents()).into_owned());
        }
        if returned_id.is_none() {
            returned_id = match &part.body {
                PartType::Message(m) => m.message_id().map(str::to_owned),
                _ => returned_message_id(&mime, part.contents()),
            };
        }
        if dsn.is_some() && returned_id.is_some() {
            break;
        }
    }
    BodyParts {
        plain,
        html,
        attachments,
        dsn,
        returned_id,
        hash: hash_of(&[message.raw_message()]),
    }
}

/// MIME type (lowercased) and file name of a part.
fn part_type(part: &mail_parser::MessagePart<'_>) -> (String, Option<String>) {
    let mime = match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_owned(),
        }
        .to_ascii_lowercase(),
        None if part.is_message() => "message/rfc822".to_owned(),
        None if part.is_text() => "text/plain".to_owned(),
        None => "application/octet-stream".to_owned(),
    };
    (mime, part.attachment_name().map(str::to_owned))
}

fn is_dsn_type(mime: &str) -> bool {
    matches!(
        mime,
        "message/delivery-status" | "message/global-delivery-status"
    )
}

/// The Message-ID inside a returned message or its headers (`message/rfc822`,
/// `text/rfc822-headers`).
fn returned_message_id(mime: &str, data: &[u8]) -> Option<String> {
    if !matches!(
        mime,
        "message/rfc822" | "text/rfc822-headers" | "message/global" | "message/global-headers"
    ) {
        return None;
    }
    // The part may end right after its last header line, without the blank line.
    let mut headers = data.to_vec();
    headers.extend_from_slice(b"\r\n\r\n");
    parse_headers(&headers)?.message_id().map(str::to_owned)
}

fn normalize(
    config: &EmailConfig,
    message: &Message<'_>,
    parts: BodyParts,
    extra: Extra,
) -> Result<Normalized, InboundError> {
    let (address, name) = sender(message, extra.fallback_from.as_deref())
        .ok_or_else(|| InboundError::Malformed("the mail has no From address".into()))?;
    let provider_id = message
        .message_id()
        .map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .filter(|id| !id.is_empty() && id.len() <= 998)
        .unwrap_or_else(|| parts.hash.clone());
    let subject = extra
        .subject
        .filter(|s| !s.trim().is_empty())
        .or_else(|| message.subject().map(str::to_owned))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let references = references(message, parts.returned_id.as_deref());
    let reply_tokens = reply_tokens(config, message, &extra.envelope_to);
    let bounce = bounce_of(message, &parts);
    let automatic = automatic(message, &parts, bounce.is_some(), extra.spam);
    let attachments = parts
        .attachments
        .iter()
        .take(MAX_ATTACHMENTS)
        .enumerate()
        .map(|(index, (mime, filename))| Attachment {
            kind: attachment_kind(mime).to_owned(),
            reference: format!("part:{index}"),
            mime_type: Some(mime.clone()),
            caption: filename.clone(),
        })
        .collect();
    let text = new_text(parts.plain.as_deref(), parts.html.as_deref());
    let sent_at = message
        .date()
        .filter(|d| d.is_valid())
        .map(|d| d.to_timestamp());
    let mail = Mail {
        message: InboundMessage {
            provider_id,
            contact: ContactRef {
                external_id: address,
                display_name: name,
            },
            text,
            attachments,
            kind: automatic.unwrap_or("email").to_owned(),
            reply_to: first_id(message.in_reply_to()),
            sent_at,
        },
        subject,
        references,
        reply_tokens,
        automatic: automatic.map(str::to_owned),
    };
    Ok(Normalized {
        mail,
        bounce: bounce.filter(|_| automatic == Some("bounce")),
    })
}

/// From's address (lowercased) and name; else the provider's idea of the sender.
fn sender(message: &Message<'_>, fallback: Option<&str>) -> Option<(String, Option<String>)> {
    let named = |addr: &mail_parser::Addr<'_>| {
        let address = addr.address.as_deref()?.trim().to_lowercase();
        address.contains('@').then(|| {
            (
                address,
                addr.name
                    .as_deref()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            )
        })
    };
    if let Some(found) = message.from().and_then(Address::first).and_then(named) {
        return Some(found);
    }
    let fallback = fallback?;
    let mut header = b"From: ".to_vec();
    header.extend(
        fallback
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    header.extend_from_slice(b"\r\n\r\n");
    let parsed = parse_headers(&header)?;
    parsed.from().and_then(Address::first).and_then(named)
}

fn first_id(value: &HeaderValue<'_>) -> Option<String> {
    ids(value).into_iter().next()
}

/// Message ids of an `In-Reply-To` or `References` header, in header order, without `<>`.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let clean = |id: &str| {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        (!id.is_empty() && id.len() <= 998).then(|| id.to_owned())
    };
    match value {
        HeaderValue::Text(id) => clean(id).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|id| clean(id)).collect(),
        _ => Vec::new(),
    }
}

/// `In-Reply-To` ids, the id a bounce returns, then `References` newest first; deduplicated
/// and capped.
fn references(message: &Message<'_>, returned: Option<&str>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let reply_to = ids(message.in_reply_to());
    let references = ids(message.references());
    let candidates = reply_to
        .into_iter()
        .chain(returned.map(str::to_owned))
        .chain(references.into_iter().rev());
    for id in candidates {
        if out.len() >= MAX_REFERENCES {
            break;
        }
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    out
}

/// Tokens of the `reply+<token>@…` (or `<from local part>+<token>@…`) addresses the mail was
/// sent to: To, Cc, Delivered-To, X-Original-To and the envelope.
fn reply_tokens(config: &EmailConfig, message: &Message<'_>, envelope: &[String]) -> Vec<String> {
    let from_local = config.from_local_part();
    let mut addresses: Vec<String> = Vec::new();
    for list in [message.to(), message.cc()].into_iter().flatten() {
        addresses.extend(
            list.iter()
                .filter_map(|a| a.address.as_deref().map(str::to_owned)),
        );
    }
    for name in ["Delivered-To", "X-Original-To"] {
        for value in header_texts(message, name) {
            addresses.extend(addresses_in(value));
        }
    }
    for value in envelope {
        addresses.extend(addresses_in(value));
    }
    let mut seen = HashSet::new();
    addresses
        .iter()
        .filter_map(|a| reply_token(a, from_local.as_deref()))
        .filter(|t| seen.insert(t.clone()))
        .take(10)
        .collect()
}

/// The token of `reply+<token>@…` or `<from_local>+<token>@…`.
pub fn reply_token(address: &str, from_local: Option<&str>) -> Option<String> {
    let (local, _) = address.trim().rsplit_once('@')?;
    let (base, token) = local.split_once('+')?;
    let base = base.to_ascii_lowercase();
    if base != "reply" && Some(base.as_str()) != from_local {
        return None;
    }
    let valid = (1..=100).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    valid.then(|| token.to_owned())
}

/// The things in `text` that look like addresses (`a@b`), at most 50.
fn addresses_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| matches!(c, ',' | ';' | '<' | '>' | '"') || c.is_whitespace())
        .filter(|t| t.contains('@'))
        .take(50)
        .map(str::to_owned)
}

/// The values of every header named `name` (case-insensitive), as text.
fn header_texts<'m>(message: &'m Message<'_>, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
    message
        .headers()
        .iter()
        .filter(move |h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| h.value().as_text())
}

fn has_header(message: &Message<'_>, name: &str) -> bool {
    message
        .headers()
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case(name))
}

/// Why no person wrote this mail, if none did (RFC 3834 and common practice): `bounce`,
/// `auto_reply`, `bulk` or `spam`.
fn automatic(
    message: &Message<'_>,
    parts: &BodyParts,
    has_dsn: bool,
    spam: bool,
) -> Option<&'static str> {
    let report = message.root_part().content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct
                .attribute("report-type")
                .is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"))
    });
    let daemon = message
        .from()
        .and_then(Address::first)
        .and_then(|a| a.address.as_deref())
        .and_then(|a| a.split('@').next())
        .is_some_and(|local| {
            local.eq_ignore_ascii_case("mailer-daemon") || local.eq_ignore_ascii_case("postmaster")
        });
    if report
        || has_header(message, "X-Failed-Recipients")
        || (daemon && (has_dsn || parts.dsn.is_some()))
    {
        return Some("bounce");
    }
    let value = |name: &str| {
        header_texts(message, name).next().map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    };
    if value("Auto-Submitted").is_some_and(|v| v != "no") {
        return Some("auto_reply");
    }
    for name in ["X-Autoreply", "X-Autorespond", "X-Autoresponder"] {
        if value(name).is_some_and(|v| v != "no" && v != "false") {
            return Some("auto_reply");
        }
    }
    match value("Precedence").as_deref() {
        Some("auto_reply") => return Some("auto_reply"),
        Some("bulk" | "junk" | "list") => return Some("bulk"),
        _ => {}
    }
    if has_header(message, "List-Id") {
        return Some("bulk");
    }
    let spam_flag = ["X-Spam-Flag", "X-Mailgun-Sflag"]
        .iter()
        .any(|name| value(name).is_some_and(|v| v == "yes"));
    (spam || spam_flag).then_some("spam")
}

/// The failed delivery a bounce reports: from its delivery-status part (or, when the provider
/// gave none, from the text), else from `X-Failed-Recipients`.
fn bounce_of(message: &Message<'_>, parts: &BodyParts) -> Option<Bounce> {
    let from_dsn = parts
        .dsn
        .as_deref()
        .and_then(parse_dsn)
        .or_else(|| parts.plain.as_deref().and_then(parse_dsn));
    if from_dsn.is_some() {
        return from_dsn;
    }
    let failed = header_texts(message, "X-Failed-Recipients")
        .flat_map(addresses_in)
        .map(|a| a.to_lowercase())
        .next()?;
    Some(Bounce {
        recipient: failed,
        status: "5.0.0".to_owned(),
        diagnostic: "X-Failed-Recipients".to_owned(),
        hard: true,
    })
}

/// Reads the per-recipient fields of a `message/delivery-status` body (RFC 3464): blocks of
/// `Field: value` lines separated by blank lines. The first failed recipient wins, else the
/// first recipient.
pub fn parse_dsn(text: &str) -> Option<Bounce> {
    let mut best: Option<Bounce> = None;
    let mut block: Vec<(String, String)> = Vec::new();
    let finish = |block: &mut Vec<(String, String)>, best: &mut Option<Bounce>| {
        let field = |name: &str| {
            block
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let typed = |v: &str| {
            v.split_once(';')
                .map_or(v, |(_, rest)| rest)
                .trim()
                .to_owned()
        };
        let recipient = field("final-recipient")
            .or_else(|| field("original-recipient"))
            .map(|v| typed(v).trim_matches(['<', '>']).to_lowercase())
            .filter(|r| r.contains('@'));
        if let Some(recipient) = recipient {
            let status = field("status")
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            let action = field("action")
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let diagnostic: String = field("diagnostic-code")
                .map(typed)
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let hard = action == "failed" || status.starts_with('5');
            let better = match best {
                None => true,
                Some(b) => !b.hard && hard,
            };
            if better {
                *best = Some(Bounce {
                    recipient,
                    status,
                    diagnostic,
                    hard,
                });
            }
        }
        block.clear();
    };
    for line in text.lines().take(10_000) {
        if line.trim().is_empty() {
            finish(&mut block, &mut best);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut()
                && value.len() < 2000
            {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    finish(&mut block, &mut best);
    best
}

/// The contract's attachment kind for a MIME type.
fn attachment_kind(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or_default() {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        _ => "document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_tokens_take_plus_addresses_of_reply_and_the_from_local_part() {
        assert_eq!(
            reply_token("reply+abc.1_x-y@acme.example", None).as_deref(),
            Some("abc.1_x-y")
        );
        assert_eq!(
            reply_token("Help+T1@acme.example", Some("help")).as_deref(),
            Some("T1")
        );
        assert_eq!(reply_token("help+T1@acme.example", None), None);
        assert_eq!(reply_token("reply+@acme.example", None), None);
        assert_eq!(reply_token("reply+a/b@acme.example", None), None);
        assert_eq!(
            reply_token(&format!("reply+{}@x", "a".repeat(101)), None),
            None
        );
    }

    #[test]
    fn dsn_fields_are_read_per_recipient() {
        let dsn = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; <Gone@Example.com>\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n";
        let b = parse_dsn(dsn).expect("a recipient");
        assert_eq!(b.recipient, "gone@example.com");
        assert_eq!(b.status, "5.1.1");
        assert_eq!(b.diagnostic, "550 5.1.1 user unknown");
        assert!(b.hard);
        let delayed = "Final-Recipient: rfc822; slow@example.com\nAction: delayed\nStatus: 4.4.7\n";
        assert!(!parse_dsn(delayed).expect("a recipient").hard);
        assert_eq!(parse_dsn("nothing here"), None);
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=xYzZY").as_deref(),
            Some("xYzZY")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=utf-8; BOUNDARY=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary=\"\""), None);
    }
}
