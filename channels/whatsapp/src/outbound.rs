//! Outbound: a reply as a WhatsApp text message through the Graph API
//! (`POST {graph_url}/{phone_number_id}/messages`, bearer access token).
//!
//! Meta's error codes decide what the outbox does next: throughput limits (130429, 131056, 80007,
//! 4) are retried after the provider's wait; a closed 24-hour window (131047) and other request
//! errors are final and become a visible dead letter with Meta's reason.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_channel::{Content, OutboundMessage, Receipt, SendError, parse_retry_after};

use crate::config::WhatsappConfig;

/// The key in the channel's `templates` naming the template sent outside the 24-hour window.
pub const REENGAGE_TEMPLATE: &str = "reengage";

/// WhatsApp's customer-service window: free-form messages only this long after the contact last
/// wrote.
pub const CUSTOMER_SERVICE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Open,
    Closed,
}

/// Whether a free-form message may be sent at `now` (both Unix ms).
pub fn window(contact_last_wrote_at: Option<i64>, now: i64) -> Window {
    match contact_last_wrote_at {
        Some(at) if now.saturating_sub(at) < CUSTOMER_SERVICE_WINDOW_MS => Window::Open,
        _ => Window::Closed,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Longest text WhatsApp accepts in one message.
pub const MAX_TEXT_CHARS: usize = 4096;

#[derive(Debug, Clone)]
pub struct WhatsappSender {
    client: reqwest::Client,
}

impl WhatsappSender {
    pub fn new(client: reqwest::Client) -> Self {
        WhatsappSender { client }
    }

    pub async fn send(
        &self,
        config: &WhatsappConfig,
        msg: &OutboundMessage,
    ) -> Result<Receipt, SendError> {
        // A template the sender chose may go out whatever the window.
        if let Some(t) = &msg.content.template {
            let language = t.language.as_deref().unwrap_or(&config.template_language);
            let body = template_with(&msg.to, &t.name, language, &t.parameters);
            return self.post(config, &body).await;
        }
        let template = config.templates.get(REENGAGE_TEMPLATE);
        if window(msg.contact_last_wrote_at, now_ms()) == Window::Closed {
            // Outside the window only an approved template may be sent: the tenant's
            // re-engagement template (the reply stays in the conversation for when the contact
            // writes back), or a visible failure.
            return match template {
                Some(name) => {
                    self.post(config, &template_body(config, &msg.to, name))
                        .await
                }
                None => Err(SendError::Permanent(format!(
                    "outside the 24-hour customer service window and no `{REENGAGE_TEMPLATE}` template is configured for this number"
                ))),
            };
        }
        if let Some(body) = rich_body(&msg.to, &msg.text, &msg.content)? {
            return self.post(config, &body).await;
        }
        // Longer replies go out as several messages, in order, resuming after the parts an
        // earlier attempt got accepted.
        let chars: Vec<char> = msg.text.chars().collect();
        let mut receipt = Receipt::default();
        let skip = msg.parts_sent as usize;
        for (index, chunk) in chars.chunks(MAX_TEXT_CHARS).enumerate().skip(skip) {
            let text: String = chunk.iter().collect();
            let body = json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": msg.to,
                "type": "text",
                "text": { "preview_url": false, "body": text },
            });
            let sent = match self.post(config, &body).await {
                // Meta says the window closed after all (clocks differ): the template, if any.
                Err(SendError::Permanent(reason)) if reason.contains("error 131047") => {
                    match template {
                        Some(name) => {
                            self.post(config, &template_body(config, &msg.to, name))
                                .await
                        }
                        None => Err(SendError::Permanent(reason)),
                    }
                }
                other => other,
            };
            receipt = match sent {
                Ok(r) => {
                    msg.progress.accepted(index as u32 + 1);
                    r
                }
                Err(error) if index > skip => {
                    return Err(SendError::Partial {
                        parts_sent: index as u32,
                        error: Box::new(error),
                    });
                }
                Err(error) => return Err(error),
            };
        }
        Ok(receipt)
    }

    /// Fetches a media item the person sent, by its media id: the Graph API gives a short-lived
    /// URL (`GET {graph_url}/{media_id}`), which is then downloaded with the same token.
    pub async fn download(
        &self,
        config: &WhatsappConfig,
        media_id: &str,
    ) -> Result<Vec<u8>, SendError> {
        let meta_url = format!("{}/{media_id}", config.graph_url.trim_end_matches('/'));
        let response = self
            .client
            .get(meta_url)
            .bearer_auth(config.access_token.expose())
            .send()
            .await
            .map_err(|e| {
                SendError::Transient(format!(
                    "Graph API request failed: {}",
                    switchboard_channel::egress::describe(e)
                ))
            })?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(classify(status, &answer, None));
        }
        let url = answer["url"]
            .as_str()
            .ok_or_else(|| SendError::Permanent("the Graph API gave no media url".into()))?;
        media_url_allowed(config, url)?;
        let response = self
            .client
            .get(url)
            .bearer_auth(config.access_token.expose())
            .send()
            .await
            .map_err(|e| {
                SendError::Transient(format!(
                    "media download failed: {}",
                    switchboard_channel::egress::describe(e)
                ))
            })?;
        if !response.status().is_success() {
            return Err(SendError::from_status(
                response.status().as_u16(),
                "the media download",
            ));
        }
        switchboard_channel::egress::read_capped(response, MAX_MEDIA_BYTES)
            .await
            .map_err(SendError::from)
    }

    /// Marks an inbound message read (blue ticks) and shows a typing indicator while the bot
    /// prepares its answer.
    pub async fn mark_read(
        &self,
        config: &WhatsappConfig,
        message_id: &str,
    ) -> Result<(), SendError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": { "type": "text" },
        });
        self.post(config, &body).await.map(|_| ())
    }

    async fn post(&self, config: &WhatsappConfig, body: &Value) -> Result<Receipt, SendError> {
        let response = self
            .client
            .post(config.messages_url())
            .bearer_auth(config.access_token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| {
                SendError::Transient(format!(
                    "Graph API request failed: {}",
                    switchboard_channel::egress::describe(e)
                ))
            })?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            let id = answer["messages"][0]["id"].as_str().map(str::to_owned);
            return Ok(Receipt {
                provider_message_id: id,
            });
        }
        Err(classify(status, &answer, retry_after))
    }
}

