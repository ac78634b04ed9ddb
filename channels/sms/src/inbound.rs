//! Inbound: the `X-Twilio-Signature` check and the webhook POST.
//!
//! One URL takes both kinds of Twilio request: an incoming message (`Body`, `From`, media) and
//! the status callbacks of the messages we sent (`MessageStatus`, `ErrorCode`). Both are
//! `application/x-www-form-urlencoded`; Twilio signs the URL it was configured with plus the
//! sorted parameters with the account's auth token (HMAC-SHA1). The URL must come from our
//! configuration, never from the request's `Host` or forwarding headers, or a forger could choose
//! what is signed.
//!
//! Twilio delivers at least once: every message keeps its `MessageSid` as the provider id the
//! core deduplicates on. STOP and START replies become [`InboundEvent::Subscription`]s as well
//! as messages, so the opt-out is recorded even when the bot says nothing.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_channel::{
    Attachment, ContactRef, DeliveryState, InboundError, InboundEvent, InboundMessage, Secret,
    StatusUpdate,
};

/// The header carrying `base64(HMAC-SHA1(auth token, URL + sorted parameters))`.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The query parameter Twilio adds to the URL of a JSON request: the hex SHA-256 of the body.
pub const BODY_HASH_PARAM: &str = "bodySHA256";

/// Media items read from one message (Twilio's MMS limit); a larger `NumMedia` reads this many.
pub const MAX_MEDIA: usize = 10;

/// Parameters accepted in one webhook; Twilio sends a few dozen.
pub const MAX_PARAMS: usize = 1000;

/// Twilio's signature of a request: `base64(HMAC-SHA1(auth_token, url + k1 v1 k2 v2 …))` with the
/// parameters sorted by name, a repeated name's values sorted, and exact duplicates counted
/// once (as twilio-python's `RequestValidator` does). `url` is signed exactly as given.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    BASE64.encode(mac(auth_token, url, &signed_params(params)))
}

/// The parameters as Twilio signs them: sorted, duplicates once, names and values run together.
fn signed_params(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = String::new();
    for (key, value) in sorted {
        out.push_str(key);
        out.push_str(value);
    }
    out
}

fn mac(auth_token: &str, url: &str, params: &str) -> Vec<u8> {
    // HMAC takes a key of any length: this never fails.
    match <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes()) {
        Ok(mut mac) => {
            mac.update(url.as_bytes());
            mac.update(params.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Checks `X-Twilio-Signature` in constant time.
///
/// `url` is the full URL Twilio requested, as configured at Twilio (scheme, host, path and the
/// request's query string) — built from our configuration, never from request headers. Like
/// Twilio's own validators, the URL is also tried with the port removed or the default port
/// added (Twilio signs either way), and in its WHATWG-normalised form (twilio-node signs
/// `'` in a query as `%27`). A form body is decoded and its parameters signed; a JSON body is
/// signed through the `bodySHA256` query parameter, which must be the SHA-256 of the body.
pub fn verify_signature(
    auth_token: Option<&Secret>,
    url: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), InboundError> {
    let token = auth_token
        .filter(|t| !t.expose().is_empty())
        .ok_or_else(|| {
            InboundError::Unauthorized(
                "no auth_token is configured: Twilio signs webhooks with the account's auth token"
                    .into(),
            )
        })?;
    let signature = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| InboundError::Unauthorized("missing X-Twilio-Signature".into()))?;
    let provided = BASE64
        .decode(signature)
        .map_err(|_| InboundError::Unauthorized("X-Twilio-Signature is not base64".into()))?;
    let params = match query_param(url, BODY_HASH_PARAM) {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(body));
            let expected = expected.to_ascii_lowercase();
            if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(InboundError::Unauthorized(
                    "the body does not match bodySHA256".into(),
                ));
            }
            // The hash stands for the body: the URL alone is signed.
            String::new()
        }
        None => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            signed_params(&pairs)
        }
    };
    let mut matched = false;
    for candidate in candidate_urls(url) {
        let expected = mac(token.expose(), &candidate, &params);
        matched |= bool::from(expected.ct_eq(&provided));
    }
    if matched {
        Ok(())
    } else {
        Err(InboundError::Unauthorized(
            "X-Twilio-Signature does not match the URL and body".into(),
        ))
    }
}

