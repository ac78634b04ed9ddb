//! The contract between Switchboard's core and its channel adapters.
//!
//! Where it sits: every adapter under `channels/` turns a provider's request (headers + raw bytes)
//! into [`InboundMessage`]s, and turns an [`OutboundMessage`] into a provider API call that ends in a
//! [`Receipt`] or a typed [`SendError`]. Provider types never cross this boundary: the core only ever
//! sees what is defined here.
//!
//! What it must never do: depend on the core, on a database, or on any one provider.

pub mod egress;
pub mod html;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The closed set of channels Switchboard speaks. Dispatch is a `match` over this enum, not a
/// plugin registry: we know our channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// The generic HTTP channel (`POST /v1/messages`, replies to an optional callback URL).
    Api,
    Widget,
    Telegram,
    Whatsapp,
    Sms,
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 6] = [
        ChannelKind::Api,
        ChannelKind::Widget,
        ChannelKind::Telegram,
        ChannelKind::Whatsapp,
        ChannelKind::Sms,
        ChannelKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Api => "api",
            ChannelKind::Widget => "widget",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Whatsapp => "whatsapp",
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
        }
    }

    /// Parses the wire name (`"api"`, `"telegram"`, …); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a message, as the provider identifies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRef {
    /// The provider's stable id for the person (chat id, phone number, email address, …).
    pub external_id: String,
    pub display_name: Option<String>,
}

/// A file or media item referenced by a message. Adapters store references, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `image`, `audio`, `video`, `document`, `sticker`, `location`, …
    pub kind: String,
    /// Provider reference (file id, media id or URL).
    pub reference: String,
    pub mime_type: Option<String>,
    pub caption: Option<String>,
}

/// One message from an end user, normalized. This is the only shape the core's ingest accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The provider's id for this message (or the client's idempotency key). Redeliveries carry the
    /// same id; the core stores a message once per `(channel, provider_id)`.
    pub provider_id: String,
    pub contact: ContactRef,
    /// What the person said, as text: the message body, a caption, a button's title, a location's
    /// name… Empty when the message carries nothing textual (a photo without caption).
    pub text: String,
    pub attachments: Vec<Attachment>,
    /// The provider's message type, normalized to snake_case (`text`, `image`, `reaction`,
    /// `button_reply`, `unsupported`, …). Unknown types keep the provider's name.
    #[serde(default = "text_kind")]
    pub kind: String,
    /// The provider id of the message this one answers or reacts to, if any.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// When the person sent it (Unix seconds), as the provider says.
    #[serde(default)]
    pub sent_at: Option<i64>,
}

fn text_kind() -> String {
    "text".to_owned()
}

impl InboundMessage {
    /// A plain text message.
    pub fn text(
        provider_id: impl Into<String>,
        contact: ContactRef,
        text: impl Into<String>,
    ) -> Self {
        InboundMessage {
            provider_id: provider_id.into(),
            contact,
            text: text.into(),
            attachments: Vec::new(),
            kind: text_kind(),
            reply_to: None,
            sent_at: None,
        }
    }
}

/// How far an outbound message got, as the provider reports it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Sent,
    Delivered,
    Read,
    /// Voice message listened to.
    Played,
    Failed,
}

/// A provider's report about a message we sent. Reports arrive in any order and may repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The provider's id of our message.
    pub provider_message_id: String,
    pub state: DeliveryState,
    /// The recipient's id at the provider.
    pub recipient: String,
    /// Unix seconds.
    pub at: Option<i64>,
    /// Why it failed (`code: title`), for `Failed`.
    pub error: Option<String>,
}

/// An inbound email: the message as every channel has it, plus what threads it into a
/// conversation and whether a person wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    /// `provider_id` is the mail's `Message-ID` (without angle brackets); `text` is only the new
    /// text (quoted history and signature stripped, HTML turned into text).
    pub message: InboundMessage,
    pub subject: Option<String>,
    /// Message-IDs the mail answers, without angle brackets: `In-Reply-To` first, then
    /// `References` from the newest back.
    #[serde(default)]
    pub references: Vec<String>,
    /// The tokens of `reply+<token>@…` addresses it was sent to (a second threading key).
    #[serde(default)]
    pub reply_tokens: Vec<String>,
    /// Set when no person wrote it (`auto_reply`, `bounce`): stored, never answered.
    #[serde(default)]
    pub automatic: Option<String>,
}

