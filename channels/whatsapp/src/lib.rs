//! Switchboard's WhatsApp Cloud API channel.
//!
//! Where it sits: the first hop of a WhatsApp message. [`inbound`] answers Meta's subscription
//! handshake, checks `X-Hub-Signature-256` over the raw request bytes in constant time, and turns
//! a webhook POST (several entries, changes, messages and statuses at once) into the contract's
//! [`InboundEvent`](switchboard_channel::InboundEvent)s. Every message type normalizes; an unknown
//! one keeps its provider name and is never an error.
//!
//! [`outbound`] sends replies as text through the Graph API and classifies Meta's error codes.
//!
//! What it must never do: let Graph API types past the contract, or trust a body before its
//! signature is checked.

pub mod config;
pub mod inbound;
pub mod outbound;

pub use config::WhatsappConfig;
pub use inbound::{parse_webhook, parse_webhook_for, verify_signature, verify_subscription};
pub use outbound::WhatsappSender;
