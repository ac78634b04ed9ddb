//! Outbound: a reply as an email through the tenant's SMTP server, with lettre.
//!
//! Threading: every mail carries our own Message-ID, `<sb.{conversation}.{delivery}@{domain}>`.
//! It is deterministic, so a retry of a delivery sends the same id (a recipient's client shows
//! one mail), and [`conversation_of`] reads the conversation back out of an `In-Reply-To` that
//! names one of ours. `In-Reply-To`/`References` thread the reply under the person's mail, and
//! an optional `Reply-To: <local>+<token>@<domain>` gives a second threading key.
//!
//! Loops and consent: every mail is marked `Auto-Submitted` (RFC 3834: `auto-replied` for
//! answers, `auto-generated` for proactive mail), so well-behaved auto-responders stay quiet;
//! proactive mail carries `List-Unsubscribe` with one-click unsubscribe (RFC 8058) when the
//! core gives a URL.
//!
//! The SMTP host is the tenant's choice, so it goes through the egress policy before any
//! connection: its name is resolved here, the permitted address is dialled, and TLS still
//! verifies the certificate against the name the tenant wrote.
//!
//! SMTP replies decide what the outbox does next: 4xx and connection trouble are retried; a 5xx
//! saying the mailbox does not exist makes the contact unreachable; other 5xx are final.

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls as LettreTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use switchboard_channel::egress::{self, EgressPolicy};
use switchboard_channel::{Content, OutboundMessage, Receipt, SendError};

use crate::config::{EmailConfig, SmtpTarget, Tls};

/// How long one SMTP exchange step may take (connect, each command).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole send may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Most ids written into `References`.
pub const MAX_REFERENCES: usize = 20;

/// How the reply threads into the person's mail, from the conversation the core keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Thread {
    /// The conversation's subject (the person's first mail's); `Re: ` is added once.
    pub subject: Option<String>,
    /// The Message-ID being answered (with or without `<>`).
    pub in_reply_to: Option<String>,
    /// The thread's Message-IDs, oldest first, as `References` lists them.
    pub references: Vec<String>,
    /// Mail the bot starts (a scheduled or campaign message), not an answer.
    pub proactive: bool,
    /// One-click unsubscribe URL for proactive mail.
    pub unsubscribe_url: Option<String>,
    /// The conversation's reply token: `Reply-To: <local>+<token>@<domain>`.
    pub reply_to_token: Option<String>,
}

/// Sends replies through each channel's SMTP server, within the egress policy.
#[derive(Debug, Clone)]
pub struct EmailSender {
    egress: EgressPolicy,
}

impl EmailSender {
    /// A sender whose every SMTP connection obeys `egress`.
    pub fn new(egress: EgressPolicy) -> Self {
        EmailSender { egress }
    }