/// The first value of `name` in the query string of `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The spellings of `url` Twilio may have signed: as given and WHATWG-normalised, each with
/// and without its port.
fn candidate_urls(url: &str) -> Vec<String> {
    let mut bases = vec![url.to_owned()];
    if let Ok(parsed) = reqwest::Url::parse(url)
        && parsed.as_str() != url
    {
        bases.push(parsed.as_str().to_owned());
    }
    let mut out = Vec::new();
    for base in bases {
        for candidate in [base.clone(), with_port(&base), without_port(&base)] {
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    }
    out
}

/// `(start, end)` byte range of the `host[:port]` part of the authority, and where the port's
/// `:` is, if there is one.
fn host_port(url: &str) -> Option<(usize, usize, Option<usize>)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_end = authority_start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &url[authority_start..authority_end];
    let host_start = authority_start + authority.rfind('@').map_or(0, |at| at + 1);
    let host = &url[host_start..authority_end];
    // An IPv6 literal has colons of its own: the port comes after `]`.
    let after_bracket = host.rfind(']').map_or(0, |b| b + 1);
    let port = host[after_bracket..]
        .rfind(':')
        .map(|colon| host_start + after_bracket + colon)
        .filter(|&colon| {
            url[colon + 1..authority_end]
                .bytes()
                .all(|b| b.is_ascii_digit())
        });
    Some((host_start, authority_end, port))
}

/// `url` with the scheme's default port added when it has no port.
fn with_port(url: &str) -> String {
    let Some((_, end, None)) = host_port(url) else {
        return url.to_owned();
    };
    let port = if url.starts_with("https:") { 443 } else { 80 };
    format!("{}:{port}{}", &url[..end], &url[end..])
}

/// `url` without its port.
fn without_port(url: &str) -> String {
    match host_port(url) {
        Some((_, end, Some(colon))) => format!("{}{}", &url[..colon], &url[end..]),
        _ => url.to_owned(),
    }
}

/// A webhook's parameters: each name once (a name repeated with another value is refused).
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(body: &[u8]) -> Result<Params, InboundError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| InboundError::Malformed("the body is not UTF-8 text".into()))?;
        if text.trim_start().starts_with(['{', '[', '<']) {
            return Err(InboundError::Malformed(
                "the body is not form-encoded (Twilio posts application/x-www-form-urlencoded)"
                    .into(),
            ));
        }
        let mut params = BTreeMap::new();
        for (count, (key, value)) in form_urlencoded::parse(body).enumerate() {
            if count == MAX_PARAMS {
                return Err(InboundError::Malformed(format!(
                    "more than {MAX_PARAMS} parameters"
                )));
            }
            match params.entry(key.into_owned()) {
                Entry::Vacant(slot) => {
                    slot.insert(value.into_owned());
                }
                Entry::Occupied(seen) if *seen.get() != value => {
                    return Err(InboundError::Malformed(format!(
                        "{} is given twice with different values",
                        seen.key()
                    )));
                }
                Entry::Occupied(_) => {}
            }
        }
        if params.is_empty() {
            return Err(InboundError::Malformed("the body has no parameters".into()));
        }
        Ok(Params(params))
    }

    /// The value of a parameter that is present, maybe empty.
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The trimmed value of a parameter that is present and not blank.
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// The message's SID, under its current name or the deprecated ones.
    fn message_sid(&self) -> Option<&str> {
        self.value("MessageSid")
            .or_else(|| self.value("SmsSid"))
            .or_else(|| self.value("SmsMessageSid"))
    }
}

/// Parses a webhook POST body (already verified): an incoming message, or a status callback of
/// a message we sent, into normalized events.
///
/// - A message gives [`InboundEvent::Message`]; a STOP-type reply adds an
///   [`InboundEvent::Subscription`] (unsubscribed) after it, a START-type reply a subscribed one.
/// - A status callback gives [`InboundEvent::Status`] for sent, delivered, read, undelivered and
///   failed, a `sms.status` [`InboundEvent::Notice`] for the steps before (queued, sending, …);
///   error 21610 adds an unsubscription, errors that mean the number cannot take SMS an
///   [`InboundEvent::Reachability`].
pub fn parse_webhook(body: &[u8]) -> Result<Vec<InboundEvent>, InboundError> {
    let params = Params::parse(body)?;
    let status = params
        .value("MessageStatus")
        .or_else(|| params.value("SmsStatus"));
    let has_body = params.get("Body").is_some();
    match status {
        Some(status) if !has_body || !status.eq_ignore_ascii_case("received") => {
            status_events(&params, status)
        }
        _ if has_body => message_events(&params),
        _ => Err(InboundError::Malformed(
            "neither Body (an incoming message) nor MessageStatus (a status callback)".into(),
        )),
    }
}

