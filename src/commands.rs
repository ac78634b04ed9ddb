//! Commands every channel understands, typed as a message: `/start`, `/help`, `/stop`, `/human`,
//! `/link`, and the SMS-style keywords STOP / STOPALL / UNSUBSCRIBE and START / UNSTOP.
//!
//! Where it sits: the router checks each turn with [`parse`] before asking the responder; a
//! command is carried out here and its confirmation is the turn's reply (stored and delivered
//! like any other). Commands work whatever the conversation's status: opting out must always be
//! possible, and so must asking for a person.
//!
//! Effects are idempotent (opting out twice is opting out), so a turn that is re-run after a
//! crash does no harm — except a link code, which is single-use: a re-run says the code is used.

use crate::store::Store;
use crate::store::contacts::{LINK_CODE_TTL_MS, LinkOutcome};
use crate::store::messages::PendingTurn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/start` (with an optional deep-link payload), `START`, `UNSTOP`: welcome, and opt back in.
    Start(Option<String>),
    Help,
    /// `/stop`, `STOP`, `STOPALL`, `UNSUBSCRIBE`: no proactive messages on any channel.
    Stop,
    /// `/human`, `/agent`: hand the conversation to a person.
    Human,
    /// `/link` gives a one-time code; `/link <code>` (or `link <code>`) on another channel joins
    /// the two identities into one contact.
    Link(Option<String>),
}

/// The command in a message, if it is one. Only `text`, `command` and `email` messages can be
/// commands (and the `opt_out`/`opt_in`/`help` keywords a channel recognised by its provider's
/// rules).
pub fn parse(kind: &str, text: &str) -> Option<Command> {
    // Keywords a channel recognised by its provider's rules (SMS: STOP, CANCEL, QUIT, YES, INFO…).
    match kind {
        "opt_out" => return Some(Command::Stop),
        "opt_in" => return Some(Command::Start(None)),
        "help" => return Some(Command::Help),
        // A person's mail is as good as a text (its new text, or its subject when it has none).
        "text" | "command" | "email" => {}
        _ => return None,
    }
    let text = text.trim();
    let (head, rest) = match text.split_once(char::is_whitespace) {
        Some((h, r)) => (h, Some(r.trim()).filter(|r| !r.is_empty())),
        None => (text, None),
    };
    let head = head.to_lowercase();
    if let Some(name) = head.strip_prefix('/') {
        return match name {
            "start" => Some(match rest.and_then(link_payload) {
                Some(code) => Command::Link(Some(code)),
                None => Command::Start(rest.map(str::to_owned)),
            }),
            "help" => Some(Command::Help),
            "stop" | "unsubscribe" => Some(Command::Stop),
            "human" | "agent" => Some(Command::Human),
            "link" => Some(Command::Link(rest.map(str::to_owned))),
            _ => None,
        };
    }
    // Keywords count only as the whole message ("stop" alone, not "don't stop me now").
    let word = head.trim_end_matches(['.', '!']);
    match (word, rest) {
        ("stop" | "stopall" | "unsubscribe", None) => Some(Command::Stop),
        ("start" | "unstop", None) => Some(Command::Start(None)),
        ("link", Some(code)) if link_payload(code).is_some() => {
            Some(Command::Link(Some(code.to_owned())))
        }
        _ => None,
    }
}

/// Whether the turn's chat is a group (Telegram group and channel ids are negative).
fn is_group(turn: &PendingTurn) -> bool {
    turn.channel_kind == "telegram" && turn.recipient.starts_with('-')
}

/// A deep-link payload `link-123456` (or a bare six-digit code) → the code.
fn link_payload(payload: &str) -> Option<String> {
    let code = payload.strip_prefix("link-").unwrap_or(payload);
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then(|| code.to_owned())
}

pub const HELP: &str = "I answer questions from what this coach has shared. You can also send:\n\
/human - ask for a person to take over\n\
/join <program> - start a coaching program; /progress - see how you're doing\n\
/link - use this chat and another app (Telegram, WhatsApp, ...) as one account\n\
/stop - no more reminders or check-ins (you can still write to me)\n\
/start - start again";

pub const WELCOME: &str = "Hi! Ask me anything. Send /help to see what else I can do.";

/// Carries out a command for the turn's contact and returns the confirmation to send.
pub async fn run(store: &Store, turn: &PendingTurn, command: &Command) -> anyhow::Result<String> {
    Ok(match command {
        Command::Start(_) => {
            store.set_opt_out(&turn.conversation_id, false).await?;
            WELCOME.to_owned()
        }
        Command::Help => HELP.to_owned(),
        Command::Stop => {
            store.set_opt_out(&turn.conversation_id, true).await?;
            "You're unsubscribed: no more reminders or check-ins from us, on any channel. You can \
             still write to me any time; send /start to subscribe again."
                .to_owned()
        }
        Command::Human => {
            // A ticket for the team (or a note on the open one) with the hand-off.
            let now = crate::store::now_ms();
            let mut w = store.begin_write().await?;
            crate::store::moderation::escalate(
                &mut w,
                crate::store::moderation::Escalation {
                    tenant_id: &turn.tenant_id,
                    conversation_id: &turn.conversation_id,
                    contact_id: &turn.contact_id,
                    flag_id: None,
                    source: "command",
                    priority: "normal",
                    subject: "The contact asked for a person (/human)",
                    by: "contact",
                    targets: crate::moderation::sla("normal"),
                },
                now,
            )
            .await?;
            w.commit().await?;
            // The tenant's hand-off message (outside its business hours, when a person will be
            // back); a saved policy was validated, so a parse failure falls back to the default.
            let compiled = store
                .moderation_policy(&turn.tenant_id)
                .await?
                .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| crate::moderation::Compiled::parse(&v).ok())
                .map_or_else(
                    || crate::moderation::Compiled::new(crate::moderation::Policy::default()),
                    Ok,
                );
            match compiled {
                Ok(c) => c.handoff_text(now),
                Err(_) => "I've asked a person to take over. They will answer here; until then I'll stay quiet.".to_owned(),
            }
        }
        // In a group the "contact" is the whole chat: a code shown there is everyone's, and
        // joining a group to a person would mix their histories.
        Command::Link(_) if is_group(turn) => {
            "Linking works in a private chat with me, not in a group.".to_owned()
        }
        // Anyone can write a mail with someone else's address in `From`: a code redeemed by mail
        // could join a stranger's mailbox to the sender's chat. The code goes the other way: asked
        // for by mail (it reaches the real mailbox), redeemed in the other app.
        Command::Link(Some(_)) if turn.channel_kind == "email" => {
            "For your safety, codes are not accepted by email. Send /link here to get a code by              mail, then send \"/link <code>\" from your other app."
                .to_owned()
        }
        Command::Link(None) => {
            let code = store
                .create_link_code(&turn.tenant_id, &turn.conversation_id)
                .await?;
            format!(
                "Your link code is {code}. Within {} minutes, send \"/link {code}\" from your other \
                 app (Telegram, WhatsApp, ...) and both will share one history.",
                LINK_CODE_TTL_MS / 60_000
            )
        }
        Command::Link(Some(code)) => {
            let code = link_payload(code).unwrap_or_else(|| code.clone());
            match store
                .redeem_link_code(&turn.tenant_id, &turn.conversation_id, &code)
                .await?
            {
                LinkOutcome::Linked { .. } => {
                    "Linked: this chat and your other app now share one history.".to_owned()
                }
                LinkOutcome::AlreadyLinked => {
                    "This chat is already linked to that account.".to_owned()
                }
                LinkOutcome::Invalid => {
                    "That code isn't valid: codes work once and only for a few \
                    minutes. Send /link in your other app for a new one."
                        .to_owned()
                }
                LinkOutcome::Conflict => "That account already has a chat on this app, so I \
                    can't join the two. Send /link from the other app instead."
                    .to_owned(),
                LinkOutcome::TooManyAttempts => "Too many wrong codes: please wait an hour, \
                    then send /link in your other app for a fresh code."
                    .to_owned(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_keywords() {
        assert_eq!(parse("command", "/start"), Some(Command::Start(None)));
        assert_eq!(parse("command", "/START"), Some(Command::Start(None)));
        assert_eq!(
            parse("command", "/start link-123456"),
            Some(Command::Link(Some("123456".into())))
        );
        assert_eq!(
            parse("text", "/link 123456"),
            Some(Command::Link(Some("123456".into())))
        );
        assert_eq!(
            parse("text", "link 654321"),
            Some(Command::Link(Some("654321".into())))
        );
        assert_eq!(parse("text", "/link"), Some(Command::Link(None)));
        assert_eq!(parse("text", "STOP"), Some(Command::Stop));
        assert_eq!(parse("text", " Unsubscribe. "), Some(Command::Stop));
        assert_eq!(parse("text", "/human"), Some(Command::Human));
        assert_eq!(parse("text", "don't stop"), None);
        assert_eq!(parse("text", "stop it please"), None);
        assert_eq!(parse("text", "link me to the docs"), None);
        assert_eq!(parse("image", "STOP"), None, "a caption is not a command");
        assert_eq!(parse("command", "/unknown"), None);
    }
}
