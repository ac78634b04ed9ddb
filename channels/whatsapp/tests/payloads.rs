//! The WhatsApp adapter against real third-party payloads (tests/fixtures/SOURCES.md).

use std::path::{Path, PathBuf};

use serde_json::Value;
use switchboard_channel::{DeliveryState, InboundError, InboundEvent, InboundMessage, Secret};
use switchboard_channel_whatsapp::{parse_webhook, verify_signature, verify_subscription};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn events(name: &str) -> Vec<InboundEvent> {
    parse_webhook(&read(&format!("pywa/{name}.json"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn message(name: &str) -> InboundMessage {
    match events(name).into_iter().next() {
        Some(InboundEvent::Message(m)) => m,
        other => panic!("{name}: expected a message, got {other:?}"),
    }
}

#[test]
fn every_fixture_parses_and_nothing_is_left_out() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixtures().join("pywa")).expect("fixture dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let body = std::fs::read(&path).expect("read");
        let parsed = parse_webhook(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // One event per message, status and non-message change in the payload.
        let raw: Value = serde_json::from_slice(&body).expect("json");
        let mut expected = 0;
        for entry in raw["entry"].as_array().into_iter().flatten() {
            for change in entry["changes"].as_array().into_iter().flatten() {
                if change["field"] == "messages" {
                    expected += change["value"]["messages"].as_array().map_or(0, Vec::len);
                    expected += change["value"]["statuses"].as_array().map_or(0, Vec::len);
                } else {
                    expected += 1;
                }
            }
        }
        assert_eq!(parsed.len(), expected, "{}", path.display());
        count += 1;
    }
    assert!(count >= 70, "only {count} fixtures found");
}

#[test]
fn text_keeps_wamid_sender_name_and_time() {
    let m = message("message__text");
    assert_eq!(m.kind, "text");
    assert!(m.provider_id.starts_with("wamid."), "{}", m.provider_id);
    assert!(!m.text.is_empty());
    assert_eq!(m.contact.display_name.as_deref(), Some("Test Name"));
    assert!(m.sent_at.is_some_and(|t| t > 1_600_000_000));
}

#[test]
fn media_become_references_with_mime_type_and_caption() {
    for (name, kind) in [
        ("message__image", "image"),
        ("message__video", "video"),
        ("message__document", "document"),
        ("message__audio", "audio"),
        ("message__static_sticker", "sticker"),
        ("message__animated_sticker", "sticker"),
        ("message__media_with_url", "image"),
    ] {
        let m = message(name);
        assert_eq!(m.attachments.len(), 1, "{name}");
        let a = &m.attachments[0];
        assert!(!a.reference.is_empty(), "{name}: media id or URL");
        assert!(a.mime_type.is_some(), "{name}: mime type");
        assert!(
            a.kind == kind || (kind == "audio" && a.kind == "voice"),
            "{name}: {}",
            a.kind
        );
    }
    assert_eq!(message("message__voice").kind, "voice");
}

#[test]
fn locations_contacts_and_orders_are_described() {
    let place = message("message__chosen_location");
    assert_eq!(place.kind, "location");
    assert!(place.text.contains("Facebook HQ"), "{}", place.text);
    assert_eq!(place.attachments[0].reference, "37.4611978,-122.2164385");
    assert_eq!(message("message__current_location").kind, "location");

    let cards = message("message__contacts");
    assert_eq!(cards.attachments.len(), 3);
    assert!(cards.text.contains("Chandler Bing"), "{}", cards.text);

    let order = message("message__order");
    assert_eq!(order.kind, "order");
    assert!(order.text.contains("3 item(s)"), "{}", order.text);
    assert_eq!(order.attachments[0].reference, "354160437058781");
}

#[test]
fn buttons_lists_and_flows_carry_what_the_bot_acts_on() {
    let button = message("callback_button__button");
    assert_eq!(button.kind, "button_reply");
    assert!(!button.attachments[0].reference.is_empty(), "button id");
    assert!(button.reply_to.is_some(), "answers one of our messages");

    let list = message("callback_selection__description");
    assert_eq!(list.kind, "list_reply");
    assert_eq!(list.text, "title — description");
    assert_eq!(list.attachments[0].reference, "callback_data");

    for name in [
        "callback_button__quick_reply",
        "callback_button__quick_reply_without_context",
    ] {
        let quick = message(name);
        assert_eq!(quick.kind, "button_reply", "{name}: template quick reply");
        assert!(!quick.text.is_empty(), "{name}");
    }

    let flow = message("flow_completion__completion");
    assert_eq!(flow.kind, "nfm_reply");
    assert!(
        flow.attachments[0].reference.contains("flow_token"),
        "the flow's answers"
    );
}

#[test]
fn reactions_and_their_removal() {
    let r = message("message__reaction");
    assert_eq!(r.kind, "reaction");
    assert!(!r.text.is_empty(), "the emoji");
    assert!(r.reply_to.is_some(), "the message reacted to");
    for name in ["message__unreaction_empty", "message__unreaction_no_emoji"] {
        let removed = message(name);
        assert_eq!(removed.kind, "reaction_removed", "{name}");
        assert!(removed.reply_to.is_some(), "{name}");
    }
}

#[test]
fn referral_system_unsupported_edits_and_revokes_are_kept() {
    let ad = message("message__referral");
    assert_eq!(ad.kind, "text");
    assert!(ad.attachments.iter().any(|a| a.kind == "referral"));

    for name in ["system__identity_change", "system__phone_number_change"] {
        let sys = message(name);
        assert_eq!(sys.kind, "system", "{name}");
        assert!(!sys.text.is_empty(), "{name}");
    }

    for name in ["message__unsupported", "message__unsupported_with_type"] {
        let u = message(name);
        assert_eq!(u.kind, "unsupported", "{name}");
        assert!(
            u.attachments[0]
                .caption
                .as_deref()
                .is_some_and(|c| c.contains("131051")),
            "{name}: {:?}",
            u.attachments
        );
    }

    let edit = message("edited_message__image");
    assert_eq!(edit.kind, "edit");
    assert_eq!(edit.text, "Updated image caption");
    assert!(edit.reply_to.is_some(), "the edited message");
    assert_eq!(message("deleted_message__revoke").kind, "revoke");
}

#[test]
fn statuses_update_delivery_state_with_failure_reasons() {
    for (name, state) in [
        ("message_status__sent", DeliveryState::Sent),
        ("message_status__delivered", DeliveryState::Delivered),
        ("message_status__read", DeliveryState::Read),
        ("message_status__played", DeliveryState::Played),
        ("message_status__failed", DeliveryState::Failed),
    ] {
        let Some(InboundEvent::Status(s)) = events(name).into_iter().next() else {
            panic!("{name}: expected a status");
        };
        assert_eq!(s.state, state, "{name}");
        assert!(!s.provider_message_id.is_empty());
        assert!(s.at.is_some(), "{name}");
    }
    let Some(InboundEvent::Status(failed)) = events("message_status__failed").into_iter().next()
    else {
        panic!("status");
    };
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("130472")),
        "{failed:?}"
    );
}

#[test]
fn other_fields_are_notices_not_messages() {
    for name in [
        "account_update__account_deleted",
        "template_status_update__approved",
    ] {
        assert!(
            matches!(events(name).as_slice(), [InboundEvent::Notice { .. }]),
            "{name}"
        );
    }
}

#[test]
fn several_entries_and_changes_in_one_post_all_come_out_in_order() {
    let parts: Vec<Value> = ["message__text", "message_status__read", "message__image"]
        .iter()
        .map(|n| serde_json::from_slice(&read(&format!("pywa/{n}.json"))).expect("json"))
        .collect();
    let mut combined = parts[0].clone();
    let entries = combined["entry"].as_array_mut().expect("entries");
    entries.push(parts[1]["entry"][0].clone());
    entries[0]["changes"]
        .as_array_mut()
        .expect("changes")
        .push(parts[2]["entry"][0]["changes"][0].clone());
    let body = serde_json::to_vec(&combined).expect("json");
    let kinds: Vec<String> = parse_webhook(&body)
        .expect("parses")
        .into_iter()
        .map(|e| match e {
            InboundEvent::Message(m) => m.kind,
            InboundEvent::Status(s) => format!("{:?}", s.state),
            InboundEvent::Notice { topic, .. } => topic,
            InboundEvent::Reachability { reason, .. } => reason,
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["text", "image", "Read"]);
}

#[test]
fn one_unreadable_item_becomes_a_notice_and_the_rest_still_counts() {
    let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
        "metadata":{"phone_number_id":"1"},
        "messages":[{"type":"text"},{"id":"wamid.ok","from":"1","type":"text","text":{"body":"hi"}}],
        "statuses":[{"id":"wamid.x","status":"deleted"}]}}]}]}"#;
    let events = parse_webhook(body).expect("parses");
    let topics: Vec<String> = events
        .iter()
        .map(|e| match e {
            InboundEvent::Message(m) => format!("message:{}", m.text),
            InboundEvent::Status(s) => format!("status:{:?}", s.state),
            InboundEvent::Notice { topic, .. } => topic.clone(),
            InboundEvent::Reachability { reason, .. } => reason.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        topics,
        ["unreadable_message", "message:hi", "unreadable_status"]
    );
    // Addressed to another number of the same app: nothing of it is this channel's.
    let elsewhere =
        switchboard_channel_whatsapp::parse_webhook_for(body, Some("2")).expect("parses");
    assert!(
        matches!(elsewhere.as_slice(), [InboundEvent::Notice { topic, .. }] if topic == "other_number")
    );
}

