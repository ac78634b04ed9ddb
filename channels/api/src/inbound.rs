//! Inbound: the JSON body of `POST /v1/messages`, parsed into the contract's shape.

use serde::Deserialize;
use switchboard_channel::{ContactRef, InboundError, InboundMessage};

/// Longest accepted message text, in characters.
pub const MAX_TEXT_CHARS: usize = 16_384;
/// Longest accepted id (contact external id, idempotency key), in bytes.
pub const MAX_ID_BYTES: usize = 256;

#[derive(Debug, Deserialize)]
struct WireContact {
    external_id: String,
    display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireRequest {
    contact: WireContact,
    text: String,
    idempotency_key: Option<String>,
    #[serde(default)]
    wait: bool,
}

/// A validated `POST /v1/messages` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInbound {
    pub contact: ContactRef,
    pub text: String,
    /// The client's key for this message; redelivering the same key stores nothing new.
    pub idempotency_key: Option<String>,
    /// Hold the response until the bot's reply exists.
    pub wait: bool,
}

impl ApiInbound {
    /// The normalized message. Without a client idempotency key the caller supplies a fresh id,
    /// so every such request is a new message.
    pub fn into_message(self, fresh_id: impl FnOnce() -> String) -> InboundMessage {
        InboundMessage::text(
            self.idempotency_key.unwrap_or_else(fresh_id),
            self.contact,
            self.text,
        )
    }
}

/// Parses the raw request body. Every refusal names the offending field.
pub fn parse_inbound(body: &[u8]) -> Result<ApiInbound, InboundError> {
    let wire: WireRequest =
        serde_json::from_slice(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
    // NUL is valid JSON (`\u0000`) but not storable text on every backend (PostgreSQL refuses it).
    let has_nul = |s: &str| s.contains('\0');
    if has_nul(&wire.text)
        || has_nul(&wire.contact.external_id)
        || wire.contact.display_name.as_deref().is_some_and(has_nul)
        || wire.idempotency_key.as_deref().is_some_and(has_nul)
    {
        return Err(InboundError::Malformed(
            "text fields must not contain NUL (\\u0000) characters".into(),
        ));
    }
    let external_id = wire.contact.external_id.trim().to_owned();
    if external_id.is_empty() || external_id.len() > MAX_ID_BYTES {
        return Err(InboundError::Malformed(format!(
            "contact.external_id must be 1..={MAX_ID_BYTES} bytes"
        )));
    }
    if wire.text.trim().is_empty() {
        return Err(InboundError::Malformed("text must not be empty".into()));
    }
    if wire.text.chars().count() > MAX_TEXT_CHARS {
        return Err(InboundError::Malformed(format!(
            "text is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    if let Some(key) = &wire.idempotency_key
        && (key.is_empty() || key.len() > MAX_ID_BYTES)
    {
        return Err(InboundError::Malformed(format!(
            "idempotency_key must be 1..={MAX_ID_BYTES} bytes"
        )));
    }
    let display_name = wire
        .contact
        .display_name
        .map(|n| n.trim().chars().take(200).collect::<String>())
        .filter(|n| !n.is_empty());
    Ok(ApiInbound {
        contact: ContactRef {
            external_id,
            display_name,
        },
        text: wire.text,
        idempotency_key: wire.idempotency_key,
        wait: wire.wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let req = parse_inbound(
            br#"{"contact":{"external_id":"u1","display_name":"Ann"},"text":"hi","idempotency_key":"k1","wait":true}"#,
        )
        .expect("valid");
        assert_eq!(req.contact.external_id, "u1");
        assert_eq!(req.contact.display_name.as_deref(), Some("Ann"));
        assert!(req.wait);
        let msg = req.into_message(|| unreachable!("key given"));
        assert_eq!(msg.provider_id, "k1");
    }

    #[test]
    fn without_a_key_each_message_gets_the_fresh_id() {
        let req = parse_inbound(br#"{"contact":{"external_id":"u1"},"text":"hi"}"#).expect("valid");
        assert!(!req.wait);
        assert_eq!(req.into_message(|| "fresh".into()).provider_id, "fresh");
    }

    #[test]
    fn refuses_what_it_cannot_store() {
        for body in [
            &b"not json"[..],
            br#"{"text":"hi"}"#,
            br#"{"contact":{"external_id":""},"text":"hi"}"#,
            br#"{"contact":{"external_id":"u"},"text":"   "}"#,
            br#"{"contact":{"external_id":"u"},"text":"hi","idempotency_key":""}"#,
            br#"{"contact":{"external_id":"u"},"text":42}"#,
            br#"{"contact":{"external_id":"u"},"text":"a\u0000b"}"#,
            br#"{"contact":{"external_id":"u\u0000"},"text":"hi"}"#,
        ] {
            assert!(
                matches!(parse_inbound(body), Err(InboundError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(
            r#"{{"contact":{{"external_id":"u"}},"text":"{}"}}"#,
            "a".repeat(MAX_TEXT_CHARS + 1)
        );
        assert!(parse_inbound(long.as_bytes()).is_err());
    }
}
