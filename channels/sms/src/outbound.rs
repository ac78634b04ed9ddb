//! Outbound: a reply as one or more SMS through Twilio's Messages API
//! (`POST {api_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded, Basic auth),
//! and downloads of the media people send.
//!
//! SMS is text: buttons and lists are rendered as numbered lines, media goes by public URL (MMS),
//! and what cannot be rendered (templates, media by provider id) is refused before anything is
//! sent. A reply longer than `max_segments` segments goes as several messages, in order; a retry
//! resumes after the parts Twilio already accepted, because Twilio's API has no idempotency key.
//!
//! Twilio's error codes decide what the outbox does next: rate limits wait, 5xx retries, an
//! opted-out recipient (21610) and numbers that cannot take SMS are final and recorded as such.

use std::time::Duration;

use serde_json::Value;
use switchboard_channel::egress::{describe, read_capped};
use switchboard_channel::{Content, OutboundMessage, Receipt, SendError, parse_retry_after};

use crate::config::SmsConfig;
use crate::segments;

/// Largest error answer read from Twilio.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Largest media file downloaded (Twilio accepts 5 MB per MMS; carriers deliver less).
pub const MAX_MEDIA_BYTES: usize = 16 * 1024 * 1024;

/// The wait after a rate limit that names none.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The line under numbered options.
pub const REPLY_HINT: &str = "Reply with a number";

/// Sends through one shared HTTP client (the channels' egress-guarded client).
#[derive(Debug, Clone)]
pub struct SmsSender {
    client: reqwest::Client,
}

/// What an outbound message renders as, for SMS: the text, with numbered options.
///
/// Buttons become lines under the text: `1. Title` for a reply button (numbered in order,
/// link buttons skipped), `Title: url` for a link button. A list's rows become numbered lines
/// (with their description after a dash, section titles above them when there are several
/// sections) and a last line, [`REPLY_HINT`]. Media by URL keeps the text as its body. Refused,
/// with the reason: templates (a WhatsApp feature) and media by provider id (SMS has none).
/// The core may call this before queueing, to refuse what can never be sent.
pub fn render(text: &str, content: &Content) -> Result<String, String> {
    if content.template.is_some() {
        return Err("templates are a WhatsApp feature: an SMS is text".into());
    }
    if let Some(media) = &content.media
        && media.url.is_none()
    {
        return Err("SMS has no media ids: give the media by url".into());
    }
    let mut lines: Vec<String> = Vec::new();
    let mut number = 0;
    for button in &content.buttons {
        match &button.url {
            Some(url) => lines.push(format!("{}: {url}", button.title)),
            None => {
                number += 1;
                lines.push(format!("{number}. {}", button.title));
            }
        }
    }
    if let Some(list) = &content.list {
        let titled = list.sections.len() > 1;
        for section in &list.sections {
            if titled && !section.title.trim().is_empty() {
                lines.push(section.title.clone());
            }
            for row in &section.rows {
                number += 1;
                lines.push(match &row.description {
                    Some(d) if !d.trim().is_empty() => format!("{number}. {} - {d}", row.title),
                    _ => format!("{number}. {}", row.title),
                });
            }
        }
        lines.push(REPLY_HINT.into());
    }
    if lines.is_empty() {
        return Ok(text.to_owned());
    }
    let options = lines.join("\n");
    Ok(if text.trim().is_empty() {
        options
    } else {
        format!("{text}\n{options}")
    })
}

/// The ids of the options [`render`] numbers, in order: a reply `2` chose `option_ids(..)[1]`.
pub fn option_ids(content: &Content) -> Vec<String> {
    let buttons = content
        .buttons
        .iter()
        .filter(|b| b.url.is_none())
        .map(|b| b.id.clone());
    let rows = content
        .list
        .iter()
        .flat_map(|l| &l.sections)
        .flat_map(|s| &s.rows)
        .map(|r| r.id.clone());
    buttons.chain(rows).collect()
}

impl SmsSender {
    /// A sender over `client` (in production the channels' egress-guarded client, see
    /// `switchboard_channel::egress::client_builder`).
    pub fn new(client: reqwest::Client) -> Self {
        SmsSender { client }
    }