/// Media, reply buttons or a list, as one Graph API message; `None` for plain text.
pub fn rich_body(to: &str, text: &str, content: &Content) -> Result<Option<Value>, SendError> {
    let limit = |what: &str, value: &str, max: usize| {
        if value.chars().count() > max {
            Err(SendError::Permanent(format!(
                "WhatsApp allows at most {max} characters in {what}: {value:?}"
            )))
        } else {
            Ok(())
        }
    };
    let envelope = |kind: &str, payload: Value| {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": kind,
        });
        body[kind] = payload;
        body
    };
    if let Some(media) = &content.media {
        if !content.buttons.is_empty() || content.list.is_some() {
            return Err(SendError::Permanent(
                "WhatsApp cannot combine media with buttons or a list in one message".into(),
            ));
        }
        let mut payload = match (&media.url, &media.id) {
            (Some(url), _) => json!({ "link": url }),
            (None, Some(id)) => json!({ "id": id }),
            (None, None) => {
                return Err(SendError::Permanent("media needs a url or an id".into()));
            }
        };
        let captioned = matches!(media.kind.as_str(), "image" | "video" | "document");
        if captioned && !text.trim().is_empty() {
            limit("a media caption", text, 1024)?;
            payload["caption"] = text.into();
        } else if !text.trim().is_empty() {
            return Err(SendError::Permanent(format!(
                "WhatsApp {} messages carry no caption",
                media.kind
            )));
        }
        if let Some(name) = &media.filename
            && media.kind == "document"
        {
            payload["filename"] = name.as_str().into();
        }
        return Ok(Some(envelope(&media.kind, payload)));
    }
    if text.trim().is_empty() && (!content.buttons.is_empty() || content.list.is_some()) {
        return Err(SendError::Permanent(
            "WhatsApp interactive messages need a body text".into(),
        ));
    }
    if !content.buttons.is_empty() {
        if content.buttons.len() > 3 {
            return Err(SendError::Permanent(
                "WhatsApp allows at most 3 reply buttons (use a list for more)".into(),
            ));
        }
        if content.buttons.iter().any(|b| b.url.is_some()) {
            return Err(SendError::Permanent(
                "WhatsApp reply buttons cannot be links".into(),
            ));
        }
        limit("an interactive body", text, 1024)?;
        let mut buttons = Vec::new();
        for b in &content.buttons {
            limit("a button title", &b.title, 20)?;
            limit("a button id", &b.id, 256)?;
            buttons.push(json!({ "type": "reply", "reply": { "id": b.id, "title": b.title } }));
        }
        return Ok(Some(envelope(
            "interactive",
            json!({ "type": "button", "body": { "text": text }, "action": { "buttons": buttons } }),
        )));
    }
    if let Some(list) = &content.list {
        let rows: usize = list.sections.iter().map(|s| s.rows.len()).sum();
        if rows > 10 || list.sections.len() > 10 {
            return Err(SendError::Permanent(
                "WhatsApp lists hold at most 10 rows".into(),
            ));
        }
        limit("an interactive body", text, 4096)?;
        limit("a list button", &list.button, 20)?;
        let mut sections = Vec::new();
        for section in &list.sections {
            limit("a section title", &section.title, 24)?;
            let mut out_rows = Vec::new();
            for row in &section.rows {
                limit("a row title", &row.title, 24)?;
                limit("a row id", &row.id, 200)?;
                let mut r = json!({ "id": row.id, "title": row.title });
                if let Some(d) = &row.description {
                    limit("a row description", d, 72)?;
                    r["description"] = d.as_str().into();
                }
                out_rows.push(r);
            }
            sections.push(json!({ "title": section.title, "rows": out_rows }));
        }
        return Ok(Some(envelope(
            "interactive",
            json!({ "type": "list", "body": { "text": text },
                    "action": { "button": list.button, "sections": sections } }),
        )));
    }
    Ok(None)
}

