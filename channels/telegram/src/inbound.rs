//! Inbound: Bot API `Update`s (webhook POSTs and `getUpdates` results) normalized into the
//! channel contract.
//!
//! Authentication: Telegram sends the `secret_token` given to `setWebhook` in
//! `X-Telegram-Bot-Api-Secret-Token` on every webhook request; we compare it in constant time.
//!
//! Parsing is lenient on purpose, field by field over the JSON: the examples in Telegram's own
//! webhook guide omit `chat.type` and `from.is_bot`, older bots see payloads without
//! `file_unique_id`, and the Bot API grows new update kinds every few months. A strict
//! deserializer (teloxide's types, say) turns such a user message into an error; here it is
//! stored and answered. What we cannot read as a message becomes a notice — stored, surfaced,
//! never a 500 (Telegram would redeliver it forever).
//!
//! Dedupe: a message's provider id is its update's `update_id` with the chat and message ids
//! (`<update_id>:<chat>:<message>`; callbacks `<update_id>:cb:<query id>`): a redelivered update is
//! stored once, and an update id Telegram re-draws at random after a week without updates cannot
//! make a new message look like an old one.
//!
//! Groups: the contact is the chat, so replies go where the conversation is. A group message is
//! answered only when it addresses this bot: a command (`/cmd` or `/cmd@thisbot`), an
//! `@thisbot` mention, or a reply to one of the bot's messages. Other group messages are stored
//! as kind `unaddressed`, which the core does not answer.

use serde_json::Value;
use subtle::ConstantTimeEq;
use switchboard_channel::{
    Attachment, ContactRef, InboundError, InboundEvent, InboundMessage, Secret,
};

/// Header carrying the webhook's secret token.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Longest notice detail kept (the raw update, truncated).
const MAX_NOTICE_DETAIL: usize = 2048;

/// Checks the webhook's secret token in constant time (length differences included).
pub fn verify_secret(expected: &Secret, got: Option<&str>) -> Result<(), InboundError> {
    let Some(got) = got else {
        return Err(InboundError::Unauthorized(format!(
            "missing {SECRET_HEADER} header"
        )));
    };
    let (a, b) = (expected.expose().as_bytes(), got.as_bytes());
    // `ct_eq` on slices of different lengths is false without comparing contents; pad to avoid
    // even that early exit being measurable beyond the length itself.
    if a.len() == b.len() && bool::from(a.ct_eq(b)) {
        Ok(())
    } else {
        Err(InboundError::Unauthorized(format!(
            "{SECRET_HEADER} does not match"
        )))
    }
}

/// Who "we" are, to tell whether a group message addresses this bot.
#[derive(Debug, Clone, Copy, Default)]
pub struct BotIdentity<'a> {
    /// The bot's user id (from the token).
    pub id: Option<u64>,
    /// The bot's @username, without `@`.
    pub username: Option<&'a str>,
}

/// A webhook body: exactly one `Update`.
pub fn parse_webhook(body: &[u8], bot: BotIdentity<'_>) -> Result<Vec<InboundEvent>, InboundError> {
    let update: Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("not JSON: {e}")))?;
    parse_update(&update, bot)
}

/// One `Update` object, from a webhook or from `getUpdates`.
pub fn parse_update(
    update: &Value,
    bot: BotIdentity<'_>,
) -> Result<Vec<InboundEvent>, InboundError> {
    let object = update
        .as_object()
        .ok_or_else(|| InboundError::Malformed("an update must be a JSON object".into()))?;
    let update_id = object
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| InboundError::Malformed("update_id (an integer) is required".into()))?;
    let Some((key, payload)) = object.iter().find(|(k, _)| k.as_str() != "update_id") else {
        return Ok(vec![notice("empty_update", update)]);
    };
    let event = match key.as_str() {
        "message" | "business_message" => message_event(update_id, payload, false, bot),
        "edited_message" | "edited_business_message" => {
            message_event(update_id, payload, true, bot)
        }
        "callback_query" => callback_event(update_id, payload),
        "my_chat_member" => membership_event(payload, bot),
        "message_reaction" => reaction_event(update_id, payload),
        _ => None,
    };
    Ok(vec![event.unwrap_or_else(|| notice(key, update))])
}

