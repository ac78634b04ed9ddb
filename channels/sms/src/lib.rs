//! Switchboard's SMS channel, through Twilio Programmable Messaging.
//!
//! Where it sits: the first and last hop of an SMS conversation. [`inbound`] checks
//! `X-Twilio-Signature` (HMAC-SHA1 over the configured URL and the sorted form parameters, in
//! constant time) and turns Twilio's form POSTs — incoming messages and the status callbacks of
//! our own messages, on one URL — into the contract's
//! [`InboundEvent`](switchboard_channel::InboundEvent)s, opt-outs (STOP) included.
//!
//! [`outbound`] renders a reply as text (buttons and lists as numbered lines), cuts it into
//! messages Twilio concatenates ([`segments`]: GSM-7 or UCS-2, at most `max_segments` segments
//! each), sends them in order through the Messages API and classifies Twilio's error codes.
//! [`config`] is the stored channel configuration.
//!
//! What it must never do: let Twilio's parameter names past the contract, trust a body before
//! its signature is checked, or take the signed URL from request headers.

pub mod config;
pub mod inbound;
pub mod outbound;
pub mod segments;

pub use config::SmsConfig;
pub use inbound::{SIGNATURE_HEADER, parse_webhook, signature, verify_signature};
pub use outbound::{SmsSender, classify, option_ids, render};
