//! Per-channel configuration of a WhatsApp number, as stored with the channel (SPEC §3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_channel::Secret;

/// Graph API base used when the channel does not override it.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com/v21.0";

/// `POST /v1/channels {"kind":"whatsapp","config":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatsappConfig {
    pub phone_number_id: String,
    pub access_token: Secret,
    /// Key of the `X-Hub-Signature-256` HMAC.
    pub app_secret: Secret,
    /// What Meta must send as `hub.verify_token` when subscribing the webhook.
    pub verify_token: Secret,
    /// Sends go to `{graph_url}/{phone_number_id}/messages`.
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// Message templates by purpose (e.g. `"reengage": "hello_world"`), for sends outside the
    /// 24-hour customer-service window.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Language code the templates were approved in.
    #[serde(default = "default_template_language")]
    pub template_language: String,
}

fn default_template_language() -> String {
    "en_US".to_owned()
}

fn default_graph_url() -> String {
    DEFAULT_GRAPH_URL.to_owned()
}

impl WhatsappConfig {
    /// Parses and checks a config object; the error names the field.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: WhatsappConfig =
            serde::Deserialize::deserialize(value).map_err(|e| e.to_string())?;
        if config.phone_number_id.trim().is_empty() {
            return Err("phone_number_id must not be empty".into());
        }
        for (name, secret) in [
            ("access_token", &config.access_token),
            ("app_secret", &config.app_secret),
            ("verify_token", &config.verify_token),
        ] {
            if secret.expose().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        if !(config.graph_url.starts_with("https://") || config.graph_url.starts_with("http://")) {
            return Err("graph_url must be an http(s) URL".into());
        }
        Ok(config)
    }

    /// Where messages are sent.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/{}/messages",
            self.graph_url.trim_end_matches('/'),
            self.phone_number_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_spec_fields_with_the_default_graph_url() {
        let c = WhatsappConfig::parse(&json!({
            "phone_number_id": "1122334455667", "access_token": "EAAG", "app_secret": "s",
            "verify_token": "v", "templates": { "reengage": "hello_world" }
        }))
        .expect("valid");
        assert_eq!(
            c.messages_url(),
            "https://graph.facebook.com/v21.0/1122334455667/messages"
        );
        assert_eq!(
            c.templates.get("reengage").map(String::as_str),
            Some("hello_world")
        );
        assert!(!format!("{c:?}").contains("EAAG"), "secrets never print");
    }

    #[test]
    fn an_override_points_sends_elsewhere_and_bad_configs_name_the_field() {
        let c = WhatsappConfig::parse(&json!({
            "phone_number_id": "1", "access_token": "t", "app_secret": "s",
            "verify_token": "v", "graph_url": "http://127.0.0.1:9/v21.0/"
        }))
        .expect("valid");
        assert_eq!(c.messages_url(), "http://127.0.0.1:9/v21.0/1/messages");
        let err = WhatsappConfig::parse(&json!({
            "phone_number_id": "1", "access_token": "", "app_secret": "s", "verify_token": "v"
        }))
        .expect_err("empty token");
        assert!(err.contains("access_token"), "{err}");
        assert!(WhatsappConfig::parse(&json!({ "phone_number_id": "1" })).is_err());
    }
}