/// A template message with body parameters, in order.
pub fn template_with(to: &str, name: &str, language: &str, parameters: &[String]) -> Value {
    let mut template = json!({ "name": name, "language": { "code": language } });
    if !parameters.is_empty() {
        let params: Vec<Value> = parameters
            .iter()
            .map(|p| json!({ "type": "text", "text": p }))
            .collect();
        template["components"] = json!([{ "type": "body", "parameters": params }]);
    }
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": template,
    })
}

fn template_body(config: &WhatsappConfig, to: &str, name: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": { "name": name, "language": { "code": config.template_language } },
    })
}

/// Maps a Graph API error answer to what the outbox should do.
pub fn classify(status: u16, answer: &Value, retry_after: Option<Duration>) -> SendError {
    let error = &answer["error"];
    let code = error["code"].as_i64();
    let message = error["message"].as_str().unwrap_or("no message");
    let reason = match code {
        Some(code) => format!("Graph API {status}, error {code}: {message}"),
        None => format!("Graph API {status}: {message}"),
    };
    match code {
        // Throughput and pair-rate limits: wait, then try again.
        // Without a Retry-After the outbox's exponential back-off applies.
        Some(130429 | 131056 | 80007 | 4) => match retry_after {
            Some(wait) => SendError::RetryAfter(wait, reason),
            None => SendError::Transient(reason),
        },
        // The customer-service window is closed: a free-form message cannot be sent.
        Some(131047) => SendError::Permanent(format!(
            "outside the 24-hour customer service window (a template is needed): {reason}"
        )),
        _ if status == 429 => match retry_after {
            Some(wait) => SendError::RetryAfter(wait, reason),
            None => SendError::Transient(reason),
        },
        _ if status >= 500 => SendError::Transient(reason),
        // Meta marks passing failures (e.g. 131000 "something went wrong") as transient.
        _ if error["is_transient"].as_bool() == Some(true) => SendError::Transient(reason),
        _ => SendError::Permanent(reason),
    }
}

/// Largest media file downloaded (WhatsApp's own limit for documents is 100 MB).
pub const MAX_MEDIA_BYTES: usize = 100 * 1024 * 1024;

/// Meta's media host: the Graph API answers media URLs on it.
const META_MEDIA_HOSTS: [&str; 1] = ["lookaside.fbsbx.com"];

