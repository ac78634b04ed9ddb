//! Per-channel configuration of a Twilio sender (a number, a short code or a Messaging Service),
//! as stored with the channel.
//!
//! Credentials: sends authenticate with an API key pair when one is given (Twilio's advice: it
//! can be revoked alone), else with `account_sid:auth_token`. Webhook signatures are always made
//! with the account's auth token, so a channel that receives messages needs `auth_token` even
//! when it sends with a key.

use serde::{Deserialize, Serialize};
use switchboard_channel::{InboundError, Secret};

/// Twilio's REST API, used when the channel does not override it.
pub const DEFAULT_API_URL: &str = "https://api.twilio.com";

/// Twilio concatenates at most this many segments into one message.
pub const TWILIO_MAX_SEGMENTS: u32 = 10;

/// `POST /v1/channels {"kind":"sms","config":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsConfig {
    /// The account (`AC…`) the sender belongs to; sends go to its `Messages` resource.
    pub account_sid: String,
    /// The account's auth token: signs Twilio's webhooks, and authenticates sends when no API
    /// key is given.
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// An API key (`SK…`) to send with instead of the auth token; needs `api_key_secret`.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    /// The API key's secret (never printed).
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    /// The sender: an E.164 number, a short code or an alphanumeric sender id. Exactly one of
    /// `from` and `messaging_service_sid` is given.
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG…`) that picks the sender from its pool.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Sends go to `{api_url}/2010-04-01/Accounts/{account_sid}/Messages.json`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Sends per second this sender may make (for the core's pacer). Twilio counts *segments*
    /// against it and queues what exceeds it: a US long code sends 1 segment/s, a toll-free
    /// number about 3/s, a short code 100/s.
    #[serde(default = "default_mps")]
    pub mps: f64,
    /// The most segments one SMS may have (1..=10; Twilio's own concatenation limit is 10): a
    /// longer text goes as several messages.
    #[serde(default = "default_max_segments")]
    pub max_segments: u32,
    /// Twilio answers STOP/START/HELP itself (long codes, toll-free numbers, Messaging Services):
    /// the bot must not answer them too. `false` for standalone short codes, where the bot
    /// answers them. Opt-outs are recorded either way.
    #[serde(default = "default_true")]
    pub handles_keywords: bool,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}

fn default_mps() -> f64 {
    1.0
}

fn default_max_segments() -> u32 {
    TWILIO_MAX_SEGMENTS
}

fn default_true() -> bool {
    true
}

/// `prefix` followed by letters and digits only (Twilio SIDs are `XX` + 32 hex digits).
fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() > prefix.len()
        && value.starts_with(prefix)
        && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl SmsConfig {
    /// Parses and checks a config object; the error names the field.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: SmsConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        if !is_sid(&config.account_sid, "AC") {
            return Err(
                "account_sid must be an account SID (AC followed by letters and digits)".into(),
            );
        }
        if config
            .auth_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err("auth_token must not be empty".into());
        }
        match (&config.api_key_sid, &config.api_key_secret) {
            (Some(sid), Some(secret)) => {
                if !is_sid(sid, "SK") {
                    return Err(
                        "api_key_sid must be an API key SID (SK followed by letters and digits)"
                            .into(),
                    );
                }
                if secret.expose().is_empty() {
                    return Err("api_key_secret must not be empty".into());
                }
            }
            (None, None) => {
                if config.auth_token.is_none() {
                    return Err(
                        "auth_token is required (or api_key_sid with api_key_secret to send)"
                            .into(),
                    );
                }
            }
            (Some(_), None) => return Err("api_key_secret is required with api_key_sid".into()),
            (None, Some(_)) => return Err("api_key_sid is required with api_key_secret".into()),
        }
        match (&config.from, &config.messaging_service_sid) {
            (Some(from), None) => {
                if from.trim().is_empty() {
                    return Err("from must not be empty".into());
                }
            }
            (None, Some(sid)) => {
                if !is_sid(sid, "MG") {
                    return Err("messaging_service_sid must be a Messaging Service SID (MG followed by letters and digits)".into());
                }
            }
            (Some(_), Some(_)) => {
                return Err("from and messaging_service_sid: give one, not both".into());
            }
            (None, None) => return Err("from or messaging_service_sid is required".into()),
        }
        let api = reqwest::Url::parse(&config.api_url).map_err(|e| format!("api_url: {e}"))?;
        if !matches!(api.scheme(), "http" | "https") || api.host_str().is_none() {
            return Err("api_url must be an http(s) URL".into());
        }
        if !(config.mps.is_finite() && config.mps > 0.0 && config.mps <= 1000.0) {
            return Err("mps must be more than 0 and at most 1000".into());
        }
        if !(1..=TWILIO_MAX_SEGMENTS).contains(&config.max_segments) {
            return Err(format!(
                "max_segments must be between 1 and {TWILIO_MAX_SEGMENTS}"
            ));
        }
        Ok(config)
    }

    /// Where messages are sent.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.api_url.trim_end_matches('/'),
            self.account_sid
        )
    }

    /// The Basic-auth pair for the REST API: the API key when one is given, else the account
    /// SID with its auth token. `None` when neither is set (never after [`SmsConfig::parse`]).
    pub fn credentials(&self) -> Option<(&str, &Secret)> {
        match (&self.api_key_sid, &self.api_key_secret, &self.auth_token) {
            (Some(sid), Some(secret), _) => Some((sid.as_str(), secret)),
            (_, _, Some(token)) => Some((self.account_sid.as_str(), token)),
            _ => None,
        }
    }

    /// Checks a webhook's `X-Twilio-Signature` with this account's auth token (see
    /// [`crate::inbound::verify_signature`]); refused when no auth token is configured.
    pub fn verify(
        &self,
        url: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), InboundError> {
        crate::inbound::verify_signature(self.auth_token.as_ref(), url, signature, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply_and_secrets_never_print() {
        let c = SmsConfig::parse(&json!({
            "account_sid": SID, "auth_token": "tok-secret", "from": "+15005550006"
        }))
        .expect("valid");
        assert_eq!(
            c.messages_url(),
            format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert_eq!(c.mps, 1.0);
        assert_eq!(c.max_segments, 10);
        assert!(c.handles_keywords);
        let (user, secret) = c.credentials().expect("credentials");
        assert_eq!((user, secret.expose()), (SID, "tok-secret"));
        assert!(
            !format!("{c:?}").contains("tok-secret"),
            "secrets never print"
        );
    }

    #[test]
    fn an_api_key_pair_authenticates_sends_and_a_service_can_be_the_sender() {
        let c = SmsConfig::parse(&json!({
            "account_sid": SID, "api_key_sid": "SK123", "api_key_secret": "key-secret",
            "messaging_service_sid": "MG123", "api_url": "http://127.0.0.1:9/",
            "mps": 100, "max_segments": 3, "handles_keywords": false
        }))
        .expect("valid");
        let (user, secret) = c.credentials().expect("credentials");
        assert_eq!((user, secret.expose()), ("SK123", "key-secret"));
        assert_eq!(
            c.messages_url(),
            format!("http://127.0.0.1:9/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert!(!format!("{c:?}").contains("key-secret"));
        // Without an auth token no webhook can be checked.
        let refused = c.verify("https://x/sms", Some("sig"), b"a=b");
        match refused {
            Err(InboundError::Unauthorized(reason)) => {
                assert!(reason.contains("auth_token"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = json!({ "account_sid": SID, "auth_token": "t", "from": "+1555" });
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[key] = value;
            v
        };
        let without = |key: &str| {
            let mut v = base.clone();
            v.as_object_mut().expect("object").remove(key);
            v
        };
        for (config, field) in [
            (with("account_sid", json!("XX123")), "account_sid"),
            (with("account_sid", json!("AC12/../x")), "account_sid"),
            (without("account_sid"), "account_sid"),
            (with("auth_token", json!("")), "auth_token"),
            (without("auth_token"), "auth_token"),
            (with("api_key_sid", json!("SK1")), "api_key_secret"),
            (with("api_key_secret", json!("s")), "api_key_sid"),
            (without("from"), "from"),
            (
                with("messaging_service_sid", json!("MG1")),
                "messaging_service_sid",
            ),
            (
                {
                    let mut v = without("from");
                    v["messaging_service_sid"] = json!("PN1");
                    v
                },
                "messaging_service_sid",
            ),
            (with("api_url", json!("ftp://x")), "api_url"),
            (with("api_url", json!("not a url")), "api_url"),
            (with("mps", json!(0)), "mps"),
            (with("mps", json!(1001)), "mps"),
            (with("mps", json!("fast")), "mps"),
            (with("max_segments", json!(0)), "max_segments"),
            (with("max_segments", json!(11)), "max_segments"),
            (with("max_segments", json!(-1)), "max_segments"),
            (with("handles_keywords", json!("yes")), "handles_keywords"),
        ] {
            let err = SmsConfig::parse(&config).expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        assert!(SmsConfig::parse(&base).is_ok());
        assert!(SmsConfig::parse(&json!("config")).is_err());
    }
}
