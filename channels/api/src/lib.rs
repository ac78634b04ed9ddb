//! Switchboard's generic `api` channel.
//!
//! Where it sits: the first and last hop of a message that arrives through `POST /v1/messages`.
//! [`inbound`] parses and validates the JSON request into the contract's normalized message;
//! [`outbound`] delivers a reply to the tenant's callback URL (when one is configured), signed with
//! HMAC-SHA256 and carrying the delivery id as an idempotency key.
//!
//! What it must never do: touch storage, or let a request shape leak past the contract types.

pub mod config;
pub mod inbound;
pub mod outbound;

pub use config::ApiChannelConfig;
pub use inbound::{ApiInbound, parse_inbound};
pub use outbound::ApiSender;
