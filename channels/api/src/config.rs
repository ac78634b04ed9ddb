//! Per-channel configuration of the `api` channel, as stored in the channel row.

use serde::{Deserialize, Serialize};
use switchboard_channel::Secret;

/// `POST /v1/channels {"kind":"api","config":{…}}`. Both fields are optional: without a callback
/// the reply is only read back through the API (`wait: true` or the messages listing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiChannelConfig {
    /// Where replies are POSTed. Must be `http://` or `https://`.
    pub callback_url: Option<String>,
    /// Key for the `X-Switchboard-Signature` HMAC over the callback body.
    pub signing_secret: Option<Secret>,
}

impl ApiChannelConfig {
    /// Parses and checks a config object; the error says which field is wrong.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: ApiChannelConfig =
            serde::Deserialize::deserialize(value).map_err(|e| e.to_string())?;
        if let Some(url) = &config.callback_url {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("callback_url: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err("callback_url: must be http or https".into());
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_an_empty_config_and_a_full_one() {
        assert_eq!(
            ApiChannelConfig::parse(&json!({})),
            Ok(ApiChannelConfig::default())
        );
        let c = ApiChannelConfig::parse(
            &json!({"callback_url":"http://127.0.0.1:9/cb","signing_secret":"s3"}),
        )
        .expect("valid config");
        assert_eq!(c.callback_url.as_deref(), Some("http://127.0.0.1:9/cb"));
        assert_eq!(c.signing_secret.as_ref().map(|s| s.expose()), Some("s3"));
    }

    #[test]
    fn refuses_bad_urls_and_unknown_fields() {
        assert!(ApiChannelConfig::parse(&json!({"callback_url":"ftp://x/y"})).is_err());
        assert!(ApiChannelConfig::parse(&json!({"callback_url":"not a url"})).is_err());
        assert!(ApiChannelConfig::parse(&json!({"callback":"http://x"})).is_err());
    }
}