    /// Sends `msg` as one mail; the receipt's id is our Message-ID without `<>`.
    pub async fn send(
        &self,
        config: &EmailConfig,
        msg: &OutboundMessage,
        thread: &Thread,
    ) -> Result<Receipt, SendError> {
        let target = config
            .smtp_target()
            .map_err(SendError::Permanent)?
            .ok_or_else(|| {
                SendError::Permanent("no smtp_url: this email channel only receives".into())
            })?;
        let (email, id) = compose(config, msg, thread)?;
        let ip = self.permitted(&target).await?;
        let transport = transport(&target, ip)?;
        match tokio::time::timeout(SEND_TIMEOUT, transport.send(email)).await {
            Err(_) => Err(SendError::Transient(format!(
                "the SMTP server did not finish within {}s",
                SEND_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(_)) => Ok(Receipt {
                provider_message_id: Some(
                    id.trim_start_matches('<').trim_end_matches('>').to_owned(),
                ),
            }),
        }
    }

    /// The address to dial for `target`: an IP literal as it is, a name resolved; either way
    /// only where the egress policy permits, on the target's port.
    async fn permitted(&self, target: &SmtpTarget) -> Result<IpAddr, SendError> {
        let refused = |e: String| SendError::Permanent(format!("egress refused: {e}"));
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            self.egress
                .permits(&target.host, ip, Some(target.port))
                .map_err(|e| refused(e.to_string()))?;
            return Ok(ip);
        }
        let addrs = egress::resolve(&self.egress, &target.host)
            .await
            .map_err(|e| {
                let text = e.to_string();
                match text.strip_prefix("egress refused: ") {
                    Some(reason) => refused(reason.to_owned()),
                    None => SendError::Transient(format!(
                        "the SMTP host {} does not resolve: {text}",
                        target.host
                    )),
                }
            })?;
        let mut refusal = None;
        for addr in addrs {
            match self
                .egress
                .permits(&target.host, addr.ip(), Some(target.port))
            {
                Ok(()) => return Ok(addr.ip()),
                Err(e) => refusal = Some(e.to_string()),
            }
        }
        Err(refused(refusal.unwrap_or_else(|| {
            format!("{} resolves to no permitted address", target.host)
        })))
    }
}

/// A lettre transport dialling `ip` with TLS parameters naming the host the tenant wrote.
fn transport(
    target: &SmtpTarget,
    ip: IpAddr,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
    let params = || {
        TlsParameters::new(target.host.clone())
            .map_err(|e| SendError::Permanent(format!("TLS setup failed: {e}")))
    };
    let tls = match target.tls {
        Tls::None => LettreTls::None,
        Tls::Opportunistic => LettreTls::Opportunistic(params()?),
        Tls::Required => LettreTls::Required(params()?),
        Tls::Wrapper => LettreTls::Wrapper(params()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ip.to_string())
        .port(target.port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some(c) = &target.credentials {
        builder = builder.credentials(Credentials::new(
            c.user.clone(),
            c.password.expose().to_owned(),
        ));
    }
    Ok(builder.build())
}

/// What an SMTP failure means for the outbox.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let text = egress::describe_chain(e);
    if let Some(code) = e.status() {
        let code: u16 = code.into();
        if e.is_transient() {
            return SendError::Transient(format!("SMTP {code}: {text}"));
        }
        let enhanced = enhanced_status(&text);
        let mailbox = match enhanced.as_deref() {
            // 5.1.x: bad address; 5.2.1: mailbox disabled.
            Some(s) => s.starts_with("5.1.") || s == "5.2.1",
            None => matches!(code, 550 | 551 | 553),
        };
        return if mailbox {
            SendError::Unreachable(format!("SMTP {code}: {text}"))
        } else {
            SendError::Permanent(format!("SMTP {code}: {text}"))
        };
    }
    if e.is_client() || e.is_tls() {
        // A server that refuses what the URL insists on (STARTTLS, a certificate) or our
        // credentials' mechanism will refuse it again.
        return SendError::Permanent(format!("SMTP: {text}"));
    }
    SendError::Transient(format!("SMTP: {text}"))
}

/// The first `5.x.y` / `4.x.y` enhanced status code (RFC 3463) in an SMTP reply text.
fn enhanced_status(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == '(' || c == ')')
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// Our Message-ID for one delivery: `<sb.{conversation_id}.{delivery_id}@{domain}>`. The same
/// delivery always gets the same id. Characters outside `[A-Za-z0-9_-]` in the ids become `_`
/// (they would break the id's grammar or [`conversation_of`]).
pub fn message_id(conversation_id: &str, delivery_id: &str, from_domain: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "<sb.{}.{}@{}>",
        clean(conversation_id),
        clean(delivery_id),
        from_domain.trim().to_ascii_lowercase()
    )
}

/// The conversation id inside one of our Message-IDs (with or without `<>`); `None` for
/// anyone else's.
pub fn conversation_of(message_id: &str) -> Option<&str> {
    let id = message_id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    let id = id.strip_suffix('>').unwrap_or(id);
    let (local, domain) = id.split_once('@')?;
    let rest = local.strip_prefix("sb.")?;
    let (conversation, delivery) = rest.split_once('.')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (valid(conversation) && valid(delivery) && !domain.is_empty()).then_some(conversation)
}

/// The mail's text: the message text, then buttons and lists as lines, a media item by URL as
/// a link line. Templates and media by provider id cannot go by email.
pub fn render(text: &str, content: &Content) -> Result<String, String> {
    content.validate()?;
    if content.template.is_some() {
        return Err("email cannot send message templates".into());
    }
    let mut lines: Vec<String> = Vec::new();
    if let Some(media) = &content.media {
        let url = media
            .url
            .as_deref()
            .ok_or("email can send media by URL only, not by provider media id")?;
        let label = media.filename.as_deref().unwrap_or(media.kind.as_str());
        lines.push(format!("{label}: {url}"));
    }
    for b in &content.buttons {
        lines.push(match &b.url {
            Some(url) => format!("- {}: {url}", b.title),
            None => format!("- {}", b.title),
        });
    }
    if let Some(list) = &content.list {
        for section in &list.sections {
            if !section.title.trim().is_empty() {
                lines.push(section.title.clone());
            }
            for row in &section.rows {
                lines.push(match &row.description {
                    Some(d) if !d.trim().is_empty() => format!("- {}: {d}", row.title),
                    _ => format!("- {}", row.title),
                });
            }
        }
    }
    let mut out = text.trim_end().to_owned();
    if !lines.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&lines.join("\n"));
    }
    Ok(out)
}

