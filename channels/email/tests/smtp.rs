//! Outbound through a tiny SMTP stand-in on loopback: headers that thread and mark the mail,
//! multipart/alternative bodies, deterministic Message-IDs, SMTP replies classified, and the
//! egress policy applied to the tenant's SMTP host.

use std::sync::{Arc, Mutex};

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;
use switchboard_channel::egress::EgressPolicy;
use switchboard_channel::{Content, OutboundMessage, Progress, SendError};
use switchboard_channel_email::{EmailConfig, EmailSender, Thread, conversation_of};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal SMTP server: EHLO/HELO, MAIL, RCPT (answered with `rcpt_reply`), DATA, RSET,
/// NOOP, QUIT. Records each message's DATA (dot-unstuffed) and counts connections.
struct StandIn {
    port: u16,
    mails: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

impl StandIn {
    async fn start(rcpt_reply: &'static str) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (m, c) = (mails.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().expect("lock") += 1;
                let mails = m.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let say = |s: &str| format!("{s}\r\n").into_bytes();
                    if write.write_all(&say("220 stand-in ESMTP")).await.is_err() {
                        return;
                    }
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_ascii_uppercase();
                        let reply = match verb.as_str() {
                            "EHLO" => "250-stand-in\r\n250 8BITMIME".to_owned(),
                            "HELO" | "MAIL" | "RSET" | "NOOP" => "250 OK".to_owned(),
                            "RCPT" => rcpt_reply.to_owned(),
                            "DATA" => {
                                if write.write_all(&say("354 go ahead")).await.is_err() {
                                    return;
                                }
                                let mut data = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                                    data.push_str("\r\n");
                                }
                                mails.lock().expect("lock").push(data);
                                "250 2.0.0 queued".to_owned()
                            }
                            "QUIT" => {
                                let _ = write.write_all(&say("221 bye")).await;
                                return;
                            }
                            _ => "500 5.5.1 unknown command".to_owned(),
                        };
                        if write.write_all(&say(&reply)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StandIn {
            port,
            mails,
            connections,
        }
    }

    fn config(&self, query: &str) -> EmailConfig {
        EmailConfig::parse(&json!({
            "from": "Coach <coach@acme.example>",
            "smtp_url": format!("smtp://127.0.0.1:{}{query}", self.port),
        }))
        .expect("config")
    }

    fn mails(&self) -> Vec<String> {
        self.mails.lock().expect("lock").clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().expect("lock")
    }
}

fn loopback() -> EmailSender {
    EmailSender::new(EgressPolicy::parse(&["127.0.0.1"]).expect("policy"))
}

fn message(text: &str) -> OutboundMessage {
    OutboundMessage {
        delivery_id: "d9".into(),
        conversation_id: "c1".into(),
        message_id: "m9".into(),
        seq: 3,
        to: "Ann <ann@example.com>".into(),
        text: text.into(),
        content: Content::default(),
        parts_sent: 0,
        progress: Progress::default(),
        contact_last_wrote_at: None,
    }
}

fn reply_thread() -> Thread {
    Thread {
        subject: Some("Your plan".into()),
        in_reply_to: Some("ann-2@example.com".into()),
        references: vec!["<ann-1@example.com>".into(), "sb.c1.d1@acme.example".into()],
        proactive: false,
        unsubscribe_url: Some("https://acme.example/u/1".into()),
        reply_to_token: Some("tok_1".into()),
    }
}

fn header<'a>(mail: &'a mail_parser::Message<'a>, name: &str) -> Option<&'a str> {
    mail.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| {
            let raw = &mail.raw_message()[h.offset_start() as usize..h.offset_end() as usize];
            std::str::from_utf8(raw).expect("ascii").trim()
        })
}

