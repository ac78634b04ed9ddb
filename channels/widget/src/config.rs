//! A tenant's widget settings: the theme shown to visitors and the origins allowed to embed it.
//!
//! Stored as JSON with the tenant, edited with `PUT /v1/widget/settings`. Everything here ends up
//! in a visitor's page, so it is validated strictly on the way in: colours are hex only (nothing
//! that could close a CSS declaration), URLs are http(s) only, lengths are bounded.

use serde::{Deserialize, Serialize};

/// Longest title / welcome message / avatar URL accepted.
const MAX_TITLE: usize = 80;
const MAX_WELCOME: usize = 1_000;
const MAX_URL: usize = 2_048;
const MAX_ORIGINS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WidgetSettings {
    pub title: String,
    pub welcome_message: Option<String>,
    pub avatar_url: Option<String>,
    pub position: Position,
    pub colors: Colors,
    /// Origins (`scheme://host[:port]`) whose pages may open the widget; `*` for any. Empty: only
    /// the gateway's own origin.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    #[default]
    Right,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Colors {
    pub primary: String,
    pub background: String,
    pub text: String,
}

impl Default for Colors {
    fn default() -> Self {
        Colors {
            primary: "#2f5bea".to_owned(),
            background: "#ffffff".to_owned(),
            text: "#1b1f24".to_owned(),
        }
    }
}

impl Default for WidgetSettings {
    fn default() -> Self {
        WidgetSettings {
            title: "Chat with us".to_owned(),
            welcome_message: Some("Hi! Ask me anything.".to_owned()),
            avatar_url: None,
            position: Position::Right,
            colors: Colors::default(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WidgetSettingsError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WidgetSettingsError {
    WidgetSettingsError {
        field,
        reason: reason.into(),
    }
}

impl WidgetSettings {
    /// Parses and validates settings sent by a tenant admin (unknown fields refused).
    pub fn parse(value: &serde_json::Value) -> Result<WidgetSettings, WidgetSettingsError> {
        let mut settings: WidgetSettings = serde::Deserialize::deserialize(value)
            .map_err(|e| invalid("settings", e.to_string()))?;
        settings.validate()?;
        settings.allowed_origins = settings
            .allowed_origins
            .iter()
            .map(|o| {
                if o == "*" {
                    o.clone()
                } else {
                    normalize_origin(o).unwrap_or_default()
                }
            })
            .collect();
        Ok(settings)
    }

    /// Settings as stored; anything unreadable falls back to the defaults rather than failing a
    /// visitor's connection.
    pub fn from_stored(value: Option<&serde_json::Value>) -> WidgetSettings {
        value
            .and_then(|v| WidgetSettings::parse(v).ok())
            .unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), WidgetSettingsError> {
        let title = self.title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE {
            return Err(invalid("title", format!("1 to {MAX_TITLE} characters")));
        }
        if let Some(w) = &self.welcome_message
            && w.chars().count() > MAX_WELCOME
        {
            return Err(invalid(
                "welcome_message",
                format!("at most {MAX_WELCOME} characters"),
            ));
        }
        if let Some(url) = &self.avatar_url
            && !is_http_url(url)
        {
            return Err(invalid("avatar_url", "an http:// or https:// URL"));
        }
        for (field, colour) in [
            ("colors.primary", &self.colors.primary),
            ("colors.background", &self.colors.background),
            ("colors.text", &self.colors.text),
        ] {
            if !is_hex_colour(colour) {
                return Err(invalid(field, "a colour written #rgb or #rrggbb"));
            }
        }
        if self.allowed_origins.len() > MAX_ORIGINS {
            return Err(invalid(
                "allowed_origins",
                format!("at most {MAX_ORIGINS} origins"),
            ));
        }
        for origin in &self.allowed_origins {
            if origin != "*" && normalize_origin(origin).is_none() {
                return Err(invalid(
                    "allowed_origins",
                    format!("{origin:?} is not an origin like https://example.com[:port]"),
                ));
            }
        }
        Ok(())
    }

    /// What visitors see (everything but the allowed origins).
    pub fn theme(&self) -> serde_json::Value {
        serde_json::json!({
            "title": self.title,
            "welcome_message": self.welcome_message,
            "avatar_url": self.avatar_url,
            "position": self.position,
            "colors": self.colors,
        })
    }

    /// Whether a page at `origin` may open the widget. `own` are the gateway's own origins (its
    /// `Host` and public URL), always allowed. A missing `Origin` is refused: browsers always
    /// send one, and other clients can send an allowed one.
    pub fn allows_origin(&self, origin: Option<&str>, own: &[String]) -> bool {
        let Some(origin) = origin.and_then(normalize_origin) else {
            return false;
        };
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || *o == origin)
            || own
                .iter()
                .filter_map(|o| normalize_origin(o))
                .any(|o| o == origin)
    }
}

fn is_hex_colour(s: &str) -> bool {
    let Some(hex) = s.strip_prefix('#') else {
        return false;
    };
    matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    s.len() <= MAX_URL
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>'))
}

/// `scheme://host[:port]` lower-cased, default ports dropped; `None` if it is not an origin.
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p))
            if !h.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, Some(p))
        }
        Some(_) if !rest.starts_with('[') => return None,
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_valid_and_theme_hides_origins() {
        let s = WidgetSettings::default();
        s.validate().unwrap();
        assert!(s.theme().get("allowed_origins").is_none());
    }

    #[test]
    fn colours_and_urls_that_could_inject_are_refused() {
        for bad in [
            json!({"colors": {"primary": "red"}}),
            json!({"colors": {"primary": "#fff;background:url(x)"}}),
            json!({"avatar_url": "javascript:alert(1)"}),
            json!({"avatar_url": "https://x.example/a\" onerror=\"x"}),
            json!({"title": ""}),
            json!({"allowed_origins": ["https://ok.example/path"]}),
            json!({"allowed_origins": ["ftp://x.example"]}),
            json!({"unknown": 1}),
        ] {
            assert!(WidgetSettings::parse(&bad).is_err(), "{bad} accepted");
        }
        let good = WidgetSettings::parse(&json!({
            "title": "Coach", "colors": {"primary": "#0a0"},
            "avatar_url": "https://cdn.example/a.png", "position": "left",
            "allowed_origins": ["HTTPS://Shop.Example:443", "*"]
        }))
        .unwrap();
        assert_eq!(good.allowed_origins, ["https://shop.example", "*"]);
        assert_eq!(good.colors.background, "#ffffff");
    }

    #[test]
    fn origins_are_compared_normalized() {
        let s =
            WidgetSettings::parse(&json!({"allowed_origins": ["https://shop.example"]})).unwrap();
        let own = vec!["http://127.0.0.1:8080".to_owned()];
        assert!(s.allows_origin(Some("https://SHOP.example:443"), &own));
        assert!(s.allows_origin(Some("http://127.0.0.1:8080"), &own));
        assert!(!s.allows_origin(Some("http://127.0.0.1:8081"), &own));
        assert!(!s.allows_origin(Some("https://shop.example.evil.example"), &own));
        assert!(!s.allows_origin(Some("null"), &own));
        assert!(!s.allows_origin(None, &own));
        let any = WidgetSettings::parse(&json!({"allowed_origins": ["*"]})).unwrap();
        assert!(any.allows_origin(Some("https://anything.example"), &[]));
        assert!(!any.allows_origin(None, &[]));
        assert_eq!(
            normalize_origin("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
    }
}
