//! Every third-party Update in tests/fixtures (see SOURCES.md) through the parser.

use std::path::PathBuf;

use serde_json::Value;
use switchboard_channel::{InboundEvent, InboundMessage};
use switchboard_channel_telegram::{BotIdentity, parse_update, parse_webhook};

const BOT: BotIdentity<'static> = BotIdentity {
    id: Some(1),
    username: Some("unBot"),
};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).expect("fixtures dir") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).expect("dir") {
            let file = file.expect("entry").path();
            if file.extension().is_some_and(|e| e == "json") {
                let name = file
                    .strip_prefix(&root)
                    .expect("under root")
                    .display()
                    .to_string();
                out.push((name, std::fs::read(&file).expect("readable")));
            }
        }
    }
    out.sort();
    out
}

fn event(name: &str) -> InboundEvent {
    let (_, body) = fixtures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    let mut events = parse_webhook(&body, BOT).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(events.len(), 1, "{name}");
    events.remove(0)
}

fn message(name: &str) -> InboundMessage {
    match event(name) {
        InboundEvent::Message(m) => m,
        other => panic!("{name}: expected a message, got {other:?}"),
    }
}

#[test]
fn every_update_fixture_gives_exactly_one_event() {
    let mut updates = 0;
    for (name, body) in fixtures() {
        let value: Value = serde_json::from_slice(&body).expect("fixture is JSON");
        if value.get("update_id").is_none() {
            continue;
        }
        updates += 1;
        let events = parse_webhook(&body, BOT).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        if let InboundEvent::Message(m) = &events[0] {
            assert!(
                m.provider_id
                    .starts_with(&format!("{}:", value["update_id"])),
                "{name}: deduped on update_id: {}",
                m.provider_id
            );
            assert!(!m.contact.external_id.is_empty(), "{name}");
        }
    }
    assert!(updates >= 40, "only {updates} update fixtures found");
}

#[test]
fn telegrams_own_guide_examples_are_read_despite_their_quirks() {
    // No chat.type, no from.is_bot: still a /start command from chat 1111111.
    let m = message("official_docs/update__message_with_text.json");
    assert_eq!(
        (
            m.kind.as_str(),
            m.text.as_str(),
            m.contact.external_id.as_str()
        ),
        ("command", "/start", "1111111")
    );
    assert_eq!(
        m.contact.display_name.as_deref(),
        Some("Test Test Lastname")
    );
    let m = message("official_docs/update__callback_query.json");
    assert_eq!(
        (m.kind.as_str(), m.text.as_str()),
        ("button_reply", "Data from button callback")
    );
    assert_eq!(m.attachments[0].kind, "callback_query");
    assert_eq!(m.attachments[0].reference, "4382bfdwdsb323b2d9");
    let m = message("official_docs/update__edited_message.json");
    assert_eq!(
        (m.kind.as_str(), m.reply_to.as_deref()),
        ("edit", Some("1365"))
    );
    let m = message("official_docs/update__voice_message.json");
    assert_eq!(m.kind, "voice");
    assert!(!m.attachments[0].reference.is_empty());
    let m = message("official_docs/update__message_with_a_document.json");
    assert_eq!(m.kind, "document");
    let m = message("official_docs/update__message_with_a_reply.json");
    assert!(m.reply_to.is_some());
    assert!(matches!(
        event("official_docs/update__inline_query.json"),
        InboundEvent::Notice { ref topic, .. } if topic == "inline_query"
    ));
}

#[test]
fn media_and_places_become_attachment_references() {
    let m = message("illemius_telegram_types_2017/message_with_photo.json");
    assert_eq!(m.kind, "image");
    assert_eq!(m.attachments.len(), 1, "one photo, its largest size");
    assert!(!m.text.is_empty(), "the caption is the text");
    for (file, kind) in [
        (
            "illemius_telegram_types_2017/message_with_audio.json",
            "audio",
        ),
        (
            "illemius_telegram_types_2017/message_with_voice.json",
            "voice",
        ),
        (
            "illemius_telegram_types_2017/message_with_video.json",
            "video",
        ),
        (
            "illemius_telegram_types_2017/message_with_document.json",
            "document",
        ),
        (
            "illemius_telegram_types_2017/message_with_sticker.json",
            "sticker",
        ),
    ] {
        let m = message(file);
        assert_eq!(m.kind, kind, "{file}");
        assert_eq!(m.attachments[0].kind, kind, "{file}");
    }
    let m = message("illemius_telegram_types_2017/message_with_location.json");
    assert_eq!(m.kind, "location");
    assert_eq!(m.attachments[0].reference, "55.693416,37.624605");
    assert_eq!(
        message("illemius_telegram_types_2017/message_with_successful_payment.json").kind,
        "system"
    );
    assert_eq!(
        message("illemius_telegram_types_2017/message_with_game.json").kind,
        "game"
    );
}

#[test]
fn groups_commands_reactions_and_membership() {
    // A supergroup `/report` command with a bot_command entity, in a forum topic.
    let m = message("teloxide/update__issue_1107_2.json");
    assert_eq!(m.kind, "command");
    assert!(m.text.starts_with("/report"), "{}", m.text);
    assert!(
        m.contact.external_id.starts_with('-'),
        "the group is the contact"
    );
    // A story forwarded into a group nobody addressed the bot in.
    assert_eq!(
        message("teloxide/update__issue_1107.json").kind,
        "unaddressed"
    );
    assert_eq!(
        message("teloxide/update__pinned_message_works.json").kind,
        "system"
    );
    let m = message("teloxide/update__message_reaction_updated.json");
    assert_eq!(
        (m.kind.as_str(), m.text.as_str(), m.reply_to.as_deref()),
        ("reaction", "🌭", Some("35"))
    );
    // The bot (id 1, @unBot) was blocked in a private chat.
    assert!(matches!(
        event("teloxide/update__issue_523.json"),
        InboundEvent::Reachability {
            reachable: false,
            ..
        }
    ));
    assert!(matches!(
        event("teloxide/update__new_update_kind_error.json"),
        InboundEvent::Notice { ref topic, .. } if topic == "new_update_kind"
    ));
}

#[test]
fn a_get_updates_envelope_with_broken_updates_keeps_the_good_ones() {
    let body = fixtures()
        .into_iter()
        .find(|(n, _)| n == "teloxide/request__update_err.json")
        .expect("fixture")
        .1;
    let envelope: Value = serde_json::from_slice(&body).expect("JSON");
    let updates = envelope["result"].as_array().expect("result");
    let events: Vec<_> = updates
        .iter()
        .map(|u| parse_update(u, BOT).expect("each update has an id"))
        .collect();
    assert_eq!(events.len(), 4);
    // The message with missing fields is surfaced as a notice, not lost and not an error.
    assert!(matches!(&events[3][0], InboundEvent::Notice { topic, .. } if topic == "message"));
}