/// Everything a provider webhook can tell us, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum InboundEvent {
    Message(InboundMessage),
    Status(StatusUpdate),
    /// Provider news that is neither a message nor a status (account, template or call updates):
    /// recorded, not answered.
    Notice {
        topic: String,
        detail: String,
    },
    /// An email, with what threads it (see [`Mail`]).
    Mail(Box<Mail>),
    /// The contact opted out of (or back into) messages at the provider (Twilio's STOP
    /// handling, an Advanced Opt-Out keyword, an unsubscribe): one suppression for every
    /// channel and the scheduler.
    Subscription {
        external_id: String,
        subscribed: bool,
        reason: String,
    },
    /// The contact can (no longer) be reached on this channel: they blocked the bot, left, or
    /// came back. Sends to an unreachable contact fail visibly instead of being attempted.
    Reachability {
        external_id: String,
        reachable: bool,
        reason: String,
        /// When the change happened (Unix seconds), as the provider says: an older report that
        /// arrives late (redeliveries run in parallel) must not undo a newer one.
        #[serde(default)]
        at: Option<i64>,
    },
}

/// What an outbound message carries besides its text: buttons, a list menu, a media item or a
/// template. Bot answers are text only; agents (`POST /v1/conversations/{id}/messages`) and
/// proactive sends may use the rest. Each adapter renders what its provider supports and refuses
/// what it cannot render with a [`SendError::Permanent`] naming the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Quick-reply buttons (WhatsApp: at most 3 reply buttons; Telegram: an inline keyboard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListMenu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
}

/// A button: a reply button carrying `id` back when pressed, or a link button when `url` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A menu of options behind one button (WhatsApp list message; Telegram renders one button per row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMenu {
    /// The label of the button that opens the list.
    pub button: String,
    pub sections: Vec<ListSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSection {
    pub title: String,
    pub rows: Vec<ListRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A media item by public URL or by a provider media id; the message text becomes its caption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// `image`, `audio`, `video`, `document` or `sticker`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A pre-approved message template (WhatsApp) with its body parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

impl Content {
    pub fn is_empty(&self) -> bool {
        self.buttons.is_empty()
            && self.list.is_none()
            && self.media.is_none()
            && self.template.is_none()
    }

    /// Channel-independent checks; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.buttons.len() > 10 {
            return Err("at most 10 buttons".into());
        }
        for b in &self.buttons {
            if b.id.trim().is_empty() || b.title.trim().is_empty() {
                return Err("every button needs an id and a title".into());
            }
            if let Some(url) = &b.url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(format!("button {:?}: url must be http(s)", b.id));
            }
        }
        if let Some(list) = &self.list {
            let rows: usize = list.sections.iter().map(|s| s.rows.len()).sum();
            if list.button.trim().is_empty() || rows == 0 {
                return Err("a list needs a button label and at least one row".into());
            }
            if list
                .sections
                .iter()
                .flat_map(|s| &s.rows)
                .any(|r| r.id.trim().is_empty() || r.title.trim().is_empty())
            {
                return Err("every list row needs an id and a title".into());
            }
        }
        if let Some(media) = &self.media {
            if !matches!(
                media.kind.as_str(),
                "image" | "audio" | "video" | "document" | "sticker"
            ) {
                return Err(format!("unknown media kind {:?}", media.kind));
            }
            if media.url.is_none() == media.id.is_none() {
                return Err("media needs exactly one of url and id".into());
            }
        }
        if let Some(t) = &self.template
            && t.name.trim().is_empty()
        {
            return Err("a template needs a name".into());
        }
        if !self.buttons.is_empty() && self.list.is_some() {
            return Err("buttons and a list cannot go in one message".into());
        }
        Ok(())
    }
}

