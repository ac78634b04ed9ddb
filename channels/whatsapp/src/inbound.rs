//! Inbound: the subscription handshake, the signature check and the webhook payload.
//!
//! Meta delivers at least once and retries for days, batches several entries, changes, messages
//! and statuses in one POST, sends statuses out of order, and escapes non-ASCII as `\uXXXX` — so
//! the signature is checked over the raw bytes, never over re-serialised JSON, and every message
//! keeps its `wamid` as the provider id the core deduplicates on.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use switchboard_channel::{
    Attachment, ContactRef, DeliveryState, InboundError, InboundEvent, InboundMessage, Secret,
    StatusUpdate,
};

/// The header carrying `sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Checks `X-Hub-Signature-256` against the raw body, in constant time.
pub fn verify_signature(
    app_secret: &Secret,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), InboundError> {
    let header =
        header.ok_or_else(|| InboundError::Unauthorized("missing X-Hub-Signature-256".into()))?;
    let hex_sig = header.trim().strip_prefix("sha256=").ok_or_else(|| {
        InboundError::Unauthorized("X-Hub-Signature-256 must start with sha256=".into())
    })?;
    let signature = hex::decode(hex_sig)
        .map_err(|_| InboundError::Unauthorized("X-Hub-Signature-256 is not hex".into()))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_secret.expose().as_bytes())
        .map_err(|_| InboundError::Unauthorized("unusable app secret".into()))?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        InboundError::Unauthorized("X-Hub-Signature-256 does not match the body".into())
    })
}

/// The `GET` subscription handshake: the challenge to echo when `hub.mode` is `subscribe` and
/// `hub.verify_token` matches (compared in constant time); `None` otherwise (answer 403).
pub fn verify_subscription(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&str>,
    expected_token: &Secret,
) -> Option<String> {
    let token_ok: bool = token?
        .as_bytes()
        .ct_eq(expected_token.expose().as_bytes())
        .into();
    (mode == Some("subscribe") && token_ok)
        .then(|| challenge.map(str::to_owned))
        .flatten()
}

/// Parses a webhook POST body (already verified) into normalized events, in payload order.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<InboundEvent>, InboundError> {
    parse_webhook_for(body, None)
}

/// Like [`parse_webhook`], for one number: changes addressed to another `phone_number_id` (two
/// numbers of one Meta app share its secret) become notices, never messages of this channel.
/// One item this adapter cannot read becomes a notice too: the rest of the POST is still stored,
/// and Meta does not retry a payload that can never succeed.
pub fn parse_webhook_for(
    body: &[u8],
    phone_number_id: Option<&str>,
) -> Result<Vec<InboundEvent>, InboundError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
    if payload["object"] != "whatsapp_business_account" {
        return Err(InboundError::Malformed(
            "object must be \"whatsapp_business_account\"".into(),
        ));
    }
    let entries = payload["entry"]
        .as_array()
        .ok_or_else(|| InboundError::Malformed("entry must be an array".into()))?;
    let mut events = Vec::new();
    for entry in entries {
        for change in entry["changes"].as_array().into_iter().flatten() {
            let field = change["field"].as_str().unwrap_or("unknown");
            let value = &change["value"];
            if field != "messages" {
                events.push(InboundEvent::Notice {
                    topic: field.to_owned(),
                    detail: value.to_string(),
                });
                continue;
            }
            let addressed_to = value["metadata"]["phone_number_id"].as_str();
            if let (Some(ours), Some(theirs)) = (phone_number_id, addressed_to)
                && ours != theirs
            {
                events.push(InboundEvent::Notice {
                    topic: "other_number".to_owned(),
                    detail: format!("change for phone_number_id {theirs} ignored"),
                });
                continue;
            }
            for message in value["messages"].as_array().into_iter().flatten() {
                events.push(match normalize_message(message, value) {
                    Ok(m) => InboundEvent::Message(m),
                    Err(e) => unreadable("message", message, &e),
                });
            }
            for status in value["statuses"].as_array().into_iter().flatten() {
                events.push(match normalize_status(status) {
                    Ok(s) => InboundEvent::Status(s),
                    Err(e) => unreadable("status", status, &e),
                });
            }
            if value["messages"].is_null() && value["statuses"].is_null() {
                // e.g. a change carrying only `errors`: kept visible.
                events.push(InboundEvent::Notice {
                    topic: "messages".to_owned(),
                    detail: value.to_string(),
                });
            }
        }
    }
    Ok(events)
}