    /// Sends one reply: the rendered text cut into messages of at most `max_segments`
    /// segments ([`segments::split`]), in order, the media (by URL) with the first. Parts an
    /// earlier attempt got accepted (`msg.parts_sent`) are skipped; each accepted part is counted
    /// in `msg.progress`. A failure after a part was accepted is [`SendError::Partial`].
    ///
    /// `status_callback` is the URL Twilio posts the delivery reports of every part to. The
    /// receipt names the *last* part's `sid`: the status that says the whole reply arrived.
    pub async fn send(
        &self,
        config: &SmsConfig,
        msg: &OutboundMessage,
        status_callback: Option<&str>,
    ) -> Result<Receipt, SendError> {
        let body = render(&msg.text, &msg.content).map_err(SendError::Permanent)?;
        let media_url = msg.content.media.as_ref().and_then(|m| m.url.as_deref());
        let mut parts = segments::split(&body, config.max_segments);
        if parts.is_empty() {
            if media_url.is_none() {
                return Err(SendError::Permanent(
                    "nothing to send: no text and no media".into(),
                ));
            }
            // Media alone: one message without a body.
            parts.push(String::new());
        }
        let skip = msg.parts_sent as usize;
        let mut receipt = Receipt::default();
        for (index, part) in parts.iter().enumerate().skip(skip) {
            let media = if index == 0 { media_url } else { None };
            match self
                .post(config, &msg.to, part, media, status_callback)
                .await
            {
                Ok(sid) => {
                    msg.progress.accepted(index as u32 + 1);
                    receipt.provider_message_id = sid;
                }
                // Counted from the start of the message, earlier attempts included.
                Err(error) if index > 0 => {
                    return Err(SendError::Partial {
                        parts_sent: index as u32,
                        error: Box::new(error),
                    });
                }
                Err(error) => return Err(error),
            }
        }
        Ok(receipt)
    }

    /// One Messages API call; the new message's `sid`.
    async fn post(
        &self,
        config: &SmsConfig,
        to: &str,
        body: &str,
        media_url: Option<&str>,
        status_callback: Option<&str>,
    ) -> Result<Option<String>, SendError> {
        let (user, secret) = config.credentials().ok_or_else(|| {
            SendError::Permanent("no credentials: auth_token or an API key is required".into())
        })?;
        // Built in a block: the serializer is not `Send`, so it must not live across the await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("To", to);
            match (&config.messaging_service_sid, &config.from) {
                (Some(service), _) => form.append_pair("MessagingServiceSid", service),
                (None, Some(from)) => form.append_pair("From", from),
                (None, None) => {
                    return Err(SendError::Permanent(
                        "no sender: from or messaging_service_sid is required".into(),
                    ));
                }
            };
            if !body.is_empty() {
                form.append_pair("Body", body);
            }
            if let Some(url) = media_url {
                form.append_pair("MediaUrl", url);
            }
            if let Some(url) = status_callback {
                form.append_pair("StatusCallback", url);
            }
            form.finish()
        };
        let response = self
            .client
            .post(config.messages_url())
            .basic_auth(user, Some(secret.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("Twilio request failed: {}", describe(e))))?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let answer: Value = match read_capped(response, MAX_ERROR_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            // A success whose answer was lost is still a success: the message is queued.
            Err(_) => Value::Null,
        };
        if (200..300).contains(&status) {
            return Ok(answer["sid"].as_str().map(str::to_owned));
        }
        Err(classify(status, &answer, retry_after))
    }

    /// Downloads a media item a person sent (an inbound attachment's reference, Twilio's
    /// `MediaUrl{N}`) with the account's Basic auth, at most [`MAX_MEDIA_BYTES`]. The
    /// credentials go only to Twilio (`*.twilio.com` over https) or `api_url`'s host; Twilio's
    /// redirect to its storage is followed by the client, which drops them on the way.
    pub async fn download(&self, config: &SmsConfig, url: &str) -> Result<Vec<u8>, SendError> {
        media_url_allowed(config, url)?;
        let (user, secret) = config.credentials().ok_or_else(|| {
            SendError::Permanent("no credentials: auth_token or an API key is required".into())
        })?;
        let response = self
            .client
            .get(url)
            .basic_auth(user, Some(secret.expose()))
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("media download failed: {}", describe(e))))?;
        if !response.status().is_success() {
            return Err(SendError::from_status(
                response.status().as_u16(),
                "the media download",
            ));
        }
        read_capped(response, MAX_MEDIA_BYTES)
            .await
            .map_err(SendError::from)
    }
}