/// What a reply asks of the sender, by Twilio's keyword rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    OptOut,
    OptIn,
    Help,
}

/// Twilio's default keywords (long codes and toll-free numbers), plus the opt-out words the
/// FCC's 2025 revocation rules added.
const OPT_OUT_WORDS: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
const OPT_IN_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];
const HELP_WORDS: [&str; 2] = ["HELP", "INFO"];

/// The keyword a message is: Twilio's `OptOutType` when it sends one (Advanced Opt-Out, where
/// the tenant chose the words), else the whole body, trimmed, case-insensitive, one word.
fn keyword(params: &Params, text: &str) -> Option<Keyword> {
    if let Some(kind) = params.value("OptOutType") {
        return match kind.to_ascii_uppercase().as_str() {
            "STOP" => Some(Keyword::OptOut),
            "START" => Some(Keyword::OptIn),
            "HELP" => Some(Keyword::Help),
            _ => None,
        };
    }
    let word = text.trim().to_ascii_uppercase();
    if OPT_OUT_WORDS.contains(&word.as_str()) {
        Some(Keyword::OptOut)
    } else if OPT_IN_WORDS.contains(&word.as_str()) {
        Some(Keyword::OptIn)
    } else if HELP_WORDS.contains(&word.as_str()) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// `image`, `audio`, `video` or `document`, by MIME type.
fn media_kind(mime: Option<&str>) -> &'static str {
    let mime = mime.unwrap_or_default().to_ascii_lowercase();
    match mime.split('/').next() {
        Some("image") => "image",
        Some("audio") => "audio",
        Some("video") => "video",
        _ => "document",
    }
}

fn message_events(params: &Params) -> Result<Vec<InboundEvent>, InboundError> {
    let sid = params
        .message_sid()
        .ok_or_else(|| InboundError::Malformed("message without MessageSid".into()))?;
    let from = params
        .value("From")
        .ok_or_else(|| InboundError::Malformed("message without From".into()))?;
    let text = params.get("Body").unwrap_or_default();
    let media = match params.value("NumMedia") {
        None => 0,
        Some(n) => n
            .parse::<u64>()
            .map_err(|_| InboundError::Malformed(format!("NumMedia {n:?} is not a count")))?,
    };
    let media = usize::try_from(media).unwrap_or(MAX_MEDIA).min(MAX_MEDIA);
    let mut attachments = Vec::new();
    for i in 0..media {
        // Media URLs need the account's Basic auth to download: the reference is the URL.
        let Some(url) = params.value(&format!("MediaUrl{i}")) else {
            continue;
        };
        let mime = params.value(&format!("MediaContentType{i}"));
        attachments.push(Attachment {
            kind: media_kind(mime).to_owned(),
            reference: url.to_owned(),
            mime_type: mime.map(str::to_owned),
            caption: None,
        });
    }
    let keyword = keyword(params, text);
    let kind = match keyword {
        Some(Keyword::OptOut) => "opt_out",
        Some(Keyword::OptIn) => "opt_in",
        Some(Keyword::Help) => "help",
        None => match attachments.first() {
            Some(first) if text.trim().is_empty() => first.kind.as_str(),
            _ => "text",
        },
    }
    .to_owned();
    let mut message = InboundMessage::text(
        sid,
        ContactRef {
            external_id: from.to_owned(),
            display_name: None,
        },
        text,
    );
    message.kind = kind;
    message.attachments = attachments;
    // WhatsApp through Twilio names the message a reply quotes.
    message.reply_to = params.value("OriginalRepliedMessageSid").map(str::to_owned);
    let mut events = vec![InboundEvent::Message(message)];
    match keyword {
        Some(Keyword::OptOut) => events.push(InboundEvent::Subscription {
            external_id: from.to_owned(),
            subscribed: false,
            reason: "STOP keyword (Twilio)".into(),
        }),
        Some(Keyword::OptIn) => events.push(InboundEvent::Subscription {
            external_id: from.to_owned(),
            subscribed: true,
            reason: "START keyword (Twilio)".into(),
        }),
        _ => {}
    }
    Ok(events)
}