/// An item this adapter cannot read, kept as a notice with the reason.
fn unreadable(what: &str, item: &Value, error: &InboundError) -> InboundEvent {
    InboundEvent::Notice {
        topic: format!("unreadable_{what}"),
        detail: format!("{error}: {item}"),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v[key].as_str().filter(|s| !s.is_empty())
}

fn required<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, InboundError> {
    str_of(v, key).ok_or_else(|| InboundError::Malformed(format!("{what} without {key}")))
}

/// Meta sends Unix seconds as a string; accept a number too.
fn timestamp(v: &Value) -> Option<i64> {
    v["timestamp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["timestamp"].as_i64())
}

fn normalize_message(m: &Value, value: &Value) -> Result<InboundMessage, InboundError> {
    let id = required(m, "id", "message")?;
    // Newer payloads may identify the user by `from_user_id` only.
    let from = str_of(m, "from")
        .or_else(|| str_of(m, "from_user_id"))
        .ok_or_else(|| InboundError::Malformed("message without from".into()))?;
    let display_name = value["contacts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["wa_id"].as_str() == Some(from))
        .and_then(|c| c["profile"]["name"].as_str())
        .map(str::to_owned);
    let kind = str_of(m, "type").unwrap_or("unknown");
    let mut msg = InboundMessage::text(
        id,
        ContactRef {
            external_id: from.to_owned(),
            display_name,
        },
        "",
    );
    msg.sent_at = timestamp(m);
    msg.reply_to = str_of(&m["context"], "id").map(str::to_owned);
    let (kind, text, attachments, reply_to) = body_of(kind, m);
    msg.kind = kind;
    msg.text = text;
    msg.attachments = attachments;
    if reply_to.is_some() {
        msg.reply_to = reply_to;
    }
    if m["referral"].is_object() {
        msg.attachments.push(attachment(
            "referral",
            str_of(&m["referral"], "source_url").unwrap_or_default(),
            None,
            str_of(&m["referral"], "headline"),
        ));
    }
    Ok(msg)
}

fn attachment(
    kind: &str,
    reference: &str,
    mime: Option<&str>,
    caption: Option<&str>,
) -> Attachment {
    Attachment {
        kind: kind.to_owned(),
        reference: reference.to_owned(),
        mime_type: mime.map(str::to_owned),
        caption: caption.map(str::to_owned),
    }
}

/// `(kind, text, attachments, reply_to)` of one message body, by WhatsApp type.
fn body_of(kind: &str, m: &Value) -> (String, String, Vec<Attachment>, Option<String>) {
    let body = &m[kind];
    let none = Vec::new;
    match kind {
        "text" => (
            kind.into(),
            str_of(body, "body").unwrap_or_default().into(),
            none(),
            None,
        ),
        "image" | "video" | "document" | "audio" | "sticker" => {
            // Media: a reference (media id, or URL when Meta includes one), never the bytes.
            let reference = str_of(body, "id")
                .or(str_of(body, "url"))
                .unwrap_or_default();
            let caption = str_of(body, "caption");
            let kind = if kind == "audio" && body["voice"].as_bool() == Some(true) {
                "voice"
            } else {
                kind
            };
            let file = attachment(kind, reference, str_of(body, "mime_type"), caption);
            (
                kind.into(),
                caption.unwrap_or_default().into(),
                vec![file],
                None,
            )
        }
        "location" => {
            let (lat, long) = (body["latitude"].as_f64(), body["longitude"].as_f64());
            let reference = match (lat, long) {
                (Some(lat), Some(long)) => format!("{lat},{long}"),
                _ => String::new(),
            };
            let label: Vec<&str> = [str_of(body, "name"), str_of(body, "address")]
                .into_iter()
                .flatten()
                .collect();
            let text = label.join(", ");
            let place = attachment(
                "location",
                &reference,
                None,
                Some(&text).filter(|t| !t.is_empty()).map(|t| t.as_str()),
            );
            (kind.into(), text, vec![place], None)
        }
        "contacts" => {
            let mut names = Vec::new();
            let mut cards = Vec::new();
            for c in m["contacts"].as_array().into_iter().flatten() {
                let name = str_of(&c["name"], "formatted_name").unwrap_or("contact");
                let phone = c["phones"][0]["phone"].as_str().unwrap_or_default();
                names.push(format!("{name} {phone}").trim().to_owned());
                cards.push(attachment("contact", phone, None, Some(name)));
            }
            (kind.into(), names.join("; "), cards, None)
        }
        "interactive" => {
            let itype = str_of(body, "type").unwrap_or("interactive");
            let reply = &body[itype];
            let text = match itype {
                "list_reply" => [str_of(reply, "title"), str_of(reply, "description")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" — "),
                "nfm_reply" => str_of(reply, "body").unwrap_or_default().to_owned(),
                "call_permission_reply" => str_of(reply, "response").unwrap_or_default().to_owned(),
                _ => str_of(reply, "title").unwrap_or_default().to_owned(),
            };
            // What the bot needs to act on: the button/row id, or the flow's answers.
            let data = str_of(reply, "id")
                .map(str::to_owned)
                .or_else(|| str_of(reply, "response_json").map(str::to_owned))
                .unwrap_or_default();
            (
                itype.into(),
                text,
                vec![attachment(itype, &data, None, None)],
                None,
            )
        }
        "button" => {
            // A template's quick-reply button.
            let payload = str_of(body, "payload").unwrap_or_default();
            let text = str_of(body, "text").unwrap_or(payload).to_owned();
            (
                "button_reply".into(),
                text,
                vec![attachment("button_reply", payload, None, None)],
                None,
            )
        }
        "reaction" => {
            // An empty or missing emoji means the reaction was removed.
            let emoji = str_of(body, "emoji").unwrap_or_default();
            let kind = if emoji.is_empty() {
                "reaction_removed"
            } else {
                "reaction"
            };
            let target = str_of(body, "message_id").map(str::to_owned);
            (kind.into(), emoji.into(), none(), target)
        }
        "order" => {
            let items = body["product_items"].as_array().map_or(0, Vec::len);
            let note = str_of(body, "text")
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            let text = format!("order of {items} item(s){note}");
            let catalog = str_of(body, "catalog_id").unwrap_or_default();
            (
                kind.into(),
                text,
                vec![attachment("order", catalog, None, None)],
                None,
            )
        }
        "system" => (
            kind.into(),
            str_of(body, "body").unwrap_or_default().into(),
            none(),
            None,
        ),
        "revoke" | "edit" => {
            let original = str_of(body, "original_message_id").map(str::to_owned);
            let text = match kind {
                "edit" => {
                    let inner = &body["message"];
                    let inner_kind = str_of(inner, "type").unwrap_or("text");
                    let (_, text, _, _) = body_of(inner_kind, inner);
                    text
                }
                _ => String::new(),
            };
            (kind.into(), text, none(), original)
        }
        "unsupported" => {
            let error = &m["errors"][0];
            let detail = match (error["code"].as_i64(), str_of(error, "title")) {
                (Some(code), Some(title)) => format!("{code}: {title}"),
                (Some(code), None) => code.to_string(),
                _ => "unsupported".into(),
            };
            let what = str_of(body, "type").unwrap_or("unknown");
            (
                kind.into(),
                String::new(),
                vec![attachment("unsupported", what, None, Some(&detail))],
                None,
            )
        }
        // A type this adapter does not know yet: kept under its own name, never an error.
        other => (other.into(), String::new(), none(), None),
    }
}

fn normalize_status(s: &Value) -> Result<StatusUpdate, InboundError> {
    let state = match required(s, "status", "status")? {
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "played" => DeliveryState::Played,
        "failed" => DeliveryState::Failed,
        other => {
            return Err(InboundError::Malformed(format!("unknown status {other:?}")));
        }
    };
    let error = s["errors"]
        .as_array()
        .and_then(|errors| errors.first())
        .map(|e| {
            let code = e["code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default();
            let title = str_of(e, "title")
                .or(str_of(e, "message"))
                .unwrap_or_default();
            format!("{code}: {title}")
        });
    Ok(StatusUpdate {
        provider_message_id: required(s, "id", "status")?.to_owned(),
        state,
        recipient: str_of(s, "recipient_id").unwrap_or_default().to_owned(),
        at: timestamp(s),
        error,
    })
}
