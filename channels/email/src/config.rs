//! Per-channel configuration of an email address, as stored with the channel.
//!
//! One address receives through whichever inbound form the tenant set up (Mailgun routes,
//! SendGrid Inbound Parse, or raw RFC 5322 posts from their own MTA) and, when `smtp_url` is
//! set, sends through the tenant's SMTP server. The SMTP password and the inbound secrets are
//! [`Secret`]s: they never print, not even inside `smtp_url` (see the `Debug` impl).

use std::fmt;

use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use switchboard_channel::Secret;

/// How long a Mailgun signature's timestamp stays acceptable, either way, by default.
pub const DEFAULT_MAX_AGE_SECS: u64 = 900;

/// Port used for `smtp://` when the URL names none (message submission, RFC 6409).
pub const DEFAULT_SMTP_PORT: u16 = 587;

/// Port used for `smtps://` when the URL names none (submission over implicit TLS, RFC 8314).
pub const DEFAULT_SMTPS_PORT: u16 = 465;

/// `POST /v1/channels {"kind":"email","config":{…}}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailConfig {
    /// The address replies come from: `bot@example.com` or `Acme Support <bot@example.com>`.
    pub from: String,
    /// Where replies are sent: `smtp://user:pass@host:587` (STARTTLS when the server offers it;
    /// `?tls=required` insists on it, `?tls=none` for a local test server only),
    /// `smtps://user:pass@host:465` (implicit TLS). Credentials are percent-decoded. Without it
    /// the channel receives only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// Key of the HMAC Mailgun signs its route POSTs with (its "HTTP webhook signing key").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailgun_signing_key: Option<Secret>,
    /// The HTTP Basic password SendGrid Inbound Parse and raw posts must carry (any user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_secret: Option<Secret>,
    /// How far a Mailgun timestamp may be from now, in seconds, either way.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
}

fn default_max_age() -> u64 {
    DEFAULT_MAX_AGE_SECS
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("from", &self.from)
            .field("smtp", &self.smtp_url.as_ref().map(|_| self.smtp_target()))
            .field("mailgun_signing_key", &self.mailgun_signing_key)
            .field("inbound_secret", &self.inbound_secret)
            .field("max_age_secs", &self.max_age_secs)
            .finish()
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `smtp://`: STARTTLS when the server offers it, plain text otherwise.
    Opportunistic,
    /// `smtp://…?tls=required`: STARTTLS or no send.
    Required,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// `smtp://…?tls=none`: never TLS. For a local test server only.
    None,
}

/// SMTP AUTH credentials, percent-decoded from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    /// The SMTP AUTH user name.
    pub user: String,
    /// The SMTP AUTH password; never printed.
    pub password: Secret,
}

/// Where and how to send, parsed from `smtp_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    /// Host name or IP literal (IPv6 without brackets), as the URL wrote it.
    pub host: String,
    /// The URL's port, else 587 (`smtp://`) or 465 (`smtps://`).
    pub port: u16,
    /// How the connection is secured.
    pub tls: Tls,
    /// SMTP AUTH, when the URL carries a user and password.
    pub credentials: Option<SmtpCredentials>,
}

impl SmtpTarget {
    /// Parses `smtp://` / `smtps://` URLs; the error never repeats the URL (it may hold a
    /// password).
    pub fn parse(smtp_url: &str) -> Result<SmtpTarget, String> {
        let url =
            url::Url::parse(smtp_url.trim()).map_err(|e| format!("smtp_url is not a URL ({e})"))?;
        let wrapper = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(format!(
                    "smtp_url must start with smtp:// or smtps://, not {other}://"
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("smtp_url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(if wrapper {
            DEFAULT_SMTPS_PORT
        } else {
            DEFAULT_SMTP_PORT
        });
        let mut tls = if wrapper {
            Tls::Wrapper
        } else {
            Tls::Opportunistic
        };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref(), wrapper) {
                ("tls", "required", false) => tls = Tls::Required,
                ("tls", "opportunistic", false) => tls = Tls::Opportunistic,
                ("tls", "none", false) => tls = Tls::None,
                ("tls", _, true) => {
                    return Err("smtp_url: smtps:// is always TLS; drop ?tls=".into());
                }
                ("tls", other, false) => {
                    return Err(format!(
                        "smtp_url: tls must be required, opportunistic or none, not {other:?}"
                    ));
                }
                (other, _, _) => {
                    return Err(format!("smtp_url: unknown parameter {other:?}"));
                }
            }
        }
        if !matches!(url.path(), "" | "/") {
            return Err("smtp_url must not have a path".into());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "smtp_url: credentials are not UTF-8 once percent-decoded".to_owned())
        };
        let user = decode(url.username())?;
        let password = url.password().map(decode).transpose()?;
        let credentials = match (user.is_empty(), password) {
            (true, None) => None,
            (false, Some(password)) => Some(SmtpCredentials {
                user,
                password: Secret::new(password),
            }),
            (false, None) => return Err("smtp_url: a user needs a password".into()),
            (true, Some(_)) => return Err("smtp_url: a password needs a user".into()),
        };
        Ok(SmtpTarget {
            host,
            port,
            tls,
            credentials,
        })
    }
}