/// The access token goes only where Meta keeps media: its media host, or the host of the
/// configured `graph_url` (a proxy or a stand-in). A media URL anywhere else is refused, so a
/// Graph server cannot send the token, or the gateway, to a host of its choosing.
fn media_url_allowed(config: &WhatsappConfig, url: &str) -> Result<(), SendError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| {
        SendError::Permanent("the Graph API gave a media url that does not parse".into())
    })?;
    let graph_host = reqwest::Url::parse(&config.graph_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let host = parsed.host_str().map(str::to_ascii_lowercase);
    let allowed = matches!(parsed.scheme(), "https" | "http")
        && host
            .as_deref()
            .is_some_and(|h| META_MEDIA_HOSTS.contains(&h) || graph_host.as_deref() == Some(h));
    if allowed {
        Ok(())
    } else {
        Err(SendError::Permanent(format!(
            "the Graph API gave a media url on {}, which is neither Meta's media host nor graph_url's host",
            host.as_deref().unwrap_or("no host")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_channel::{Button, ListMenu, ListRow, ListSection, Media};

    #[test]
    fn rich_content_becomes_graph_api_messages_within_metas_limits() {
        let buttons = Content {
            buttons: vec![
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
            ],
            ..Content::default()
        };
        let body = rich_body("15551234567", "Ready?", &buttons)
            .expect("ok")
            .expect("rich");
        assert_eq!(body["type"], "interactive");
        assert_eq!(body["interactive"]["type"], "button");
        assert_eq!(
            body["interactive"]["action"]["buttons"][1]["reply"]["id"],
            "no"
        );
        let mut four = buttons.clone();
        for i in 0..2 {
            four.buttons.push(Button {
                id: format!("b{i}"),
                title: "x".into(),
                url: None,
            });
        }
        assert!(
            rich_body("1", "t", &four).is_err(),
            "at most 3 reply buttons"
        );
        let list = Content {
            list: Some(ListMenu {
                button: "Plans".into(),
                sections: vec![ListSection {
                    title: "Weekly".into(),
                    rows: vec![ListRow {
                        id: "w1".into(),
                        title: "5k plan".into(),
                        description: None,
                    }],
                }],
            }),
            ..Content::default()
        };
        let body = rich_body("1", "Pick one", &list)
            .expect("ok")
            .expect("rich");
        assert_eq!(
            body["interactive"]["action"]["sections"][0]["rows"][0]["id"],
            "w1"
        );
        let image = Content {
            media: Some(Media {
                kind: "image".into(),
                url: Some("https://x/y.png".into()),
                id: None,
                filename: None,
            }),
            ..Content::default()
        };
        let body = rich_body("1", "Your chart", &image)
            .expect("ok")
            .expect("rich");
        assert_eq!(body["image"]["link"], "https://x/y.png");
        assert_eq!(body["image"]["caption"], "Your chart");
        assert!(
            rich_body("1", "plain", &Content::default())
                .expect("ok")
                .is_none()
        );
        let t = template_with("1", "checkin", "en_US", &["Ann".into(), "3".into()]);
        assert_eq!(t["template"]["components"][0]["parameters"][1]["text"], "3");
    }

    #[test]
    fn the_window_is_open_for_24_hours_after_the_contact_wrote() {
        let now = 1_700_000_000_000;
        assert_eq!(window(Some(now - 1_000), now), Window::Open);
        assert_eq!(
            window(Some(now - CUSTOMER_SERVICE_WINDOW_MS + 1), now),
            Window::Open
        );
        assert_eq!(
            window(Some(now - CUSTOMER_SERVICE_WINDOW_MS), now),
            Window::Closed
        );
        assert_eq!(window(None, now), Window::Closed);
    }

    #[test]
    fn meta_error_codes_decide_retry_or_dead_letter() {
        let err = |code: i64| json!({ "error": { "code": code, "message": "m" } });
        // Without Retry-After the outbox's own exponential back-off applies.
        assert!(matches!(
            classify(400, &err(130429), None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(400, &err(131056), Some(Duration::from_secs(9))),
            SendError::RetryAfter(d, _) if d == Duration::from_secs(9)
        ));
        match classify(400, &err(131047), None) {
            SendError::Permanent(reason) => assert!(reason.contains("24-hour"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(500, &err(1), None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(400, &err(100), None),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify(429, &Value::Null, None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(429, &Value::Null, Some(Duration::from_secs(3))),
            SendError::RetryAfter(..)
        ));
        let transient = json!({ "error": { "code": 131000, "is_transient": true } });
        assert!(matches!(
            classify(400, &transient, None),
            SendError::Transient(_)
        ));
    }
}