#[test]
fn malformed_payloads_are_refused_with_a_reason() {
    for body in [
        &b"not json"[..],
        br#"{"object":"page","entry":[]}"#,
        br#"{"object":"whatsapp_business_account"}"#,
    ] {
        assert!(
            matches!(parse_webhook(body), Err(InboundError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn signature_vector_from_pywa_verifies_over_the_raw_bytes_only() {
    let vector: Value =
        serde_json::from_slice(&read("meta_x_hub_signature_256.json")).expect("vector");
    let secret = Secret::new(vector["app_secret"].as_str().expect("secret"));
    let body = read("meta_x_hub_signature_256.body.bin");
    let header = vector["expected_header"].as_str().expect("header");
    assert_eq!(verify_signature(&secret, Some(header), &body), Ok(()));

    // Re-serialising the JSON changes the bytes: the signature must not survive that.
    let reserialised =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&body).expect("json")).expect("json");
    if reserialised != body {
        assert!(verify_signature(&secret, Some(header), &reserialised).is_err());
    }
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    for (h, b) in [
        (Some(header), &tampered[..]),
        (None, &body[..]),
        (Some("sha1=00"), &body[..]),
        (Some("sha256=zz"), &body[..]),
        (Some("sha256=54edfa1d"), &body[..]),
    ] {
        assert!(
            matches!(
                verify_signature(&secret, h, b),
                Err(InboundError::Unauthorized(_))
            ),
            "{h:?}"
        );
    }
    assert!(verify_signature(&Secret::new("other"), Some(header), &body).is_err());
}

#[test]
fn subscription_handshake_echoes_the_challenge_only_for_the_right_token() {
    let vector: Value =
        serde_json::from_slice(&read("meta_webhook_verify_get.json")).expect("vector");
    let token = Secret::new(vector["configured_verify_token"].as_str().expect("token"));
    let query = |q: &str| -> Vec<(String, String)> {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let answer = |q: &str| {
        let params = query(q);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        verify_subscription(
            get("hub.mode"),
            get("hub.verify_token"),
            get("hub.challenge"),
            &token,
        )
    };
    let request = vector["request"].as_str().expect("request");
    let (_, q) = request.split_once('?').expect("query");
    assert_eq!(
        answer(q).as_deref(),
        vector["expected_response"]["body"].as_str()
    );
    for case in vector["negative_cases"].as_array().expect("negatives") {
        assert_eq!(answer(case["request_query"].as_str().expect("query")), None);
    }
    assert_eq!(
        answer("hub.mode=subscribe&hub.challenge=1"),
        None,
        "no token"
    );
}
