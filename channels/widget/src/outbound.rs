//! Server frames, and the outbox's sender for the widget.
//!
//! "Sending" a reply to a web visitor means telling their open sockets that the stored
//! conversation has something new ([`crate::Hub::messages`]); each socket reads it from the store
//! after the last seq it sent. A visitor with no socket open gets the message when they come back
//! (`hello` with their last seq): the stored conversation is the mailbox. So the send cannot fail
//! for the visitor's absence, and a retried send cannot duplicate anything.

use serde::Serialize;
use switchboard_channel::{OutboundMessage, Receipt, SendError};

use crate::hub::Hub;

/// A message as the widget sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireMessage {
    pub conversation_id: String,
    pub id: String,
    pub seq: i64,
    pub direction: String,
    pub author: String,
    pub text: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub citations: serde_json::Value,
}

/// A frame to the widget (see `docs/widget-protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        v: u32,
        token: String,
        visitor_id: String,
        conversation_id: Option<String>,
        last_seq: i64,
        heartbeat_ms: u64,
        theme: serde_json::Value,
    },
    Message(WireMessage),
    Sent {
        client_id: String,
        message_id: String,
        conversation_id: String,
        seq: i64,
        duplicate: bool,
    },
    Typing {
        on: bool,
    },
    Stream {
        stream_id: String,
        offset: usize,
        delta: String,
    },
    StreamReset {
        stream_id: String,
    },
    Pong,
    Error {
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    pub fn error(code: &str, message: impl Into<String>, client_id: Option<String>) -> ServerFrame {
        ServerFrame::Error {
            code: code.to_owned(),
            message: message.into(),
            client_id,
            retry_after_ms: None,
        }
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (string keys, no non-finite floats).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"unserializable frame"}"#.to_owned()
        })
    }
}

/// The outbox's sender for the widget channel.
#[derive(Debug, Clone, Default)]
pub struct WidgetSender {
    hub: Hub,
}

impl WidgetSender {
    pub fn new(hub: Hub) -> WidgetSender {
        WidgetSender { hub }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Wakes the visitor's sockets. Text only: buttons, lists, media and templates are not
    /// rendered by the widget yet, and a message carrying them is refused rather than shown
    /// without them.
    pub fn send(&self, msg: &OutboundMessage) -> Result<Receipt, SendError> {
        if !msg.content.is_empty() {
            return Err(SendError::Permanent(
                "the web widget shows text only (no buttons, lists, media or templates)".to_owned(),
            ));
        }
        self.hub.messages(&msg.to);
        Ok(Receipt {
            provider_message_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_serialize_as_documented() {
        let f = ServerFrame::Stream {
            stream_id: "m".into(),
            offset: 3,
            delta: "x".into(),
        };
        assert_eq!(
            f.to_text(),
            r#"{"type":"stream","stream_id":"m","offset":3,"delta":"x"}"#
        );
        assert_eq!(ServerFrame::Pong.to_text(), r#"{"type":"pong"}"#);
        let m = ServerFrame::Message(WireMessage {
            conversation_id: "c".into(),
            id: "i".into(),
            seq: 2,
            direction: "outbound".into(),
            author: "bot".into(),
            text: "hi".into(),
            created_at: "t".into(),
            client_id: None,
            reply_to: Some("r".into()),
            citations: serde_json::json!([]),
        });
        let v: serde_json::Value = serde_json::from_str(&m.to_text()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 2);
        assert_eq!(v["reply_to"], "r");
        assert!(v.get("client_id").is_none());
    }
}