#[tokio::test]
async fn a_reply_is_threaded_marked_and_sent_as_alternative_parts() {
    let smtp = StandIn::start("250 OK").await;
    let config = smtp.config("?tls=none");
    let msg = message("Tuesday at 3 works. Details: https://acme.example/b?x=1&y=2");
    let receipt = loopback()
        .send(&config, &msg, &reply_thread())
        .await
        .expect("sent");
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("sb.c1.d9@acme.example")
    );
    assert_eq!(conversation_of("<sb.c1.d9@acme.example>"), Some("c1"));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = MessageParser::default()
        .parse(mails[0].as_bytes())
        .expect("a mail");
    assert_eq!(mail.message_id(), Some("sb.c1.d9@acme.example"));
    assert_eq!(header(&mail, "In-Reply-To"), Some("<ann-2@example.com>"));
    assert_eq!(
        header(&mail, "References")
            .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
            .as_deref(),
        Some("<ann-1@example.com> <sb.c1.d1@acme.example> <ann-2@example.com>")
    );
    assert_eq!(header(&mail, "Auto-Submitted"), Some("auto-replied"));
    assert_eq!(mail.subject(), Some("Re: Your plan"));
    let reply_to = mail.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!(
        reply_to.address.as_deref(),
        Some("coach+tok_1@acme.example")
    );
    assert_eq!(
        header(&mail, "List-Unsubscribe"),
        None,
        "answers carry no unsubscribe"
    );
    assert!(
        mail.root_part()
            .content_type()
            .is_some_and(|ct| ct.subtype() == Some("alternative")),
        "multipart/alternative"
    );
    assert_eq!(
        mail.body_text(0).as_deref().map(str::trim_end),
        Some(msg.text.as_str())
    );
    let html = mail.body_html(0).expect("html part");
    assert!(
        html.contains("<a href=\"https://acme.example/b?x=1&amp;y=2\">"),
        "{html}"
    );

    // A retry of the same delivery carries the same Message-ID.
    loopback()
        .send(&config, &msg, &reply_thread())
        .await
        .expect("sent again");
    let mails = smtp.mails();
    let again = MessageParser::default()
        .parse(mails[1].as_bytes())
        .expect("a mail");
    assert_eq!(again.message_id(), mail.message_id());
}