/// The text as HTML: escaped, blank-line paragraphs, line breaks, links made clickable.
pub fn html_of(text: &str) -> String {
    let mut html = String::with_capacity(text.len() * 2 + 64);
    html.push_str("<!DOCTYPE html><html><body>");
    for paragraph in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        html.push_str("<p>");
        for (i, line) in paragraph.trim_matches('\n').lines().enumerate() {
            if i > 0 {
                html.push_str("<br>\n");
            }
            for (j, word) in line.split(' ').enumerate() {
                if j > 0 {
                    html.push(' ');
                }
                if (word.starts_with("https://") || word.starts_with("http://")) && word.len() > 8 {
                    let href = escape(word);
                    html.push_str(&format!("<a href=\"{href}\">{href}</a>"));
                } else {
                    html.push_str(&escape(word));
                }
            }
        }
        html.push_str("</p>\n");
    }
    html.push_str("</body></html>");
    html
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bracketed(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let ok = !id.is_empty()
        && id.len() <= 250
        && id.contains('@')
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    ok.then(|| format!("<{id}>"))
}

/// The subject of a reply: `Re: ` once; a proactive mail keeps its subject; none → "Message
/// from <sender>".
fn subject_of(from: &Mailbox, thread: &Thread) -> String {
    let subject: String = thread
        .subject
        .as_deref()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let subject = subject.trim();
    if subject.is_empty() {
        let sender = from
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| from.email.to_string());
        return format!("Message from {sender}");
    }
    let already = subject
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("re:"));
    if already || (thread.proactive && thread.in_reply_to.is_none()) {
        subject.to_owned()
    } else {
        format!("Re: {subject}")
    }
}

