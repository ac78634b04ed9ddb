//! Switchboard's Telegram channel (Bot API).
//!
//! - [`inbound`]: the webhook's secret token, and `Update`s (webhook or `getUpdates`) normalized
//!   into [`switchboard_channel::InboundEvent`]s.
//! - [`outbound`]: replies through the Bot API with `teloxide-core` (escaping, splitting at 4,096
//!   characters, inline keyboards, media), the Bot API's errors turned into
//!   [`switchboard_channel::SendError`]s, and the calls around a conversation: typing action,
//!   callback answers, `getMe`, `setWebhook`, `getUpdates`.

pub mod config;
pub mod inbound;
pub mod outbound;

pub use config::{Mode, TelegramConfig};
pub use inbound::{BotIdentity, parse_update, parse_webhook, verify_secret};
pub use outbound::TelegramSender;
