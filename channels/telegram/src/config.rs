//! Per-channel configuration of a Telegram bot, as stored with the channel (SPEC §3).

use serde::{Deserialize, Serialize};
use switchboard_channel::Secret;

/// Bot API base used when the channel does not override it.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// How updates reach us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Telegram POSTs updates to `/webhooks/telegram/{channel_id}` (registered with `setWebhook`
    /// when `SWITCHBOARD_PUBLIC_URL` is set).
    #[default]
    Webhook,
    /// We long-poll `getUpdates`: for local use without a public URL.
    Polling,
}

/// `POST /v1/channels {"kind":"telegram","config":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelegramConfig {
    /// `123456789:AA…` from @BotFather.
    pub bot_token: Secret,
    /// What Telegram must send as `X-Telegram-Bot-Api-Secret-Token` (1–256 of `A-Z a-z 0-9 _ -`).
    /// Required in webhook mode: an unauthenticated webhook would accept anyone's updates.
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    #[serde(default)]
    pub mode: Mode,
    /// Bot API base URL (self-hosted Bot API servers, proxies, tests).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The bot's @username without `@`, learnt with `getMe` when the channel is connected; used
    /// to tell whether a group message addresses this bot.
    #[serde(default)]
    pub bot_username: Option<String>,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}

impl TelegramConfig {
    /// Parses and checks a config object; the error names the field.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: TelegramConfig =
            serde::Deserialize::deserialize(value).map_err(|e| e.to_string())?;
        let token = config.bot_token.expose();
        match token.split_once(':') {
            Some((id, rest)) if id.parse::<u64>().is_ok() && !rest.is_empty() => {}
            _ => return Err("bot_token must look like `123456789:AA…` (from @BotFather)".into()),
        }
        match (&config.mode, &config.webhook_secret) {
            (Mode::Webhook, None) => {
                return Err("webhook_secret is required in webhook mode".into());
            }
            (_, Some(secret)) => {
                let s = secret.expose();
                if s.is_empty()
                    || s.len() > 256
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(
                        "webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, _ and -".into(),
                    );
                }
            }
            _ => {}
        }
        if !(config.api_url.starts_with("https://") || config.api_url.starts_with("http://")) {
            return Err("api_url must be an http(s) URL".into());
        }
        Ok(config)
    }

    /// The bot's own user id: the part of the token before the colon.
    pub fn bot_id(&self) -> Option<u64> {
        self.bot_token.expose().split_once(':')?.0.parse().ok()
    }

    /// `{api_url}/bot{token}/{method}`. Contains the token: never log it.
    pub fn method_url(&self, method: &str) -> String {
        format!(
            "{}/bot{}/{method}",
            self.api_url.trim_end_matches('/'),
            self.bot_token.expose()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_spec_fields_with_defaults() {
        let c = TelegramConfig::parse(&json!({
            "bot_token": "123456:ABC-DEF", "webhook_secret": "s3cr3t_-x"
        }))
        .expect("valid");
        assert_eq!(c.mode, Mode::Webhook);
        assert_eq!(c.api_url, DEFAULT_API_URL);
        assert_eq!(c.bot_id(), Some(123456));
        assert_eq!(
            c.method_url("getMe"),
            "https://api.telegram.org/bot123456:ABC-DEF/getMe"
        );
        assert!(!format!("{c:?}").contains("ABC-DEF"), "secrets never print");
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (config, field) in [
            (
                json!({ "bot_token": "nocolon", "webhook_secret": "s" }),
                "bot_token",
            ),
            (json!({ "bot_token": "1:a" }), "webhook_secret"),
            (
                json!({ "bot_token": "1:a", "webhook_secret": "has space" }),
                "webhook_secret",
            ),
            (
                json!({ "bot_token": "1:a", "mode": "polling", "api_url": "ftp://x" }),
                "api_url",
            ),
        ] {
            let err = TelegramConfig::parse(&config).expect_err("invalid");
            assert!(err.contains(field), "{err}");
        }
        let polling = TelegramConfig::parse(&json!({ "bot_token": "1:a", "mode": "polling" }))
            .expect("polling needs no secret");
        assert_eq!(polling.mode, Mode::Polling);
    }
}