/// One reply to send through a channel. `delivery_id` is stable across retries: adapters pass it to
/// providers that accept an idempotency key, so a retry after a crash is not a second message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundMessage {
    pub delivery_id: String,
    pub conversation_id: String,
    pub message_id: String,
    /// Per-conversation sequence number of the reply.
    pub seq: i64,
    /// The contact's id at the provider (where to send).
    pub to: String,
    pub text: String,
    /// Buttons, list, media or template, if any.
    #[serde(default, skip_serializing_if = "Content::is_empty")]
    pub content: Content,
    /// Parts of this message the provider already accepted in earlier attempts (see
    /// [`SendError::Partial`]): adapters that split a message skip them.
    #[serde(skip)]
    pub parts_sent: u32,
    /// Parts accepted so far, counted by the adapter as they are accepted: if the caller gives
    /// up on the send (a timeout), it still knows how far the message got.
    #[serde(skip)]
    pub progress: Progress,
    /// When the contact last wrote in this conversation (Unix ms), for channels whose rules
    /// depend on it (WhatsApp's 24-hour customer-service window). `None` if never or unknown.
    #[serde(skip)]
    pub contact_last_wrote_at: Option<i64>,
}

/// A shared count of the parts of a message a provider accepted (see
/// [`OutboundMessage::progress`]). Equal to any other: it is bookkeeping, not content.
#[derive(Debug, Clone, Default)]
pub struct Progress(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Progress {
    /// Records that the first `parts` parts are accepted (never moves backwards).
    pub fn accepted(&self, parts: u32) {
        self.0.fetch_max(parts, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl PartialEq for Progress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Progress {}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the sent message, when it gives one.
    pub provider_message_id: Option<String>,
}

/// Why a send failed, phrased as what the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider asked us to wait (HTTP 429 / `Retry-After` / `retry_after`).
    #[error("provider asked to retry after {0:?}: {1}")]
    RetryAfter(Duration, String),
    /// A failure that may pass (timeout, connection refused, 5xx): retry with back-off.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider will never accept this message as it is: do not retry.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The provider says the recipient cannot be reached (a hard bounce, an invalid number):
    /// do not retry, and mark the contact unreachable on this channel.
    #[error("recipient unreachable: {0}")]
    Unreachable(String),
    /// The recipient opted out at the provider (Twilio 21610): do not retry, and record the
    /// opt-out for every channel.
    #[error("recipient opted out: {0}")]
    OptedOut(String),
    /// A message sent as several provider messages (a long text split, media then text) failed
    /// after its first `parts_sent` parts were accepted: a retry must resume after them, not
    /// send them again. (`parts_sent` counts from the start of the message, earlier attempts
    /// included.)
    #[error("{error} (after {parts_sent} part(s) were sent)")]
    Partial {
        parts_sent: u32,
        error: Box<SendError>,
    },
}

/// A `Retry-After` header in its delay-seconds form (the form providers use for rate limits).
/// HTTP dates and garbage give `None`: the caller's own back-off applies.
pub fn parse_retry_after(header: Option<&str>) -> Option<Duration> {
    header?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl SendError {
    /// A provider or file server answered an HTTP error status: 5xx, 408 and 429 may pass,
    /// other statuses will not.
    pub fn from_status(status: u16, what: &str) -> SendError {
        let message = format!("{what} answered HTTP {status}");
        if status >= 500 || status == 408 || status == 429 {
            SendError::Transient(message)
        } else {
            SendError::Permanent(message)
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::Permanent(_) | SendError::Unreachable(_) | SendError::OptedOut(_) => false,
            SendError::Partial { error, .. } => error.is_retryable(),
            _ => true,
        }
    }
}

/// A credential (token, signing key, password). It never prints: `Debug` and `Display` show
/// `[redacted]`, so a secret cannot reach a log line by accident. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why an inbound request was refused. Each variant maps to one HTTP status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Signature or secret missing or wrong → 401, nothing stored.
    #[error("signature verification failed: {0}")]
    Unauthorized(String),
    /// The body is not a payload this channel understands → 400.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_kind_round_trips_through_its_wire_name() {
        for kind in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_string(&kind).ok(),
                Some(format!("\"{}\"", kind.as_str()))
            );
        }
        assert_eq!(ChannelKind::parse("fax"), None);
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn only_permanent_errors_stop_retries() {
        assert!(SendError::Transient("x".into()).is_retryable());
        assert!(SendError::RetryAfter(Duration::from_secs(1), "x".into()).is_retryable());
        assert!(!SendError::Permanent("x".into()).is_retryable());
    }
}