/// Twilio error codes that say the number cannot take SMS, with what they mean.
const UNREACHABLE_CODES: [(&str, &str); 5] = [
    ("30003", "unreachable destination handset"),
    ("30005", "unknown destination handset"),
    ("30006", "landline or unreachable carrier"),
    ("21211", "invalid 'To' phone number"),
    ("21614", "'To' number is not a mobile number"),
];

fn status_events(params: &Params, status: &str) -> Result<Vec<InboundEvent>, InboundError> {
    let sid = params
        .message_sid()
        .ok_or_else(|| InboundError::Malformed("status callback without MessageSid".into()))?;
    let to = params
        .value("To")
        .ok_or_else(|| InboundError::Malformed("status callback without To".into()))?;
    let status = status.to_ascii_lowercase();
    let state = match status.as_str() {
        "sent" => Some(DeliveryState::Sent),
        "delivered" => Some(DeliveryState::Delivered),
        "read" => Some(DeliveryState::Read),
        "undelivered" | "failed" => Some(DeliveryState::Failed),
        // queued, accepted, scheduled, sending, canceled, receiving, received, and any status
        // Twilio adds later: recorded, no state change.
        _ => None,
    };
    let code = params.value("ErrorCode");
    let mut events = vec![match state {
        Some(state) => InboundEvent::Status(StatusUpdate {
            provider_message_id: sid.to_owned(),
            state,
            recipient: to.to_owned(),
            at: None,
            error: (state == DeliveryState::Failed)
                .then(|| match (code, params.value("ErrorMessage")) {
                    (Some(code), Some(message)) => Some(format!("{code}: {message}")),
                    (Some(code), None) => Some(code.to_owned()),
                    (None, message) => message.map(str::to_owned),
                })
                .flatten(),
        }),
        None => InboundEvent::Notice {
            topic: "sms.status".into(),
            detail: format!("{status} {sid}"),
        },
    }];
    if code == Some("21610") {
        events.push(InboundEvent::Subscription {
            external_id: to.to_owned(),
            subscribed: false,
            reason: "Twilio 21610: the recipient replied STOP".into(),
        });
    }
    if let Some((code, meaning)) = UNREACHABLE_CODES.iter().find(|(c, _)| Some(*c) == code) {
        events.push(InboundEvent::Reachability {
            external_id: to.to_owned(),
            reachable: false,
            reason: format!("Twilio {code}: {meaning}"),
            at: None,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_added_and_removed_after_the_host() {
        assert_eq!(with_port("https://a.com/x?y=1"), "https://a.com:443/x?y=1");
        assert_eq!(with_port("http://a.com"), "http://a.com:80");
        assert_eq!(with_port("https://a.com:8443/x"), "https://a.com:8443/x");
        assert_eq!(
            with_port("https://u:p@a.com/x"),
            "https://u:p@a.com:443/x",
            "credentials are not a port"
        );
        assert_eq!(without_port("https://a.com:1234/x"), "https://a.com/x");
        assert_eq!(without_port("https://u:p@a.com/x"), "https://u:p@a.com/x");
        assert_eq!(without_port("http://[::1]:8080/x"), "http://[::1]/x");
        assert_eq!(with_port("http://[::1]/x"), "http://[::1]:80/x");
        assert_eq!(without_port("not a url"), "not a url");
    }

    #[test]
    fn keywords_follow_twilios_rules() {
        let params = |pairs: &[(&str, &str)]| {
            Params(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let none = params(&[]);
        assert_eq!(keyword(&none, " sToP \n"), Some(Keyword::OptOut));
        assert_eq!(keyword(&none, "optout"), Some(Keyword::OptOut));
        assert_eq!(keyword(&none, "unstop"), Some(Keyword::OptIn));
        assert_eq!(keyword(&none, "Info"), Some(Keyword::Help));
        assert_eq!(keyword(&none, "STOP PLEASE"), None);
        assert_eq!(keyword(&none, "please cancel"), None);
        // Advanced Opt-Out decides when present, whatever the words.
        let custom = params(&[("OptOutType", "STOP")]);
        assert_eq!(keyword(&custom, "basta"), Some(Keyword::OptOut));
        let other = params(&[("OptOutType", "SOMETHING")]);
        assert_eq!(keyword(&other, "stop"), None);
    }
}
