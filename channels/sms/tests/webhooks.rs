//! The SMS adapter's inbound side against third-party material (tests/fixtures/README.md):
//! every `X-Twilio-Signature` vector of twilio-python and twilio-node, every captured or
//! documented webhook body, Twilio's keyword lists, and hostile bodies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_channel::{
    DeliveryState, InboundError, InboundEvent, InboundMessage, Secret, StatusUpdate,
};
use switchboard_channel_sms::{SIGNATURE_HEADER, parse_webhook, signature, verify_signature};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

fn events(body: &[u8]) -> Vec<InboundEvent> {
    parse_webhook(body).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(body)))
}

fn message(body: &[u8]) -> InboundMessage {
    match events(body).into_iter().next() {
        Some(InboundEvent::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn malformed(body: &[u8]) -> String {
    match parse_webhook(body) {
        Err(InboundError::Malformed(reason)) => reason,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

// --- Signatures -------------------------------------------------------------------------------

/// A vector's parameters as pairs, repeated names (arrays) in their given order.
fn vector_params(vector: &Value) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (key, value) in vector["params"].as_object().expect("params object") {
        match value {
            Value::Array(values) => {
                for v in values {
                    pairs.push((key.clone(), v.as_str().expect("string").to_owned()));
                }
            }
            v => pairs.push((key.clone(), v.as_str().expect("string").to_owned())),
        }
    }
    pairs
}

#[test]
fn every_twilio_signature_vector_is_decided_as_upstream_expects() {
    let file = json("signatures/twilio_x_twilio_signature.json");
    assert_eq!(
        file["header_name"].as_str().map(str::to_ascii_lowercase),
        Some(SIGNATURE_HEADER.into())
    );
    let token = file["auth_token"].as_str().expect("auth_token");
    let secret = Secret::new(token);
    let (mut positive, mut negative) = (0, 0);
    for vector in file["vectors"].as_array().expect("vectors") {
        let name = vector["name"].as_str().expect("name");
        let params = vector_params(vector);
        // The signing half: the signature of the URL Twilio signed.
        if let (Some(signed), Some(expected)) = (
            vector["signed_url"].as_str(),
            vector["expected_signature"].as_str(),
        ) {
            assert_eq!(
                signature(token, signed, &params),
                expected,
                "{name}: signing"
            );
        }
        // The checking half: the request as it reaches us.
        let body: Vec<u8> = match (
            vector["raw_form_body"].as_str(),
            vector["raw_body"].as_str(),
        ) {
            (Some(raw), _) | (None, Some(raw)) => raw.as_bytes().to_vec(),
            (None, None) => {
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                form(&pairs)
            }
        };
        let provided = vector["expected_signature"]
            .as_str()
            .or_else(|| vector["provided_signature"].as_str());
        let url = vector["request_url"].as_str().expect("request_url");
        let expected_valid = vector["expected_valid"].as_bool().expect("expected_valid");
        let result = verify_signature(Some(&secret), url, provided, &body);
        assert_eq!(result.is_ok(), expected_valid, "{name}: {result:?}");
        if let Err(e) = result {
            assert!(matches!(e, InboundError::Unauthorized(_)), "{name}: {e:?}");
        }
        if expected_valid {
            positive += 1;
            // The same request with another token, or one parameter changed, is refused.
            let other = Secret::new("54321");
            assert!(
                verify_signature(Some(&other), url, provided, &body).is_err(),
                "{name}"
            );
            let mut tampered = body.clone();
            tampered.extend_from_slice(b"&Extra=1");
            if vector["raw_body"].is_null() {
                assert!(
                    verify_signature(Some(&secret), url, provided, &tampered).is_err(),
                    "{name}: tampered"
                );
            } else {
                // A JSON body is bound by its hash.
                assert!(
                    verify_signature(Some(&secret), url, provided, b"{}x").is_err(),
                    "{name}: other body"
                );
            }
            let moved = url.replace("mycompany.com", "evil.example");
            assert!(verify_signature(Some(&secret), &moved, provided, &body).is_err());
        } else {
            negative += 1;
        }
    }
    assert_eq!((positive, negative), (14, 3), "every vector ran");
}

#[test]
fn every_body_hash_vector_binds_a_json_body() {
    let file = json("signatures/twilio_x_twilio_signature.json");
    let token = file["auth_token"].as_str().expect("auth_token");
    let secret = Secret::new(token);
    let vectors = file["body_hash_vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 2);
    for vector in vectors {
        let body = vector["body"].as_str().expect("body").as_bytes();
        let hash = vector["expected_sha256_hex"].as_str().expect("hash");
        let url = format!("https://mycompany.com/hook?bodySHA256={hash}");
        let sig = signature(token, &url, &[]);
        assert!(verify_signature(Some(&secret), &url, Some(&sig), body).is_ok());
        // An uppercase hash is the same hash.
        let upper = format!(
            "https://mycompany.com/hook?bodySHA256={}",
            hash.to_uppercase()
        );
        let sig_upper = signature(token, &upper, &[]);
        assert!(verify_signature(Some(&secret), &upper, Some(&sig_upper), body).is_ok());
        match verify_signature(Some(&secret), &url, Some(&sig), b"{\"other\": 1}") {
            Err(InboundError::Unauthorized(reason)) => {
                assert!(reason.contains("bodySHA256"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_missing_token_or_signature_is_refused_with_the_reason() {
    let body = read("twilio/botbuilder_dotnet/Payload.txt");
    let url = "https://gateway.example/v1/webhooks/sms/abc";
    for (token, sig, needle) in [
        (None, Some("abc="), "auth_token"),
        (Some(Secret::new("")), Some("abc="), "auth_token"),
        (Some(Secret::new("t")), None, "missing"),
        (Some(Secret::new("t")), Some("  "), "missing"),
        (Some(Secret::new("t")), Some("not base64!"), "base64"),
        (Some(Secret::new("t")), Some("AAAA"), "does not match"),
    ] {
        match verify_signature(token.as_ref(), url, sig, &body) {
            Err(InboundError::Unauthorized(reason)) => assert!(reason.contains(needle), "{reason}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    // A real fixture body signed for our URL passes, and the signature is computed over the
    // decoded parameters (the order of the body does not matter).
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let sig = signature("t", url, &pairs);
    let secret = Secret::new("t");
    assert!(verify_signature(Some(&secret), url, Some(&sig), &body).is_ok());
    let mut reversed = pairs.clone();
    reversed.reverse();
    let refs: Vec<(&str, &str)> = reversed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(verify_signature(Some(&secret), url, Some(&sig), &form(&refs)).is_ok());
}

// --- Incoming messages ------------------------------------------------------------------------

#[test]
fn every_fixture_form_parses_into_a_message() {
    let mut count = 0;
    for dir in ["twilio", "twilio/botbuilder_dotnet"] {
        for entry in std::fs::read_dir(fixtures().join(dir)).expect("fixture dir") {
            let path = entry.expect("entry").path();
            let ext = path.extension().and_then(|e| e.to_str());
            if !matches!(ext, Some("txt" | "form")) {
                continue;
            }
            let body = std::fs::read(&path).expect("read");
            let events = parse_webhook(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                matches!(events.first(), Some(InboundEvent::Message(_))),
                "{}: {events:?}",
                path.display()
            );
            count += 1;
        }
    }
    assert_eq!(count, 6);
}

#[test]
fn botbuilder_payloads_keep_sid_sender_text_and_media() {
    let m = message(&read("twilio/botbuilder_dotnet/Payload.txt"));
    assert_eq!(m.provider_id, "SMc56324aa4a31735561b7205472192d68");
    assert_eq!(m.contact.external_id, "+541138050810");
    assert_eq!(m.contact.display_name, None);
    assert_eq!((m.text.as_str(), m.kind.as_str()), ("Hello", "text"));
    assert!(m.attachments.is_empty());

    let m = message(&read("twilio/botbuilder_dotnet/NoMediaPayload.txt"));
    assert_eq!(
        m.provider_id, "SMa56324aa4a31735561b7205472192d68",
        "MessageSid, not SmsSid"
    );
    assert_eq!(m.contact.external_id, "+571138050810");

    // Its media type is not even a MIME type: kept, and a document.
    let m = message(&read("twilio/botbuilder_dotnet/MediaPayload.txt"));
    assert_eq!(
        (m.provider_id.as_str(), m.contact.external_id.as_str()),
        ("3333", "+2222")
    );
    assert_eq!(m.kind, "text", "the body says something");
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].kind, "document");
    assert_eq!(m.attachments[0].reference, "www.contoso.com");
    assert_eq!(m.attachments[0].mime_type.as_deref(), Some("json"));
}

#[test]
fn the_documented_examples_parse_as_documented() {
    let m = message(&read("twilio/derived_sms_from_doc_examples.form"));
    assert_eq!(m.text, "Ahoy! Let's build something amazing.");
    assert_eq!(m.contact.external_id, "+14017122661");
    assert_eq!(m.provider_id, "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");

    let m = message(&read("twilio/derived_mms_from_doc_examples.form"));
    assert_eq!(m.provider_id, "MMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].kind, "image");
    assert_eq!(m.attachments[0].mime_type.as_deref(), Some("image/jpeg"));
    assert!(
        m.attachments[0]
            .reference
            .starts_with("https://api.twilio.com/2010-04-01/Accounts/")
    );

    let events = events(&read("twilio/derived_stop_with_optouttype.form"));
    assert_eq!(events.len(), 2);
    match &events[0] {
        InboundEvent::Message(m) => {
            assert_eq!((m.kind.as_str(), m.text.as_str()), ("opt_out", "STOP"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[1],
        InboundEvent::Subscription {
            external_id: "+14017122661".into(),
            subscribed: false,
            reason: "STOP keyword (Twilio)".into(),
        }
    );
}

/// Every parameter of Twilio's incoming-message doc, with its example value.
fn documented_params() -> Vec<(String, String)> {
    let doc = json("twilio/inbound_sms_webhook_params.json");
    let mut pairs = Vec::new();
    for group in [
        "request_parameters",
        "media_parameters",
        "location_parameters",
        "geographic_parameters",
        "whatsapp_parameters",
    ] {
        for p in doc[group].as_array().expect(group) {
            let name = p["name"].as_str().expect("name").replace("{N}", "0");
            let value = p["example"].as_str().unwrap_or_default().to_owned();
            pairs.push((name, value));
        }
    }
    pairs
}

fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form(&refs)
}

#[test]
fn every_documented_parameter_together_still_makes_one_message() {
    let mut pairs = documented_params();
    // Twilio adds parameters without notice: unknown ones are ignored.
    pairs.push(("SomethingNew".into(), "1".into()));
    pairs.push(("NumMedia".into(), "1".into()));
    pairs.retain(|(k, v)| k != "NumMedia" || v == "1");
    let events = events(&encode(&pairs));
    assert_eq!(events.len(), 1, "{events:?}");
    let InboundEvent::Message(m) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(m.provider_id, "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    assert_eq!(m.contact.external_id, "+14017122661");
    assert_eq!(m.text, "Ahoy! Let's build something amazing.");
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].kind, "image");

    // The deprecated SID names stand in for MessageSid; without any, or without From, the
    // error names what is missing.
    let without = |names: &[&str]| -> Vec<(String, String)> {
        pairs
            .iter()
            .filter(|(k, _)| !names.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(
        message(&encode(&without(&["MessageSid"]))).provider_id,
        "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    );
    let reason = malformed(&encode(&without(&[
        "MessageSid",
        "SmsSid",
        "SmsMessageSid",
    ])));
    assert!(reason.contains("MessageSid"), "{reason}");
    let reason = malformed(&encode(&without(&["From"])));
    assert!(reason.contains("From"), "{reason}");
    let reason = malformed(&encode(&without(&["Body", "SmsStatus"])));
    assert!(reason.contains("Body"), "{reason}");
}

#[test]
fn media_without_text_takes_the_kind_of_the_first_item() {
    for (mime, kind) in [
        ("image/png", "image"),
        ("audio/amr", "audio"),
        ("video/3gpp", "video"),
        ("application/pdf", "document"),
        ("text/vcard", "document"),
    ] {
        let m = message(&form(&[
            ("MessageSid", "MM1"),
            ("From", "+15551230000"),
            ("Body", ""),
            ("NumMedia", "2"),
            ("MediaUrl0", "https://api.twilio.com/m/0"),
            ("MediaContentType0", mime),
            ("MediaUrl1", "https://api.twilio.com/m/1"),
            ("MediaContentType1", "image/gif"),
        ]));
        assert_eq!(m.kind, kind, "{mime}");
        assert_eq!(m.text, "");
        assert_eq!(m.attachments.len(), 2);
        assert_eq!(m.attachments[1].reference, "https://api.twilio.com/m/1");
    }
}

#[test]
fn twilios_keywords_are_whole_body_single_words_in_any_case() {
    let doc = json("twilio/opt_out_keywords.json");
    let lists = &doc["default_keywords_long_code_and_toll_free"];
    let words = |list: &str| -> Vec<String> {
        lists[list]
            .as_array()
            .expect(list)
            .iter()
            .map(|w| w.as_str().expect("word").to_owned())
            .collect()
    };
    let mut opt_out = words("opt_out");
    opt_out.extend(["REVOKE".to_owned(), "OPTOUT".to_owned()]);
    let from = "+15551230000";
    let send = |body: &str| {
        events(&form(&[
            ("MessageSid", "SM1"),
            ("From", from),
            ("Body", body),
        ]))
    };
    for word in &opt_out {
        for body in [
            word.clone(),
            word.to_lowercase(),
            format!("  {}\n", capitalize(word)),
        ] {
            let events = send(&body);
            assert_eq!(events.len(), 2, "{body:?}");
            assert!(
                matches!(&events[0], InboundEvent::Message(m) if m.kind == "opt_out"),
                "{body:?}"
            );
            assert!(
                matches!(&events[1], InboundEvent::Subscription { external_id, subscribed: false, .. } if external_id == from),
                "{body:?}"
            );
        }
    }
    for word in words("opt_in") {
        let events = send(&word.to_lowercase());
        assert!(matches!(&events[0], InboundEvent::Message(m) if m.kind == "opt_in"));
        assert!(matches!(
            &events[1],
            InboundEvent::Subscription {
                subscribed: true,
                ..
            }
        ));
    }
    for word in words("help") {
        let events = send(&word);
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0], InboundEvent::Message(m) if m.kind == "help"));
    }
    // Only single-word messages count (the help page's own examples).
    for body in ["STOP PLEASE", "PLEASE CANCEL", "stop.", "Don't stop", ""] {
        let events = send(body);
        assert_eq!(events.len(), 1, "{body:?}");
        assert!(
            matches!(&events[0], InboundEvent::Message(m) if m.kind == "text"),
            "{body:?}"
        );
    }
    // Advanced Opt-Out says what it was, whatever the words.
    let events = events(&form(&[
        ("MessageSid", "SM2"),
        ("From", from),
        ("Body", "arrêt"),
        ("OptOutType", "STOP"),
    ]));
    assert_eq!(events.len(), 2);
    let events = events_of(&[
        ("MessageSid", "SM3"),
        ("From", from),
        ("Body", "Bitte"),
        ("OptOutType", "START"),
    ]);
    assert!(matches!(
        &events[1],
        InboundEvent::Subscription {
            subscribed: true,
            ..
        }
    ));
    let events = events_of(&[
        ("MessageSid", "SM4"),
        ("From", from),
        ("Body", "stop"),
        ("OptOutType", "HELP"),
    ]);
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], InboundEvent::Message(m) if m.kind == "help"));
}

fn events_of(pairs: &[(&str, &str)]) -> Vec<InboundEvent> {
    events(&form(pairs))
}

fn capitalize(word: &str) -> String {
    let lower = word.to_lowercase();
    let mut chars = lower.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

// --- Status callbacks -------------------------------------------------------------------------

fn callback(status: &str, extra: &[(&str, &str)]) -> Vec<InboundEvent> {
    let mut pairs = vec![
        ("SmsSid", "SM0123"),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", "+15558675310"),
        ("MessageSid", "SM0123"),
        ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("From", "+14017122661"),
        ("ApiVersion", "2010-04-01"),
    ];
    pairs.extend_from_slice(extra);
    events_of(&pairs)
}

fn status(state: DeliveryState, error: Option<&str>) -> InboundEvent {
    InboundEvent::Status(StatusUpdate {
        provider_message_id: "SM0123".into(),
        state,
        recipient: "+15558675310".into(),
        at: None,
        error: error.map(str::to_owned),
    })
}

#[test]
fn status_callbacks_map_to_delivery_states() {
    assert_eq!(
        callback("sent", &[]),
        vec![status(DeliveryState::Sent, None)]
    );
    assert_eq!(
        callback("delivered", &[]),
        vec![status(DeliveryState::Delivered, None)]
    );
    assert_eq!(
        callback("read", &[]),
        vec![status(DeliveryState::Read, None)]
    );
    assert_eq!(
        callback("undelivered", &[("ErrorCode", "30007")]),
        vec![status(DeliveryState::Failed, Some("30007"))]
    );
    assert_eq!(
        callback(
            "failed",
            &[("ErrorCode", "30008"), ("ErrorMessage", "Unknown error")]
        ),
        vec![status(DeliveryState::Failed, Some("30008: Unknown error"))]
    );
    for step in [
        "queued",
        "accepted",
        "sending",
        "scheduled",
        "canceled",
        "receiving",
        "received",
    ] {
        assert_eq!(
            callback(step, &[]),
            vec![InboundEvent::Notice {
                topic: "sms.status".into(),
                detail: format!("{step} SM0123"),
            }],
            "{step}"
        );
    }
    // Only the deprecated name.
    let events = events_of(&[
        ("SmsSid", "SM9"),
        ("SmsStatus", "delivered"),
        ("To", "+1555"),
    ]);
    assert!(matches!(&events[0], InboundEvent::Status(s) if s.provider_message_id == "SM9"));
    let reason = malformed(&form(&[("MessageStatus", "delivered"), ("To", "+1555")]));
    assert!(reason.contains("MessageSid"), "{reason}");
    let reason = malformed(&form(&[
        ("MessageSid", "SM1"),
        ("MessageStatus", "delivered"),
    ]));
    assert!(reason.contains("To"), "{reason}");
}

#[test]
fn error_codes_record_opt_outs_and_unreachable_numbers() {
    let events = callback("undelivered", &[("ErrorCode", "21610")]);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1],
        InboundEvent::Subscription {
            external_id: "+15558675310".into(),
            subscribed: false,
            reason: "Twilio 21610: the recipient replied STOP".into(),
        }
    );
    for code in ["30003", "30005", "30006", "21211", "21614"] {
        let events = callback("failed", &[("ErrorCode", code)]);
        assert_eq!(events.len(), 2, "{code}");
        match &events[1] {
            InboundEvent::Reachability {
                external_id,
                reachable: false,
                reason,
                at: None,
            } => {
                assert_eq!(external_id, "+15558675310");
                assert!(reason.starts_with(&format!("Twilio {code}: ")), "{reason}");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    // A carrier filter (30007) says nothing about the number.
    assert_eq!(callback("undelivered", &[("ErrorCode", "30007")]).len(), 1);
}

// --- Hostile bodies ---------------------------------------------------------------------------

#[test]
fn hostile_bodies_are_refused_or_bounded_quickly() {
    let started = Instant::now();
    let ampersands = vec![b'&'; 1 << 20];
    assert!(malformed(&ampersands).contains("no parameters"));

    let repeated = "Body=x&".repeat(100_000);
    let reason = malformed(repeated.as_bytes());
    assert!(reason.contains("parameters"), "{reason}");

    let huge_count = form(&[
        ("MessageSid", "MM1"),
        ("From", "+1555"),
        ("Body", ""),
        ("NumMedia", "999999999"),
        ("MediaUrl0", "https://api.twilio.com/m/0"),
        ("MediaUrl12", "https://api.twilio.com/m/12"),
    ]);
    let m = message(&huge_count);
    assert_eq!(m.attachments.len(), 1, "at most 10 media are read");
    for garbage in ["-1", "ten", "1e3", "18446744073709551616"] {
        let body = form(&[
            ("MessageSid", "M"),
            ("From", "+1"),
            ("Body", ""),
            ("NumMedia", garbage),
        ]);
        assert!(malformed(&body).contains("NumMedia"), "{garbage}");
    }

    // Bad percent-encoding is taken literally, as browsers do.
    let m = message(b"MessageSid=SM1&From=%2B1555&Body=100%zz%");
    assert_eq!(m.text, "100%zz%");
    assert!(malformed(b"MessageSid=SM1&From=%2B1555&Body=\xff\xfe").contains("UTF-8"));
    assert!(malformed(b"{\"MessageSid\":\"SM1\"}").contains("form-encoded"));
    assert!(malformed(b"<Response/>").contains("form-encoded"));
    assert!(malformed(b"").contains("no parameters"));
    assert!(malformed(b"MessageSid=SM1&From=%2B1&Body=a&Body=b").contains("Body"));
    // The same value twice is the same parameter.
    assert_eq!(message(b"MessageSid=SM1&From=%2B1&Body=a&Body=a").text, "a");
    let lots_of_pairs = (0..50_000)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    assert!(malformed(lots_of_pairs.as_bytes()).contains("parameters"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
