//! The web widget channel (`GET /v1/widget/ws`, protocol in `docs/widget-protocol.md`).
//!
//! Unlike the provider channels, the widget's "provider" is our own WebSocket: the gateway's HTTP
//! layer owns the sockets, this crate owns what crosses them.
//!
//! - [`config`]: a tenant's widget settings — theme and allowed origins — validated.
//! - [`token`]: signed visitor tokens, so a returning visitor continues their conversation.
//! - [`inbound`]: client frames parsed and a `send` normalized into an [`InboundMessage`].
//! - [`outbound`]: the server's frames, and [`outbound::WidgetSender`], the outbox's "send" —
//!   a wake-up for the visitor's open sockets, which read the stored conversation.
//! - [`hub`]: who is connected, and the answer being streamed for each visitor.
//!
//! [`InboundMessage`]: switchboard_channel::InboundMessage

pub mod config;
pub mod hub;
pub mod inbound;
pub mod outbound;
pub mod token;

pub use config::{WidgetSettings, WidgetSettingsError};
pub use hub::{Hub, HubEvent, Subscription};
pub use inbound::{ClientFrame, FrameError};
pub use outbound::{ServerFrame, WidgetSender};
pub use token::{TokenError, VisitorToken, VisitorTokenKey};
