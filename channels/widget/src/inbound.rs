//! Client frames: parsed, checked, and a visitor's `send` normalized into an [`InboundMessage`].

use serde::Deserialize;
use switchboard_channel::{ContactRef, InboundMessage};

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4_000;
/// Longest client message id.
pub const MAX_CLIENT_ID: usize = 64;

/// A frame from the widget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        #[serde(default)]
        v: Option<u32>,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        conversation_id: Option<String>,
        #[serde(default)]
        last_seq: Option<i64>,
    },
    Send {
        client_id: String,
        text: String,
    },
    Ack {
        seq: i64,
    },
    Ping,
}

/// Why a frame was refused. `code` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    /// The `client_id` of a refused `send`, when it could be read.
    pub client_id: Option<String>,
}

impl ClientFrame {
    /// Parses one text frame. Anything but a well-formed frame of a known type is `bad_frame`; a
    /// `send` with an unusable id or text is `invalid_message`.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let frame: ClientFrame = serde_json::from_str(text).map_err(|e| FrameError {
            code: "bad_frame",
            message: format!("not a widget protocol frame: {e}"),
            client_id: None,
        })?;
        if let ClientFrame::Send { client_id, text } = &frame {
            let invalid = |message: String| FrameError {
                code: "invalid_message",
                message,
                client_id: is_client_id(client_id).then(|| client_id.clone()),
            };
            if !is_client_id(client_id) {
                return Err(invalid(format!(
                    "client_id must be 1 to {MAX_CLIENT_ID} characters A-Z a-z 0-9 _ -"
                )));
            }
            let chars = text.chars().count();
            if text.replace('\0', "").trim().is_empty() || chars > MAX_TEXT_CHARS {
                return Err(invalid(format!(
                    "text must be 1 to {MAX_TEXT_CHARS} characters (got {chars})"
                )));
            }
        }
        Ok(frame)
    }
}

pub fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CLIENT_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The provider id of a visitor's message: the client's id, scoped to the visitor so that two
/// visitors' ids can never collide.
pub fn provider_id(visitor_id: &str, client_id: &str) -> String {
    format!("{visitor_id}:{client_id}")
}

/// The `client_id` back from a stored provider id of this visitor.
pub fn client_id_of<'a>(visitor_id: &str, provider_id: &'a str) -> Option<&'a str> {
    provider_id
        .strip_prefix(visitor_id)
        .and_then(|rest| rest.strip_prefix(':'))
}

/// A visitor's `send` as the core's inbound message.
pub fn normalize(visitor_id: &str, client_id: &str, text: &str) -> InboundMessage {
    InboundMessage::text(
        provider_id(visitor_id, client_id),
        ContactRef {
            external_id: visitor_id.to_owned(),
            display_name: None,
        },
        text.replace('\0', ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_frame() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"hello","v":1,"token":null}"#).unwrap(),
            ClientFrame::Hello {
                v: Some(1),
                token: None,
                conversation_id: None,
                last_seq: None
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ack","seq":7}"#).unwrap(),
            ClientFrame::Ack { seq: 7 }
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"send","client_id":"a-1","text":"hi"}"#).unwrap(),
            ClientFrame::Send { .. }
        ));
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        for (frame, code) in [
            ("not json", "bad_frame"),
            (r#"{"type":"shout"}"#, "bad_frame"),
            (r#"{"type":"ack"}"#, "bad_frame"),
            (
                r#"{"type":"send","client_id":"","text":"hi"}"#,
                "invalid_message",
            ),
            (
                r#"{"type":"send","client_id":"a b","text":"hi"}"#,
                "invalid_message",
            ),
            (
                r#"{"type":"send","client_id":"ok","text":"   "}"#,
                "invalid_message",
            ),
            (
                r#"{"type":"send","client_id":"ok","text":"\u0000 \u0000"}"#,
                "invalid_message",
            ),
        ] {
            assert_eq!(ClientFrame::parse(frame).unwrap_err().code, code, "{frame}");
        }
        let long = format!(
            r#"{{"type":"send","client_id":"ok","text":"{}"}}"#,
            "x".repeat(MAX_TEXT_CHARS + 1)
        );
        let err = ClientFrame::parse(&long).unwrap_err();
        assert_eq!(
            (err.code, err.client_id.as_deref()),
            ("invalid_message", Some("ok"))
        );
    }

    #[test]
    fn provider_ids_are_scoped_to_the_visitor() {
        let id = provider_id("w_a", "c1");
        assert_eq!(client_id_of("w_a", &id), Some("c1"));
        assert_eq!(client_id_of("w_b", &id), None);
        assert_eq!(normalize("w_a", "c1", "hi\0").text, "hi");
    }
}
