//! Switchboard's email channel: Mailgun routes, SendGrid Inbound Parse and raw RFC 5322 in,
//! SMTP out.
//!
//! Where it sits: the first and last hop of an email conversation.
//! - [`inbound`] verifies a POST (Mailgun's HMAC signature with a fresh timestamp and a replay
//!   token, or HTTP Basic credentials for SendGrid and raw posts), splits the form or the MIME
//!   message with `mail-parser`, and normalizes it into the contract's
//!   [`Mail`](switchboard_channel::Mail): Message-ID as provider id, threading keys
//!   (`In-Reply-To`/`References`, `reply+token@` addresses), attachments as `part:N`
//!   references into the stored request, and whether a person wrote it at all (auto-replies,
//!   bounces, list mail are marked and never answered; a hard bounce also reports the failed
//!   address unreachable).
//! - [`text`] keeps only what the person newly wrote: HTML as text, quoted history and
//!   signature cut off.
//! - [`outbound`] sends a reply through the tenant's SMTP server with lettre, threaded under the
//!   person's mail, with a deterministic Message-ID, `Auto-Submitted`, and one-click
//!   unsubscribe on proactive mail; the SMTP host passes the egress policy first.
//! - [`config`] is the channel's stored configuration.
//!
//! What it must never do: let provider or MIME types past the contract, trust a body before
//! it is verified, answer an automatic mail, or connect to a tenant-chosen host the egress
//! policy refuses.

pub mod config;
pub mod inbound;
pub mod outbound;
pub mod text;

pub use config::{EmailConfig, SmtpTarget, Tls};
pub use inbound::{Bounce, Inbound, attachment, events, original_mime, parse};
pub use outbound::{EmailSender, Thread, conversation_of, message_id, render};
pub use text::new_text;