#[tokio::test]
async fn proactive_mail_is_auto_generated_with_one_click_unsubscribe() {
    let smtp = StandIn::start("250 OK").await;
    // No tls parameter: STARTTLS when offered; this server offers none.
    let config = smtp.config("");
    let thread = Thread {
        proactive: true,
        unsubscribe_url: Some("https://acme.example/u/1".into()),
        ..Thread::default()
    };
    loopback()
        .send(&config, &message("Your weekly check-in"), &thread)
        .await
        .expect("sent");
    let mails = smtp.mails();
    let mail = MessageParser::default()
        .parse(mails[0].as_bytes())
        .expect("a mail");
    assert_eq!(header(&mail, "Auto-Submitted"), Some("auto-generated"));
    assert_eq!(
        header(&mail, "List-Unsubscribe"),
        Some("<https://acme.example/u/1>")
    );
    assert_eq!(
        header(&mail, "List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(mail.subject(), Some("Message from Coach"));
    assert_eq!(header(&mail, "In-Reply-To"), None);
    assert_eq!(header(&mail, "Reply-To"), None);
}

#[tokio::test]
async fn smtp_replies_are_classified() {
    for (reply, expect) in [
        ("550 5.1.1 <ann@example.com>: user unknown", "unreachable"),
        ("550 mailbox unavailable", "unreachable"),
        ("553 5.1.3 bad address syntax", "unreachable"),
        ("554 5.7.1 rejected by policy", "permanent"),
        ("451 4.3.0 try again later", "transient"),
        ("452 4.2.2 mailbox full", "transient"),
    ] {
        let smtp = StandIn::start(reply).await;
        let err = loopback()
            .send(&smtp.config("?tls=none"), &message("hi"), &reply_thread())
            .await
            .expect_err(reply);
        let got = match &err {
            SendError::Unreachable(_) => "unreachable",
            SendError::Permanent(_) => "permanent",
            SendError::Transient(_) => "transient",
            _ => "other",
        };
        assert_eq!(got, expect, "{reply}: {err}");
    }
}

#[tokio::test]
async fn the_smtp_host_must_pass_the_egress_policy() {
    let smtp = StandIn::start("250 OK").await;
    let strict = EmailSender::new(EgressPolicy::strict());
    let err = strict
        .send(&smtp.config("?tls=none"), &message("hi"), &reply_thread())
        .await
        .expect_err("loopback refused");
    assert!(
        matches!(&err, SendError::Permanent(m) if m.starts_with("egress refused")),
        "{err}"
    );
    // By name too: localhost resolves to loopback.
    let by_name = EmailConfig::parse(&json!({
        "from": "coach@acme.example",
        "smtp_url": format!("smtp://localhost:{}?tls=none", smtp.port),
    }))
    .expect("config");
    let err = strict
        .send(&by_name, &message("hi"), &reply_thread())
        .await
        .expect_err("localhost refused");
    assert!(
        matches!(&err, SendError::Permanent(m) if m.contains("egress refused")),
        "{err}"
    );
    assert_eq!(smtp.connections(), 0, "refused before connecting");
    // Allowed on another port only: still refused.
    let other_port = EmailSender::new(
        EgressPolicy::parse(&[format!("127.0.0.1:{}", smtp.port + 1)]).expect("p"),
    );
    assert!(
        other_port
            .send(&smtp.config("?tls=none"), &message("hi"), &reply_thread())
            .await
            .is_err()
    );
    // Allowed on its port: sent.
    let this_port =
        EmailSender::new(EgressPolicy::parse(&[format!("127.0.0.1:{}", smtp.port)]).expect("p"));
    this_port
        .send(&smtp.config("?tls=none"), &message("hi"), &reply_thread())
        .await
        .expect("sent");
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn configuration_and_connection_failures() {
    let receive_only = EmailConfig::parse(&json!({ "from": "coach@acme.example" })).expect("c");
    let err = loopback()
        .send(&receive_only, &message("hi"), &reply_thread())
        .await
        .expect_err("no smtp");
    assert!(
        matches!(&err, SendError::Permanent(m) if m.contains("no smtp_url")),
        "{err}"
    );

    // Nothing listens: worth a retry.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let config = EmailConfig::parse(&json!({
        "from": "coach@acme.example",
        "smtp_url": format!("smtp://127.0.0.1:{port}?tls=none"),
    }))
    .expect("config");
    let err = loopback()
        .send(&config, &message("hi"), &reply_thread())
        .await
        .expect_err("refused");
    assert!(matches!(err, SendError::Transient(_)), "{err}");

    // The URL insists on STARTTLS; the server offers none: a retry will not help.
    let smtp = StandIn::start("250 OK").await;
    let err = loopback()
        .send(
            &smtp.config("?tls=required"),
            &message("hi"),
            &reply_thread(),
        )
        .await
        .expect_err("no STARTTLS");
    assert!(matches!(err, SendError::Permanent(_)), "{err}");
    assert!(smtp.mails().is_empty());

    // A recipient that is not an address, a template: refused before connecting.
    let mut bad = message("hi");
    bad.to = "+15551234567".into();
    assert!(matches!(
        loopback()
            .send(&smtp.config("?tls=none"), &bad, &reply_thread())
            .await,
        Err(SendError::Permanent(_))
    ));
    let mut template = message("hi");
    template.content.template = Some(switchboard_channel::Template {
        name: "t".into(),
        language: None,
        parameters: vec![],
    });
    assert!(matches!(
        loopback()
            .send(&smtp.config("?tls=none"), &template, &reply_thread())
            .await,
        Err(SendError::Permanent(_))
    ));
}