/// Builds the mail for `msg` and returns it with its Message-ID.
fn compose(
    config: &EmailConfig,
    msg: &OutboundMessage,
    thread: &Thread,
) -> Result<(lettre::Message, String), SendError> {
    let from = config.from_mailbox().map_err(SendError::Permanent)?;
    let to: Mailbox = msg.to.trim().parse().map_err(|e| {
        SendError::Permanent(format!("to: {:?} is not an email address ({e})", msg.to))
    })?;
    let text = render(&msg.text, &msg.content).map_err(SendError::Permanent)?;
    let domain = from.email.domain().to_ascii_lowercase();
    let id = message_id(&msg.conversation_id, &msg.delivery_id, &domain);
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject_of(&from, thread))
        .message_id(Some(id.clone()));
    let in_reply_to = thread.in_reply_to.as_deref().and_then(bracketed);
    let mut references: Vec<String> = Vec::new();
    for r in thread
        .references
        .iter()
        .filter_map(|r| bracketed(r))
        .chain(in_reply_to.clone())
    {
        if !references.contains(&r) {
            references.push(r);
        }
    }
    let skip = references.len().saturating_sub(MAX_REFERENCES);
    if let Some(irt) = in_reply_to {
        builder = builder.in_reply_to(irt);
    }
    if !references.is_empty() {
        builder = builder.references(references[skip..].join(" "));
    }
    let auto = if thread.proactive {
        "auto-generated"
    } else {
        "auto-replied"
    };
    builder = builder.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        auto.to_owned(),
    ));
    if let Some(token) = &thread.reply_to_token {
        let valid = (1..=100).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(SendError::Permanent(format!(
                "reply_to_token {token:?} must be 1-100 of [A-Za-z0-9._-]"
            )));
        }
        let user = from.email.user();
        let user = user.split('+').next().unwrap_or(user);
        let address = lettre::Address::new(format!("{user}+{token}"), from.email.domain())
            .map_err(|e| SendError::Permanent(format!("reply-to address: {e}")))?;
        builder = builder.reply_to(Mailbox::new(from.name.clone(), address));
    }
    if thread.proactive
        && let Some(url) = &thread.unsubscribe_url
    {
        let web = url.starts_with("https://") || url.starts_with("http://");
        let ok = (web || url.starts_with("mailto:"))
            && url
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
        if !ok {
            return Err(SendError::Permanent(format!(
                "unsubscribe_url {url:?} must be an http(s) or mailto URL"
            )));
        }
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            format!("<{url}>"),
        ));
        // One-click (RFC 8058) is for web URLs only; a mailto is answered by mail (RFC 2369).
        if web {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
        }
    }
    let html = html_of(&text);
    let email = builder
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| SendError::Permanent(format!("the mail cannot be built: {e}")))?;
    Ok((email, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_channel::{Button, Media, Template};

    #[test]
    fn message_ids_round_trip_and_ignore_strangers() {
        let id = message_id("c-123", "d_9", "Acme.Example");
        assert_eq!(id, "<sb.c-123.d_9@acme.example>");
        assert_eq!(conversation_of(&id), Some("c-123"));
        assert_eq!(conversation_of("sb.c-123.d_9@acme.example"), Some("c-123"));
        assert_eq!(conversation_of("<CAF123@mail.gmail.com>"), None);
        assert_eq!(conversation_of("<sb.only@x>"), None);
        assert_eq!(message_id("a.b", "c@d", "x"), "<sb.a_b.c_d@x>");
    }

    #[test]
    fn content_renders_as_lines_or_is_refused() {
        let content = Content {
            buttons: vec![
                Button {
                    id: "y".into(),
                    title: "Yes".into(),
                    url: None,
                },
                Button {
                    id: "w".into(),
                    title: "Website".into(),
                    url: Some("https://acme.example".into()),
                },
            ],
            ..Content::default()
        };
        assert_eq!(
            render("Pick one", &content).expect("renders"),
            "Pick one\n\n- Yes\n- Website: https://acme.example"
        );
        let media = Content {
            media: Some(Media {
                kind: "image".into(),
                url: Some("https://x/y.png".into()),
                id: None,
                filename: None,
            }),
            ..Content::default()
        };
        assert_eq!(render("", &media).expect("url"), "image: https://x/y.png");
        let by_id = Content {
            media: Some(Media {
                kind: "image".into(),
                url: None,
                id: Some("123".into()),
                filename: None,
            }),
            ..Content::default()
        };
        assert!(render("", &by_id).is_err());
        let template = Content {
            template: Some(Template {
                name: "t".into(),
                language: None,
                parameters: vec![],
            }),
            ..Content::default()
        };
        assert!(render("", &template).is_err());
    }

    #[test]
    fn html_is_escaped_with_paragraphs_and_links() {
        assert_eq!(
            html_of("a <b> & c\nsee https://x.example/?a=1&b=2\n\nbye"),
            "<!DOCTYPE html><html><body><p>a &lt;b&gt; &amp; c<br>\nsee <a href=\"https://x.example/?a=1&amp;b=2\">https://x.example/?a=1&amp;b=2</a></p>\n<p>bye</p>\n</body></html>"
        );
    }

    #[test]
    fn enhanced_status_codes_are_found() {
        assert_eq!(
            enhanced_status("550 5.1.1 <x@y>: user unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("permanent error (550): 5.7.1 spam").as_deref(),
            Some("5.7.1")
        );
        assert_eq!(enhanced_status("mailbox unavailable"), None);
    }

    #[test]
    fn subjects_get_one_re() {
        let from: Mailbox = "Acme <bot@acme.example>".parse().expect("mailbox");
        let t = |s: Option<&str>, proactive: bool| Thread {
            subject: s.map(str::to_owned),
            proactive,
            ..Thread::default()
        };
        assert_eq!(subject_of(&from, &t(Some("Order"), false)), "Re: Order");
        assert_eq!(subject_of(&from, &t(Some("RE: Order"), false)), "RE: Order");
        assert_eq!(subject_of(&from, &t(None, false)), "Message from Acme");
        assert_eq!(subject_of(&from, &t(Some("News"), true)), "News");
        let bare: Mailbox = "bot@acme.example".parse().expect("mailbox");
        assert_eq!(
            subject_of(&bare, &t(None, true)),
            "Message from bot@acme.example"
        );
    }
}