/// The account's credentials go to Twilio's hosts (https) or the configured `api_url`'s host
/// only, so a media URL cannot send them, or the gateway, anywhere else.
fn media_url_allowed(config: &SmsConfig, url: &str) -> Result<(), SendError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| SendError::Permanent("the media url does not parse".into()))?;
    let host = parsed.host_str().map(str::to_ascii_lowercase);
    let api_host = reqwest::Url::parse(&config.api_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let twilio = parsed.scheme() == "https"
        && host
            .as_deref()
            .is_some_and(|h| h == "twilio.com" || h.ends_with(".twilio.com"));
    let configured =
        matches!(parsed.scheme(), "http" | "https") && host.is_some() && host == api_host;
    if twilio || configured {
        Ok(())
    } else {
        Err(SendError::Permanent(format!(
            "the media url is on {}, which is neither Twilio nor api_url's host",
            host.as_deref().unwrap_or("no host")
        )))
    }
}

/// Twilio error codes that mean this recipient cannot take SMS.
const UNREACHABLE_CODES: [i64; 7] = [21211, 21612, 21614, 30003, 30004, 30005, 30006];

/// Maps a Twilio error answer (`{"code":21610,"message":"…","more_info":"…","status":400}`) to
/// what the outbox should do.
///
/// - 429, 20429 (too many requests) and 14107 (send rate exceeded): wait `Retry-After` (1 s if
///   none) and retry;
/// - 21610 (the recipient replied STOP): [`SendError::OptedOut`];
/// - 21211 (invalid To), 21612 (cannot route to it), 21614 (not a mobile number) and
///   30003-30006 (unreachable, blocked, unknown, landline): [`SendError::Unreachable`];
/// - 5xx and 408: retry with back-off;
/// - anything else (20003 authentication, 21606 From not yours, 21602 body required, 21408
///   region not enabled, …): [`SendError::Permanent`] with `Twilio <code>: <message>`.
pub fn classify(status: u16, body: &Value, retry_after: Option<Duration>) -> SendError {
    let code = body["code"].as_i64();
    let message = body["message"].as_str().unwrap_or("no message");
    let reason = match code {
        Some(code) => format!("Twilio {code}: {message} (HTTP {status})"),
        None => format!("Twilio answered HTTP {status}: {message}"),
    };
    match code {
        _ if status == 429 => {
            SendError::RetryAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER), reason)
        }
        Some(20429 | 14107) => {
            SendError::RetryAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER), reason)
        }
        Some(21610) => SendError::OptedOut(reason),
        Some(code) if UNREACHABLE_CODES.contains(&code) => SendError::Unreachable(reason),
        _ if status >= 500 || status == 408 => SendError::Transient(reason),
        _ => SendError::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_channel::{Button, ListMenu, ListRow, ListSection, Media, Template};

    fn button(id: &str, title: &str, url: Option<&str>) -> Button {
        Button {
            id: id.into(),
            title: title.into(),
            url: url.map(str::to_owned),
        }
    }

    #[test]
    fn buttons_and_lists_render_as_numbered_lines() {
        let content = Content {
            buttons: vec![
                button("yes", "Yes", None),
                button("site", "Our site", Some("https://example.com")),
                button("no", "No", None),
            ],
            ..Content::default()
        };
        assert_eq!(
            render("Ready?", &content).expect("renders"),
            "Ready?\n1. Yes\nOur site: https://example.com\n2. No"
        );
        assert_eq!(option_ids(&content), vec!["yes", "no"]);
        let list = Content {
            list: Some(ListMenu {
                button: "Plans".into(),
                sections: vec![
                    ListSection {
                        title: "Weekly".into(),
                        rows: vec![ListRow {
                            id: "w1".into(),
                            title: "5k plan".into(),
                            description: Some("3 runs".into()),
                        }],
                    },
                    ListSection {
                        title: "Monthly".into(),
                        rows: vec![ListRow {
                            id: "m1".into(),
                            title: "Marathon".into(),
                            description: None,
                        }],
                    },
                ],
            }),
            ..Content::default()
        };
        assert_eq!(
            render("Pick one", &list).expect("renders"),
            "Pick one\nWeekly\n1. 5k plan - 3 runs\nMonthly\n2. Marathon\nReply with a number"
        );
        assert_eq!(option_ids(&list), vec!["w1", "m1"]);
        assert_eq!(render("plain", &Content::default()).expect("ok"), "plain");
    }

    #[test]
    fn templates_and_media_ids_cannot_be_rendered() {
        let template = Content {
            template: Some(Template {
                name: "hello".into(),
                language: None,
                parameters: Vec::new(),
            }),
            ..Content::default()
        };
        let err = render("x", &template).expect_err("templates");
        assert!(err.contains("WhatsApp"), "{err}");
        let by_id = Content {
            media: Some(Media {
                kind: "image".into(),
                url: None,
                id: Some("123".into()),
                filename: None,
            }),
            ..Content::default()
        };
        let err = render("x", &by_id).expect_err("media id");
        assert!(err.contains("media id"), "{err}");
    }

    #[test]
    fn twilio_error_codes_decide_retry_opt_out_or_dead_letter() {
        let err = |code: i64, status: u16| json!({ "code": code, "message": "m", "more_info": "https://www.twilio.com/docs/errors", "status": status });
        assert!(matches!(
            classify(400, &err(21610, 400), None),
            SendError::OptedOut(_)
        ));
        assert!(matches!(
            classify(400, &err(21211, 400), None),
            SendError::Unreachable(_)
        ));
        assert!(matches!(
            classify(400, &err(21614, 400), None),
            SendError::Unreachable(_)
        ));
        assert!(matches!(
            classify(400, &err(21612, 400), None),
            SendError::Unreachable(_)
        ));
        assert!(matches!(
            classify(429, &err(20429, 429), Some(Duration::from_secs(7))),
            SendError::RetryAfter(d, _) if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(429, &Value::Null, None),
            SendError::RetryAfter(d, _) if d == DEFAULT_RETRY_AFTER
        ));
        assert!(matches!(
            classify(500, &err(20500, 500), None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(503, &Value::Null, None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(408, &Value::Null, None),
            SendError::Transient(_)
        ));
        match classify(
            401,
            &json!({ "code": 20003, "message": "Authenticate", "status": 401 }),
            None,
        ) {
            SendError::Permanent(reason) => {
                assert!(reason.contains("20003: Authenticate"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        for code in [21606, 21602, 21408] {
            assert!(
                matches!(
                    classify(400, &err(code, 400), None),
                    SendError::Permanent(_)
                ),
                "{code}"
            );
        }
        assert!(!classify(400, &err(21610, 400), None).is_retryable());
        assert!(!classify(400, &err(21211, 400), None).is_retryable());
    }

    #[test]
    fn credentials_go_to_twilio_or_the_configured_api_only() {
        let config = SmsConfig::parse(&json!({
            "account_sid": "AC1", "auth_token": "t", "from": "+1555",
            "api_url": "http://127.0.0.1:9"
        }))
        .expect("valid");
        for ok in [
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            "https://api.dublin.ie1.twilio.com/x",
            "http://127.0.0.1:9/media/1",
        ] {
            assert!(media_url_allowed(&config, ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://api.twilio.com/x",
            "https://twilio.com.evil.example/x",
            "https://evil.example/api.twilio.com",
            "http://169.254.169.254/latest/meta-data/",
            "www.contoso.com",
        ] {
            assert!(media_url_allowed(&config, refused).is_err(), "{refused}");
        }
    }
}