impl EmailConfig {
    /// Parses and checks a config object; the error names the field.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let config: EmailConfig =
            serde::Deserialize::deserialize(value).map_err(|e| redact(&e.to_string()))?;
        config.from_mailbox()?;
        if let Some(url) = &config.smtp_url {
            SmtpTarget::parse(url)?;
        }
        for (name, secret) in [
            ("mailgun_signing_key", &config.mailgun_signing_key),
            ("inbound_secret", &config.inbound_secret),
        ] {
            if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
                return Err(format!("{name} must not be empty"));
            }
        }
        if config.max_age_secs == 0 {
            return Err("max_age_secs must be at least 1".into());
        }
        Ok(config)
    }

    /// `from` as a mailbox (name and address).
    pub fn from_mailbox(&self) -> Result<Mailbox, String> {
        self.from
            .trim()
            .parse::<Mailbox>()
            .map_err(|e| format!("from: {:?} is not an email address ({e})", self.from))
    }

    /// The domain of `from` (lowercased), or `None` when `from` does not parse.
    pub fn from_domain(&self) -> Option<String> {
        self.from_mailbox()
            .ok()
            .map(|m| m.email.domain().to_ascii_lowercase())
    }

    /// The local part of `from` (lowercased), or `None` when `from` does not parse.
    pub fn from_local_part(&self) -> Option<String> {
        self.from_mailbox()
            .ok()
            .map(|m| m.email.user().to_ascii_lowercase())
    }

    /// The SMTP server to send through; `Ok(None)` when the channel only receives.
    pub fn smtp_target(&self) -> Result<Option<SmtpTarget>, String> {
        self.smtp_url.as_deref().map(SmtpTarget::parse).transpose()
    }
}

/// serde's messages quote offending values; one could be an `smtp_url` with a password.
fn redact(message: &str) -> String {
    if message.contains("://") {
        "invalid config (a field has the wrong type)".to_owned()
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_full_config_and_never_prints_secrets() {
        let c = EmailConfig::parse(&json!({
            "from": "Acme Support <help@acme.example>",
            "smtp_url": "smtp://bot%40acme.example:p%40ss%3Aw0rd@smtp.acme.example:2525?tls=required",
            "mailgun_signing_key": "key-abc", "inbound_secret": "hunter2"
        }))
        .expect("valid");
        assert_eq!(c.max_age_secs, DEFAULT_MAX_AGE_SECS);
        assert_eq!(c.from_domain().as_deref(), Some("acme.example"));
        assert_eq!(c.from_local_part().as_deref(), Some("help"));
        let t = c.smtp_target().expect("parses").expect("set");
        assert_eq!(t.host, "smtp.acme.example");
        assert_eq!(t.port, 2525);
        assert_eq!(t.tls, Tls::Required);
        let creds = t.credentials.expect("credentials");
        assert_eq!(creds.user, "bot@acme.example");
        assert_eq!(creds.password.expose(), "p@ss:w0rd");
        let printed = format!("{c:?}");
        for secret in ["p%40ss", "p@ss", "key-abc", "hunter2"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn smtp_urls_choose_the_tls_mode_and_default_port() {
        let t = SmtpTarget::parse("smtps://u:p@mail.example").expect("smtps");
        assert_eq!((t.port, t.tls), (465, Tls::Wrapper));
        let t = SmtpTarget::parse("smtp://mail.example").expect("smtp");
        assert_eq!(
            (t.port, t.tls, t.credentials),
            (587, Tls::Opportunistic, None)
        );
        let t = SmtpTarget::parse("smtp://127.0.0.1:2525?tls=none").expect("local");
        assert_eq!((t.host.as_str(), t.tls), ("127.0.0.1", Tls::None));
        let t = SmtpTarget::parse("smtp://[::1]:25").expect("v6");
        assert_eq!(t.host, "::1");
        for bad in [
            "http://mail.example",
            "smtp://",
            "smtps://h?tls=none",
            "smtp://h?tls=maybe",
            "smtp://h?x=1",
            "smtp://user@h",
            "smtp://h/path",
        ] {
            assert!(SmtpTarget::parse(bad).is_err(), "{bad}");
        }
        let err = SmtpTarget::parse("ftp://u:sekrit@h").expect_err("scheme");
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = EmailConfig::parse(&json!({ "from": "not an address" })).expect_err("from");
        assert!(err.contains("from"), "{err}");
        let err = EmailConfig::parse(&json!({ "from": "a@b.example", "smtp_url": "x" }))
            .expect_err("url");
        assert!(err.contains("smtp_url"), "{err}");
        let err = EmailConfig::parse(&json!({ "from": "a@b.example", "inbound_secret": "" }))
            .expect_err("empty");
        assert!(err.contains("inbound_secret"), "{err}");
        let err = EmailConfig::parse(&json!({ "from": "a@b.example", "max_age_secs": 0 }))
            .expect_err("age");
        assert!(err.contains("max_age_secs"), "{err}");
        assert!(EmailConfig::parse(&json!({})).is_err());
        let c = EmailConfig::parse(&json!({ "from": "a@b.example" })).expect("receive only");
        assert_eq!(c.smtp_target(), Ok(None));
    }
}