fn notice(topic: &str, update: &Value) -> InboundEvent {
    let mut detail = update.to_string();
    if detail.len() > MAX_NOTICE_DETAIL {
        let mut cut = MAX_NOTICE_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    InboundEvent::Notice {
        topic: topic.to_owned(),
        detail,
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// "First Last" of a user or private chat, or a group's title.
fn display_name(v: &Value) -> Option<String> {
    if let Some(title) = str_of(v, "title") {
        return Some(title.to_owned());
    }
    let name = [str_of(v, "first_name"), str_of(v, "last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if name.is_empty() {
        str_of(v, "username").map(str::to_owned)
    } else {
        Some(name)
    }
}

fn is_group(chat: &Value) -> bool {
    match str_of(chat, "type") {
        Some(kind) => kind != "private",
        // Telegram's guide omits the type; group and channel ids are negative.
        None => chat
            .get("id")
            .and_then(Value::as_i64)
            .is_some_and(|id| id < 0),
    }
}

fn attachment(kind: &str, reference: String, item: &Value, caption: Option<&str>) -> Attachment {
    Attachment {
        kind: kind.to_owned(),
        reference,
        mime_type: str_of(item, "mime_type").map(str::to_owned),
        caption: caption.map(str::to_owned),
    }
}

/// The media of a message (file ids, fetched through `getFile` when needed) and its kind.
fn media(msg: &Value) -> Option<(String, Vec<Attachment>)> {
    let caption = str_of(msg, "caption");
    if let Some(sizes) = msg.get("photo").and_then(Value::as_array) {
        // Sizes come smallest first; the last is the original.
        let best = sizes.last()?;
        let file_id = str_of(best, "file_id")?.to_owned();
        return Some((
            "image".into(),
            vec![attachment("image", file_id, best, caption)],
        ));
    }
    // `animation` messages also carry `document` for old clients: look at it first.
    for (field, kind) in [
        ("animation", "animation"),
        ("sticker", "sticker"),
        ("voice", "voice"),
        ("video_note", "video_note"),
        ("video", "video"),
        ("audio", "audio"),
        ("document", "document"),
    ] {
        if let Some(item) = msg.get(field) {
            let file_id = str_of(item, "file_id")?.to_owned();
            let caption = caption.or_else(|| str_of(item, "file_name"));
            return Some((kind.into(), vec![attachment(kind, file_id, item, caption)]));
        }
    }
    None
}

/// Normalizes a command: `/start@ThisBot payload` → `/start payload`. `None` when the command
/// names another bot.
fn normalize_command(text: &str, bot: BotIdentity<'_>) -> Option<String> {
    let (head, rest) = match text.split_once(char::is_whitespace) {
        Some((h, r)) => (h, Some(r.trim_start())),
        None => (text, None),
    };
    let command = match head.split_once('@') {
        Some((command, target)) => {
            let ours = bot
                .username
                .is_some_and(|name| name.eq_ignore_ascii_case(target));
            if !ours {
                return None;
            }
            command
        }
        None => head,
    };
    Some(match rest {
        Some(rest) if !rest.is_empty() => format!("{command} {rest}"),
        _ => command.to_owned(),
    })
}

fn starts_with_command(msg: &Value, text: &str) -> bool {
    let by_entity = msg
        .get("entities")
        .and_then(Value::as_array)
        .is_some_and(|entities| {
            entities.iter().any(|e| {
                str_of(e, "type") == Some("bot_command")
                    && e.get("offset").and_then(Value::as_i64) == Some(0)
            })
        });
    // The guide's examples have no entities; a leading `/word` is a command all the same.
    by_entity
        || (text.starts_with('/')
            && text[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric()))
}

/// Whether a group message addresses this bot (a command is decided by its `@bot` suffix).
fn mentions_bot(msg: &Value, text: &str, bot: BotIdentity<'_>) -> bool {
    if let Some(name) = bot.username {
        let needle = format!("@{}", name.to_ascii_lowercase());
        if text.to_ascii_lowercase().contains(&needle) {
            return true;
        }
    }
    let replied_to = msg
        .get("reply_to_message")
        .and_then(|r| r.get("from"))
        .and_then(|f| f.get("id"))
        .and_then(Value::as_u64);
    replied_to.is_some() && replied_to == bot.id
}

/// Removes `@thisbot` from a group message (case-insensitive), so the bot reads the question.
fn strip_mention(text: &str, bot: BotIdentity<'_>) -> String {
    let Some(name) = bot.username else {
        return text.to_owned();
    };
    let needle = format!("@{}", name.to_ascii_lowercase());
    let lower = text.to_ascii_lowercase();
    match lower.find(&needle) {
        // ASCII lowercasing keeps byte offsets, so the same range is valid in `text`.
        Some(at) => {
            let mut out = String::with_capacity(text.len());
            out.push_str(&text[..at]);
            out.push_str(&text[at + needle.len()..]);
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        None => text.to_owned(),
    }
}

/// Service messages: group membership, pins, migrations, payments… recorded, not answered.
const SERVICE_FIELDS: &[&str] = &[
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "connected_website",
    "write_access_allowed",
    "proximity_alert_triggered",
    "boost_added",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "web_app_data",
];

/// Fields every message has, whatever it carries.
const ENVELOPE_FIELDS: &[&str] = &[
    "message_id",
    "message_thread_id",
    "from",
    "sender_chat",
    "sender_boost_count",
    "sender_business_bot",
    "business_connection_id",
    "date",
    "chat",
    "forward_from",
    "forward_from_chat",
    "forward_from_message_id",
    "forward_signature",
    "forward_sender_name",
    "forward_date",
    "forward_origin",
    "is_topic_message",
    "is_automatic_forward",
    "reply_to_message",
    "external_reply",
    "quote",
    "reply_to_story",
    "via_bot",
    "edit_date",
    "has_protected_content",
    "is_from_offline",
    "media_group_id",
    "author_signature",
    "entities",
    "caption_entities",
    "link_preview_options",
    "reply_markup",
    "effect_id",
    "show_caption_above_media",
    "has_media_spoiler",
    "text",
    "caption",
];

fn message_event(
    update_id: i64,
    msg: &Value,
    edited: bool,
    bot: BotIdentity<'_>,
) -> Option<InboundEvent> {
    let chat = msg.get("chat")?;
    let chat_id = id_string(chat.get("id")?)?;
    let message_id = msg.get("message_id").and_then(Value::as_i64)?;
    let group = is_group(chat);
    let from = msg.get("from");
    let name = if group {
        display_name(chat)
    } else {
        from.and_then(display_name).or_else(|| display_name(chat))
    };
    let mut text = str_of(msg, "text")
        .or_else(|| str_of(msg, "caption"))
        .unwrap_or_default()
        .to_owned();
    let mut attachments = Vec::new();
    let mut kind = "text".to_owned();
    if let Some((media_kind, items)) = media(msg) {
        kind = media_kind;
        attachments = items;
        if kind == "sticker" && text.is_empty() {
            text = msg["sticker"]["emoji"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
    } else if let Some(location) = msg.get("location") {
        let (lat, lon) = (location.get("latitude")?, location.get("longitude")?);
        kind = if msg.get("venue").is_some() {
            "venue"
        } else {
            "location"
        }
        .into();
        if let Some(venue) = msg.get("venue") {
            text = [str_of(venue, "title"), str_of(venue, "address")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
        }
        attachments.push(attachment(
            "location",
            format!("{lat},{lon}"),
            location,
            None,
        ));
    } else if let Some(contact) = msg.get("contact") {
        kind = "contact".into();
        let phone = str_of(contact, "phone_number").unwrap_or_default();
        text = [display_name(contact).as_deref(), Some(phone)]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        attachments.push(attachment("contact", phone.to_owned(), contact, None));
    } else if let Some(dice) = msg.get("dice") {
        kind = "dice".into();
        text = str_of(dice, "emoji").unwrap_or_default().to_owned();
    } else if let Some(poll) = msg.get("poll") {
        kind = "poll".into();
        text = str_of(poll, "question").unwrap_or_default().to_owned();
    } else if SERVICE_FIELDS.iter().any(|f| msg.get(*f).is_some()) {
        kind = "system".into();
    } else if text.is_empty() {
        // A type we do not know (game, story, invoice, giveaway…): keep its name.
        kind = msg
            .as_object()
            .and_then(|o| o.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())))
            .map_or("unsupported", |k| k.as_str())
            .to_owned();
    }
    if kind == "text" && starts_with_command(msg, &text) {
        match normalize_command(&text, bot) {
            Some(command) => {
                kind = "command".into();
                text = command;
            }
            // A command for another bot in the same group.
            None => kind = "unaddressed".into(),
        }
    } else if group && kind != "system" {
        if mentions_bot(msg, &text, bot) {
            text = strip_mention(&text, bot);
        } else {
            kind = "unaddressed".into();
        }
    }
    let (kind, reply_to, sent_at) = if edited {
        (
            "edit".to_owned(),
            Some(message_id.to_string()),
            msg.get("edit_date")
                .and_then(Value::as_i64)
                .or_else(|| msg.get("date").and_then(Value::as_i64)),
        )
    } else {
        (
            kind,
            msg.get("reply_to_message")
                .and_then(|r| r.get("message_id"))
                .and_then(Value::as_i64)
                .map(|id| id.to_string()),
            msg.get("date").and_then(Value::as_i64),
        )
    };
    Some(InboundEvent::Message(InboundMessage {
        provider_id: format!("{update_id}:{}:{message_id}", chat_id),
        contact: ContactRef {
            external_id: chat_id,
            display_name: name,
        },
        text,
        attachments,
        kind,
        reply_to,
        sent_at,
    }))
}

/// A pressed inline-keyboard button: its `data` is what the person "said". The callback query id
/// rides along as an attachment so the reply can answer it (stopping the button's spinner).
fn callback_event(update_id: i64, query: &Value) -> Option<InboundEvent> {
    let from = query.get("from")?;
    let message = query.get("message");
    let chat = message.and_then(|m| m.get("chat"));
    let external_id = chat
        .and_then(|c| c.get("id"))
        .and_then(id_string)
        .or_else(|| from.get("id").and_then(id_string))?;
    let callback_id = query.get("id").and_then(id_string)?;
    let text = str_of(query, "data")
        .or_else(|| str_of(query, "game_short_name"))
        .unwrap_or_default()
        .to_owned();
    Some(InboundEvent::Message(InboundMessage {
        provider_id: format!("{update_id}:cb:{callback_id}"),
        contact: ContactRef {
            external_id,
            display_name: display_name(from),
        },
        text,
        attachments: vec![Attachment {
            kind: "callback_query".into(),
            reference: callback_id,
            mime_type: None,
            caption: None,
        }],
        kind: "button_reply".into(),
        reply_to: message
            .and_then(|m| m.get("message_id"))
            .and_then(Value::as_i64)
            .map(|id| id.to_string()),
        sent_at: message.and_then(|m| m.get("date")).and_then(Value::as_i64),
    }))
}

/// The bot's own membership in a chat changed: blocked or removed → unreachable; (re)started or
/// added → reachable again.
fn membership_event(update: &Value, bot: BotIdentity<'_>) -> Option<InboundEvent> {
    let chat = update.get("chat")?;
    let external_id = id_string(chat.get("id")?)?;
    let member = update.get("new_chat_member")?;
    if let (Some(ours), Some(user)) = (
        bot.id,
        member
            .get("user")
            .and_then(|u| u.get("id"))
            .and_then(Value::as_u64),
    ) && ours != user
    {
        return None;
    }
    let status = str_of(member, "status")?;
    let (reachable, reason) = match status {
        "kicked" if is_group(chat) => (false, "the bot was removed from the group"),
        "kicked" => (false, "the contact blocked the bot"),
        "left" => (false, "the bot left the chat"),
        "member" | "administrator" | "creator" | "restricted" => (true, "the bot can write again"),
        _ => return None,
    };
    Some(InboundEvent::Reachability {
        external_id,
        reachable,
        reason: reason.to_owned(),
        at: update.get("date").and_then(Value::as_i64),
    })
}

/// A reaction to a message: recorded (kind `reaction`, or `reaction_removed` when cleared), not
/// answered.
fn reaction_event(update_id: i64, update: &Value) -> Option<InboundEvent> {
    let chat = update.get("chat")?;
    let external_id = id_string(chat.get("id")?)?;
    let emojis: Vec<&str> = update
        .get("new_reaction")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|x| str_of(x, "emoji").or_else(|| str_of(x, "type")))
                .collect()
        })
        .unwrap_or_default();
    let kind = if emojis.is_empty() {
        "reaction_removed"
    } else {
        "reaction"
    };
    Some(InboundEvent::Message(InboundMessage {
        provider_id: format!(
            "{update_id}:{external_id}:{}",
            update
                .get("message_id")
                .and_then(Value::as_i64)
                .unwrap_or_default()
        ),
        contact: ContactRef {
            external_id,
            display_name: update.get("user").and_then(display_name),
        },
        text: emojis.join(""),
        attachments: Vec::new(),
        kind: kind.into(),
        reply_to: update
            .get("message_id")
            .and_then(Value::as_i64)
            .map(|id| id.to_string()),
        sent_at: update.get("date").and_then(Value::as_i64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT: BotIdentity<'static> = BotIdentity {
        id: Some(42),
        username: Some("CoachBot"),
    };

    fn one(update: Value) -> InboundEvent {
        let mut events = parse_update(&update, BOT).expect("parses");
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    fn message(update: Value) -> InboundMessage {
        match one(update) {
            InboundEvent::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn group_text(text: &str) -> Value {
        json!({ "update_id": 7, "message": { "message_id": 1, "date": 1,
            "chat": { "id": -100, "type": "supergroup", "title": "Runners" },
            "from": { "id": 5, "is_bot": false, "first_name": "Ann" }, "text": text } })
    }

    #[test]
    fn the_secret_token_is_compared_exactly() {
        let secret = Secret::new("abc_123");
        assert!(verify_secret(&secret, Some("abc_123")).is_ok());
        for wrong in [
            Some("abc_12"),
            Some("abc_1234"),
            Some("ABC_123"),
            Some(""),
            None,
        ] {
            assert!(matches!(
                verify_secret(&secret, wrong),
                Err(InboundError::Unauthorized(_))
            ));
        }
    }

    #[test]
    fn commands_lose_their_bot_suffix_and_other_bots_commands_are_not_ours() {
        let m = message(group_text("/help@coachbot   now"));
        assert_eq!((m.kind.as_str(), m.text.as_str()), ("command", "/help now"));
        assert_eq!(m.contact.external_id, "-100");
        assert_eq!(message(group_text("/help@OtherBot")).kind, "unaddressed");
        assert_eq!(message(group_text("/stop")).kind, "command");
    }

    #[test]
    fn group_messages_are_answered_only_when_addressed() {
        assert_eq!(message(group_text("nice run today")).kind, "unaddressed");
        let m = message(group_text("@CoachBot how far should I run?"));
        assert_eq!(
            (m.kind.as_str(), m.text.as_str()),
            ("text", "how far should I run?")
        );
        let mut reply = group_text("and tomorrow?");
        reply["message"]["reply_to_message"] =
            json!({ "message_id": 9, "date": 1, "chat": { "id": -100 }, "from": { "id": 42 } });
        let m = message(reply);
        assert_eq!(
            (m.kind.as_str(), m.reply_to.as_deref()),
            ("text", Some("9"))
        );
    }

    #[test]
    fn a_redrawn_update_id_does_not_make_a_new_message_a_duplicate() {
        let a = message(
            json!({ "update_id": 5, "message": { "message_id": 1, "date": 1,
            "chat": { "id": 10, "type": "private" }, "text": "old" } }),
        );
        let again = message(
            json!({ "update_id": 5, "message": { "message_id": 1, "date": 1,
            "chat": { "id": 10, "type": "private" }, "text": "old" } }),
        );
        let b = message(
            json!({ "update_id": 5, "message": { "message_id": 77, "date": 9,
            "chat": { "id": 11, "type": "private" }, "text": "new" } }),
        );
        assert_eq!(
            a.provider_id, again.provider_id,
            "a redelivery is the same message"
        );
        assert_ne!(a.provider_id, b.provider_id);
    }

    #[test]
    fn a_blocked_bot_makes_the_contact_unreachable() {
        let blocked = one(json!({ "update_id": 3, "my_chat_member": {
            "chat": { "id": 77, "type": "private" }, "from": { "id": 77 }, "date": 1,
            "old_chat_member": { "user": { "id": 42 }, "status": "member" },
            "new_chat_member": { "user": { "id": 42 }, "status": "kicked" } } }));
        assert!(
            matches!(blocked, InboundEvent::Reachability { ref external_id, reachable: false, .. } if external_id == "77")
        );
    }

    #[test]
    fn updates_without_an_id_or_object_are_malformed_and_unknown_kinds_are_notices() {
        for bad in [
            json!([]),
            json!({ "message": {} }),
            json!({ "update_id": "x" }),
        ] {
            assert!(matches!(
                parse_update(&bad, BOT),
                Err(InboundError::Malformed(_))
            ));
        }
        assert!(parse_webhook(b"{not json", BOT).is_err());
        let n = one(json!({ "update_id": 1, "brand_new_kind": { "x": 1 } }));
        assert!(matches!(n, InboundEvent::Notice { ref topic, .. } if topic == "brand_new_kind"));
        // A message we cannot attribute to a chat is a notice, not an error.
        let n = one(json!({ "update_id": 2, "message": { "text": "hi" } }));
        assert!(matches!(n, InboundEvent::Notice { ref topic, .. } if topic == "message"));
    }
}
