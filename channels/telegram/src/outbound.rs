//! Outbound: replies and the calls around a conversation, through the Bot API with
//! `teloxide-core`.
//!
//! - Text is sent with `parse_mode=HTML`: everything is escaped (`&`, `<`, `>`), then `**bold**`
//!   and `` `code` `` become tags, so nothing a model or an agent writes can break the markup.
//!   If Telegram still refuses the entities, the chunk goes again as plain text.
//! - Longer than 4,096 characters (UTF-16 units, as Telegram counts) → several messages in order,
//!   cut at a paragraph, line or word break where there is one.
//! - Buttons become an inline keyboard on the last message; a list becomes one button per row.
//! - The Bot API's answers decide what the outbox does: `retry_after` → wait that long; network
//!   trouble and 5xx → back off and retry; a blocked bot, a missing chat or a bad request → a
//!   dead letter with Telegram's reason. A group that became a supergroup is sent to its new id.
//!
//! Telegram has no idempotency key: a crash between Telegram's answer and our record of it means
//! one repeat after the lease (documented in docs/ARCHITECTURE.md).
//!
//! Text and the typing action — the calls every answer makes — go out through our own reqwest
//! client with a small answer type that reads `message_id` and skips the rest, instead of
//! teloxide's request path (a `Bot` built per call, its untagged answer buffered whole, the full
//! `Message` type with its flattened kinds, a second HTTP client's pool). Telegram's refusals are
//! still read by teloxide's types (`ApiError` from the description, `ResponseParameters`), so both
//! paths classify them the same way. Media, callbacks and the webhook calls stay on teloxide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_channel::egress::EgressPolicy;
use switchboard_channel::{Content, OutboundMessage, Receipt, SendError};
use teloxide_core::Bot;
use teloxide_core::errors::{ApiError, RequestError};
use teloxide_core::payloads::{
    SendAnimationSetters, SendAudioSetters, SendDocumentSetters, SendPhotoSetters,
    SendStickerSetters, SendVideoSetters, SendVoiceSetters, SetWebhookSetters,
};
use teloxide_core::prelude::Requester;
use teloxide_core::types::{
    AllowedUpdate, CallbackQueryId, ChatId, FileId, InlineKeyboardButton, InlineKeyboardMarkup,
    InputFile, Message, ParseMode, ReplyMarkup, ResponseParameters,
};

use crate::config::TelegramConfig;

/// Longest message text, in UTF-16 code units.
pub const MAX_TEXT_UNITS: usize = 4096;
/// Longest media caption, in UTF-16 code units.
pub const MAX_CAPTION_UNITS: usize = 1024;
/// Longest `callback_data`, in bytes.
pub const MAX_CALLBACK_DATA: usize = 64;

/// The updates we ask Telegram for (webhook and polling alike).
pub const ALLOWED_UPDATES: [AllowedUpdate; 5] = [
    AllowedUpdate::Message,
    AllowedUpdate::EditedMessage,
    AllowedUpdate::CallbackQuery,
    AllowedUpdate::MyChatMember,
    AllowedUpdate::MessageReaction,
];

#[derive(Debug, Clone)]
pub struct TelegramSender {
    /// A bot without a token, holding teloxide's HTTP client (teloxide brings its own reqwest);
    /// every channel's bot shares that client.
    proto: Bot,
    /// Our HTTP client, for `getUpdates` (raw JSON through the same lenient parser as webhooks).
    http: reqwest::Client,
    /// Method URLs already parsed (see [`TelegramSender::post`]), by their text.
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Parsed method URLs kept at most (a few per bot); past it the map starts again.
const MAX_PARSED_URLS: usize = 1024;

fn bot(proto: &Bot, config: &TelegramConfig) -> Result<Bot, String> {
    let mut url = reqwest::Url::parse(config.api_url.trim_end_matches('/'))
        .map_err(|e| format!("api_url: {e}"))?;
    // teloxide appends `bot<token>/<method>` as path segments: a bare host's empty segment
    // would make that `//bot…`.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
    }
    Ok(Bot::with_client(config.bot_token.expose(), proto.client().clone()).set_api_url(url))
}

fn chat_id(to: &str) -> Result<ChatId, SendError> {
    to.parse::<i64>()
        .map(ChatId)
        .map_err(|_| SendError::Permanent(format!("{to:?} is not a Telegram chat id")))
}

/// Removes the bot token from an error's text: a proxy or self-hosted Bot API in front of
/// `api_url` may echo the request path (`/bot<token>/…`) in its error page.
pub fn scrub(error: SendError, config: &TelegramConfig) -> SendError {
    let token = config.bot_token.expose();
    let clean = |s: String| {
        if token.is_empty() {
            s
        } else {
            s.replace(token, "[bot token]")
        }
    };
    match error {
        SendError::RetryAfter(wait, m) => SendError::RetryAfter(wait, clean(m)),
        SendError::Transient(m) => SendError::Transient(clean(m)),
        SendError::Permanent(m) => SendError::Permanent(clean(m)),
        SendError::Unreachable(m) => SendError::Unreachable(clean(m)),
        SendError::OptedOut(m) => SendError::OptedOut(clean(m)),
        SendError::Partial { parts_sent, error } => SendError::Partial {
            parts_sent,
            error: Box::new(scrub(*error, config)),
        },
    }
}

/// What the outbox should do about a Bot API error.
pub fn classify(e: RequestError) -> SendError {
    match e {
        RequestError::RetryAfter(wait) => {
            SendError::RetryAfter(wait.duration(), "Telegram: too many requests".into())
        }
        RequestError::MigrateToChatId(id) => {
            SendError::Transient(format!("Telegram: the group moved to {id}"))
        }
        // (the URL holds the token: `scrub` removes it from what this says)
        RequestError::Network(e) => SendError::Transient(format!(
            "Bot API request failed: {}",
            switchboard_channel::egress::describe_chain(e.as_ref())
        )),
        // The body itself is never repeated: `api_url` is the tenant's, and what a server
        // there answered is not for the tenant to read through us.
        RequestError::InvalidJson { source, raw } => SendError::Transient(format!(
            "Bot API answered {} bytes that are not its JSON ({})",
            raw.len(),
            source.classify_name()
        )),
        RequestError::Io(e) => SendError::Transient(format!("Bot API I/O: {e}")),
        // teloxide keeps the description, not the HTTP code: 4xx descriptions are Telegram's
        // "Bad Request: …", "Forbidden: …", "Unauthorized", "Not Found"; anything else
        // ("Internal Server Error", "Bad Gateway", …) may pass.
        RequestError::Api(ApiError::Unknown(description)) => {
            let final_ = [
                "Bad Request",
                "Forbidden",
                "Unauthorized",
                "Not Found",
                "Conflict",
            ]
            .iter()
            .any(|p| description.starts_with(p));
            if final_ {
                SendError::Permanent(format!("Telegram: {description}"))
            } else {
                SendError::Transient(format!("Telegram: {description}"))
            }
        }
        RequestError::Api(e) => SendError::Permanent(format!("Telegram: {e}")),
    }
}

/// Why a Bot API call failed: Telegram's refusal, kept whole (a migrated group and refused
/// markup are acted on, not reported), or the outbox's verdict on anything else.
#[derive(Debug)]
enum Failure {
    Api(RequestError),
    Other(SendError),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        Failure::Api(e)
    }
}

impl Failure {
    fn verdict(self) -> SendError {
        match self {
            Failure::Api(e) => classify(e),
            Failure::Other(e) => e,
        }
    }
}

/// Largest Bot API answer read (a sent message comes back whole: text, entities, keyboard).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A Bot API answer: `{"ok":true,"result":…}` or `{"ok":false,"description":…,"parameters":…}`.
#[derive(Deserialize)]
struct Answer<R> {
    ok: bool,
    result: Option<R>,
    description: Option<ApiError>,
    parameters: Option<ResponseParameters>,
}

/// The part of a sent `Message` a receipt needs.
#[derive(Debug, Deserialize)]
struct Sent {
    message_id: i64,
}

/// Reads a Bot API answer, whatever the HTTP status (Telegram's errors are JSON with 4xx/5xx).
fn answer<R: DeserializeOwned>(body: &[u8], status: u16) -> Result<R, Failure> {
    let Ok(answer) = serde_json::from_slice::<Answer<R>>(body) else {
        // Never repeated: what a server at `api_url` answered is not the tenant's to read.
        return Err(Failure::Other(SendError::Transient(format!(
            "Bot API answered HTTP {status} with {} bytes that are not its JSON",
            body.len()
        ))));
    };
    match answer {
        Answer {
            ok: true,
            result: Some(result),
            ..
        } => Ok(result),
        Answer { ok: true, .. } => Err(Failure::Other(SendError::Transient(format!(
            "Bot API answered HTTP {status} ok without a result"
        )))),
        Answer {
            parameters: Some(ResponseParameters::RetryAfter(wait)),
            ..
        } => Err(RequestError::RetryAfter(wait).into()),
        Answer {
            parameters: Some(ResponseParameters::MigrateToChatId(to)),
            ..
        } => Err(RequestError::MigrateToChatId(to).into()),
        Answer {
            description: Some(e),
            ..
        } => Err(RequestError::Api(e).into()),
        Answer { .. } => Err(RequestError::Api(ApiError::Unknown(format!(
            "HTTP {status} without a description"
        )))
        .into()),
    }
}

/// Escapes text for `parse_mode=HTML`, then turns `` `code` `` and `**bold**` into tags.
pub fn to_html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    // Code spans first: nothing inside them is markup. An unmatched backtick stays one.
    let parts: Vec<&str> = escaped.split('`').collect();
    let paired = (parts.len() - 1) / 2 * 2;
    let mut out = String::with_capacity(escaped.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        if i > paired {
            out.push('`');
        }
        if i % 2 == 1 && i <= paired {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(&bold(part));
        }
    }
    out
}

fn bold(text: &str) -> String {
    let pieces: Vec<&str> = text.split("**").collect();
    if pieces.len() < 3 {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let pairs = (pieces.len() - 1) / 2;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            let opening = i % 2 == 1;
            if i.div_ceil(2) <= pairs {
                out.push_str(if opening { "<b>" } else { "</b>" });
            } else {
                out.push_str("**");
            }
        }
        out.push_str(piece);
    }
    out
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Splits text into pieces of at most `max` UTF-16 units, preferring paragraph, line and word
/// breaks in the last quarter of each piece.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while utf16_len(rest) > max {
        // The byte offset where `max` units end.
        let mut units = 0;
        let mut hard = rest.len();
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > max {
                hard = i;
                break;
            }
            units += c.len_utf16();
        }
        let window = &rest[..hard];
        let floor = hard * 3 / 4;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&at| at >= floor && at > 0))
            .unwrap_or(hard);
        pieces.push(rest[..cut].trim_end().to_owned());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_owned());
    }
    pieces
}

/// The inline keyboard for a message's buttons or list, if it has any.
fn keyboard(content: &Content) -> Result<Option<InlineKeyboardMarkup>, SendError> {
    let mut rows: Vec<Vec<InlineKeyboardButton>> = Vec::new();
    let button = |id: &str,
                  title: &str,
                  url: Option<&str>|
     -> Result<InlineKeyboardButton, SendError> {
        match url {
            Some(url) => {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| SendError::Permanent(format!("button url {url:?}: {e}")))?;
                Ok(InlineKeyboardButton::url(title, url))
            }
            None if id.len() > MAX_CALLBACK_DATA => Err(SendError::Permanent(format!(
                "button id {id:?} is longer than Telegram's {MAX_CALLBACK_DATA} bytes of callback data"
            ))),
            None => Ok(InlineKeyboardButton::callback(title, id)),
        }
    };
    // Up to three buttons side by side, then a new row.
    for chunk in content.buttons.chunks(3) {
        rows.push(
            chunk
                .iter()
                .map(|b| button(&b.id, &b.title, b.url.as_deref()))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(list) = &content.list {
        for row in list.sections.iter().flat_map(|s| &s.rows) {
            rows.push(vec![button(&row.id, &row.title, None)?]);
        }
    }
    Ok((!rows.is_empty()).then(|| InlineKeyboardMarkup::new(rows)))
}

fn receipt(message_id: i64) -> Receipt {
    Receipt {
        provider_message_id: Some(message_id.to_string()),
    }
}

/// `sendMessage`'s parameters.
#[derive(Serialize)]
struct SendMessage<'a> {
    chat_id: i64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_markup: Option<&'a InlineKeyboardMarkup>,
}

/// `sendChatAction`'s parameters.
#[derive(Serialize)]
struct SendChatAction {
    chat_id: i64,
    action: &'static str,
}

impl TelegramSender {
    /// `http` is the channels' client (egress policy applied); teloxide brings its own reqwest,
    /// which gets the same policy here.
    pub fn new(http: reqwest::Client, egress: EgressPolicy) -> Result<Self, String> {
        let egress = Arc::new(egress);
        let resolver = TeloxideResolver(egress.clone());
        let client = teloxide_core::net::default_reqwest_settings()
            .dns_resolver(Arc::new(resolver))
            .proxy(reqwest012::Proxy::custom(move |url| {
                egress.refusal_proxy(url)
            }))
            .build()
            .map_err(|e| format!("building the Bot API client: {e}"))?;
        Ok(TelegramSender {
            proto: Bot::with_client("0:unset", client),
            http,
            urls: Arc::default(),
        })
    }

    /// A POST to `config.method_url(method)`, its URL parsed once per bot and method: parsing it
    /// again for every call (host, IDNA and path checks) was ~3 % of a Telegram run's samples.
    /// A URL that does not parse goes to reqwest as text, which refuses it as before.
    fn post(&self, config: &TelegramConfig, method: &str) -> reqwest::RequestBuilder {
        let text = config.method_url(method);
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(url) = urls.get(&text) {
            return self.http.post(url.clone());
        }
        match reqwest::Url::parse(&text) {
            Ok(url) => {
                if urls.len() >= MAX_PARSED_URLS {
                    urls.clear();
                }
                urls.insert(text, url.clone());
                drop(urls);
                self.http.post(url)
            }
            Err(_) => {
                drop(urls);
                self.http.post(text)
            }
        }
    }

    fn bot(&self, config: &TelegramConfig) -> Result<Bot, SendError> {
        bot(&self.proto, config).map_err(SendError::Permanent)
    }

    /// Sends one reply (several messages if it is long, or media then text), resuming after
    /// the parts an earlier attempt got accepted. A group that migrated to a supergroup is sent
    /// to its new id.
    pub async fn send(
        &self,
        config: &TelegramConfig,
        msg: &OutboundMessage,
    ) -> Result<Receipt, SendError> {
        let mut chat = chat_id(&msg.to)?;
        let mut from = msg.parts_sent as usize;
        let mut migrated = false;
        loop {
            match self.send_parts(config, chat, msg, from).await {
                Ok(receipt) => return Ok(receipt),
                Err((at, Failure::Api(RequestError::MigrateToChatId(new)))) if !migrated => {
                    chat = new;
                    from = at;
                    migrated = true;
                }
                Err((at, e)) => {
                    let error = scrub(e.verdict(), config);
                    return Err(if at > msg.parts_sent as usize {
                        SendError::Partial {
                            parts_sent: at as u32,
                            error: Box::new(error),
                        }
                    } else {
                        error
                    });
                }
            }
        }
    }

    /// Sends the parts of a message from index `from` on; on failure, the index of the part
    /// that failed (= parts accepted so far) with the error.
    async fn send_parts(
        &self,
        config: &TelegramConfig,
        chat: ChatId,
        msg: &OutboundMessage,
        from: usize,
    ) -> Result<Receipt, (usize, Failure)> {
        let refuse = |m: String| (from, Failure::Api(RequestError::Api(ApiError::Unknown(m))));
        let content = &msg.content;
        if content.template.is_some() {
            return Err(refuse(
                "Bad Request: message templates are a WhatsApp feature; Telegram has none".into(),
            ));
        }
        let markup = keyboard(content).map_err(|e| refuse(format!("Bad Request: {e}")))?;
        let mut text = msg.text.trim().to_owned();
        // The parts, in order: the media (with the text as caption if it fits), then the text
        // in pieces of at most 4,096 units; the keyboard goes on the last part.
        let mut media_caption = None;
        if content.media.is_some() && utf16_len(&text) <= MAX_CAPTION_UNITS {
            media_caption = Some(std::mem::take(&mut text));
        }
        let pieces = if text.is_empty() {
            Vec::new()
        } else {
            split_text(&text, MAX_TEXT_UNITS)
        };
        let media_parts = usize::from(content.media.is_some());
        let total = media_parts + pieces.len();
        if total == 0 {
            return Err(refuse("Bad Request: message text is empty".into()));
        }
        let mut last = None;
        for index in from..total {
            let markup = if index + 1 == total {
                markup.clone()
            } else {
                None
            };
            let sent = if index < media_parts {
                let media = content
                    .media
                    .as_ref()
                    .ok_or_else(|| refuse("no media".into()))?;
                let caption = media_caption.clone().unwrap_or_default();
                let bot = self.bot(config).map_err(|e| (index, Failure::Other(e)))?;
                self.send_media(&bot, chat, media, &caption, markup)
                    .await
                    .map(|m| m.id.0.into())
                    .map_err(Failure::Api)
            } else {
                let piece = &pieces[index - media_parts];
                let markup = markup.as_ref();
                let html = self
                    .text(config, chat, &to_html(piece), Some("HTML"), markup)
                    .await;
                match html {
                    // Our markup was refused after all: the same words, unformatted.
                    Err(Failure::Api(RequestError::Api(ApiError::CantParseEntities(_)))) => {
                        self.text(config, chat, piece, None, markup).await
                    }
                    other => other,
                }
            };
            last = Some(sent.map_err(|e| (index, e))?);
            msg.progress.accepted(index as u32 + 1);
        }
        Ok(last.map(receipt).unwrap_or_default())
    }

    /// `sendMessage`: the new message's id.
    async fn text(
        &self,
        config: &TelegramConfig,
        chat: ChatId,
        text: &str,
        parse_mode: Option<&'static str>,
        reply_markup: Option<&InlineKeyboardMarkup>,
    ) -> Result<i64, Failure> {
        let payload = SendMessage {
            chat_id: chat.0,
            text,
            parse_mode,
            reply_markup,
        };
        let sent: Sent = self.call(config, "sendMessage", &payload).await?;
        Ok(sent.message_id)
    }

    /// One Bot API call through our client: JSON parameters in, the answer's `result` out.
    async fn call<R: DeserializeOwned>(
        &self,
        config: &TelegramConfig,
        method: &str,
        payload: &impl Serialize,
    ) -> Result<R, Failure> {
        let body = serde_json::to_vec(payload)
            .map_err(|e| Failure::Other(SendError::Permanent(format!("{method}: {e}"))))?;
        let response = self
            .post(config, method)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // (the URL holds the token: `scrub` removes it from what this says)
                Failure::Other(SendError::Transient(format!(
                    "Bot API request failed: {}",
                    switchboard_channel::egress::describe(e)
                )))
            })?;
        let status = response.status().as_u16();
        let body = switchboard_channel::egress::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| Failure::Other(SendError::from(e)))?;
        answer(&body, status)
    }

    async fn send_media(
        &self,
        bot: &Bot,
        chat: ChatId,
        media: &switchboard_channel::Media,
        caption: &str,
        markup: Option<InlineKeyboardMarkup>,
    ) -> Result<Message, RequestError> {
        let file = match (&media.url, &media.id) {
            (Some(url), _) => InputFile::url(reqwest::Url::parse(url).map_err(|e| {
                RequestError::Api(ApiError::Unknown(format!("Bad Request: media url: {e}")))
            })?),
            (None, Some(id)) => InputFile::file_id(FileId(id.clone())),
            (None, None) => {
                return Err(RequestError::Api(ApiError::Unknown(
                    "Bad Request: media needs a url or an id".into(),
                )));
            }
        };
        let caption = to_html(caption);
        let markup = markup.map(ReplyMarkup::InlineKeyboard);
        macro_rules! with_caption {
            ($request:expr) => {{
                let mut r = $request;
                if !caption.is_empty() {
                    r = r.caption(caption).parse_mode(ParseMode::Html);
                }
                if let Some(markup) = markup {
                    r = r.reply_markup(markup);
                }
                r.await
            }};
        }
        match media.kind.as_str() {
            "image" => with_caption!(bot.send_photo(chat, file)),
            "video" => with_caption!(bot.send_video(chat, file)),
            "audio" => with_caption!(bot.send_audio(chat, file)),
            "voice" => with_caption!(bot.send_voice(chat, file)),
            "animation" => with_caption!(bot.send_animation(chat, file)),
            "sticker" => {
                let mut r = bot.send_sticker(chat, file);
                if let Some(markup) = markup {
                    r = r.reply_markup(markup);
                }
                r.await
            }
            _ => with_caption!(bot.send_document(chat, file)),
        }
    }

    /// Fetches a file the person sent (a photo, voice note, document…) by its `file_id`:
    /// `getFile`, then the download (bots may fetch up to 20 MB from Telegram; a self-hosted Bot
    /// API serves larger files, capped at [`MAX_FILE_BYTES`]). The token is in the download
    /// URL: errors never carry it.
    pub async fn download(
        &self,
        config: &TelegramConfig,
        file_id: &str,
    ) -> Result<Vec<u8>, SendError> {
        let bot = self.bot(config)?;
        let file = bot
            .get_file(FileId(file_id.to_owned()))
            .await
            .map_err(|e| scrub(classify(e), config))?;
        let url = format!(
            "{}/file/bot{}/{}",
            config.api_url.trim_end_matches('/'),
            config.bot_token.expose(),
            file.path
        );
        let response = self.http.get(url).send().await.map_err(|e| {
            SendError::Transient(format!(
                "file download failed: {}",
                switchboard_channel::egress::describe(e)
            ))
        })?;
        if !response.status().is_success() {
            return Err(SendError::from_status(
                response.status().as_u16(),
                "the file download",
            ));
        }
        switchboard_channel::egress::read_capped(response, MAX_FILE_BYTES)
            .await
            .map_err(|e| scrub(SendError::from(e), config))
    }

    /// "typing…" in the chat while the bot prepares an answer (it shows for up to 5 s).
    pub async fn typing(&self, config: &TelegramConfig, to: &str) -> Result<(), SendError> {
        let payload = SendChatAction {
            chat_id: chat_id(to)?.0,
            action: "typing",
        };
        self.call::<IgnoredAny>(config, "sendChatAction", &payload)
            .await
            .map(|_| ())
            .map_err(|e| scrub(e.verdict(), config))
    }

    /// Stops a pressed button's spinner.
    pub async fn answer_callback(
        &self,
        config: &TelegramConfig,
        callback_id: &str,
    ) -> Result<(), SendError> {
        let bot = self.bot(config)?;
        bot.answer_callback_query(CallbackQueryId(callback_id.to_owned()))
            .await
            .map(|_| ())
            .map_err(|e| scrub(classify(e), config))
    }

    /// The bot's @username (`getMe`); also proves the token works.
    ///
    /// Read leniently, as raw JSON: only `result.username` matters, and Telegram documents
    /// several of `getMe`'s fields (`can_join_groups`, …) as optional, which a strict parse
    /// refuses. A refusal with HTTP 401 or 404 (a wrong token) is permanent.
    pub async fn username(&self, config: &TelegramConfig) -> Result<Option<String>, SendError> {
        let response = self.post(config, "getMe").send().await.map_err(|e| {
            SendError::Transient(format!(
                "getMe failed: {}",
                switchboard_channel::egress::describe(e)
            ))
        })?;
        let status = response.status().as_u16();
        let body = switchboard_channel::egress::read_capped(response, 64 * 1024)
            .await
            .map_err(|e| scrub(SendError::from(e), config))?;
        let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&body) else {
            // Never repeated: what a server at `api_url` answered is not the tenant's to read.
            return Err(SendError::from_status(
                status,
                "getMe (not the Bot API's JSON)",
            ));
        };
        if answer["ok"] == true {
            return Ok(answer["result"]["username"].as_str().map(str::to_owned));
        }
        let description: String = answer["description"]
            .as_str()
            .unwrap_or("no description")
            .chars()
            .take(120)
            .collect();
        let error = match status {
            401 | 404 => SendError::Permanent(format!("getMe: {description}")),
            _ => SendError::from_status(status, &format!("getMe ({description})")),
        };
        Err(scrub(error, config))
    }

    /// Registers `url` as the webhook with our secret token and the updates we handle.
    pub async fn set_webhook(&self, config: &TelegramConfig, url: &str) -> Result<(), SendError> {
        let bot = self.bot(config)?;
        let url = reqwest::Url::parse(url)
            .map_err(|e| SendError::Permanent(format!("webhook url {url:?}: {e}")))?;
        let mut request = bot
            .set_webhook(url)
            .allowed_updates(ALLOWED_UPDATES.to_vec());
        if let Some(secret) = &config.webhook_secret {
            request = request.secret_token(secret.expose().to_owned());
        }
        request
            .await
            .map(|_| ())
            .map_err(|e| scrub(classify(e), config))
    }

    /// Removes any webhook, so `getUpdates` may be used (Telegram refuses both at once).
    pub async fn delete_webhook(&self, config: &TelegramConfig) -> Result<(), SendError> {
        let bot = self.bot(config)?;
        bot.delete_webhook()
            .await
            .map(|_| ())
            .map_err(|e| scrub(classify(e), config))
    }

    /// One long poll: the raw updates after `offset` (each goes through
    /// [`crate::inbound::parse_update`], like a webhook's).
    pub async fn get_updates(
        &self,
        config: &TelegramConfig,
        offset: Option<i64>,
        timeout: Duration,
    ) -> Result<Vec<Value>, SendError> {
        let mut body = serde_json::json!({
            "timeout": timeout.as_secs(),
            "allowed_updates": ["message", "edited_message", "callback_query", "my_chat_member", "message_reaction"],
        });
        if let Some(offset) = offset {
            body["offset"] = offset.into();
        }
        let response = self
            .post(config, "getUpdates")
            .json(&body)
            .timeout(timeout + Duration::from_secs(10))
            .send()
            .await
            // The error text would contain the URL, and the URL the token: keep only the kind.
            .map_err(|e| SendError::Transient(format!("getUpdates failed: {}", e.without_url())))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if answer["ok"].as_bool() == Some(true) {
            return Ok(answer["result"].as_array().cloned().unwrap_or_default());
        }
        let description = answer["description"].as_str().unwrap_or("no description");
        if let Some(wait) = answer["parameters"]["retry_after"].as_u64() {
            return Err(SendError::RetryAfter(
                Duration::from_secs(wait),
                description.to_owned(),
            ));
        }
        Err(if (400..500).contains(&status) && status != 429 {
            SendError::Permanent(format!("getUpdates: {status} {description}"))
        } else {
            SendError::Transient(format!("getUpdates: {status} {description}"))
        })
    }
}

/// A JSON error's category without its detail (which may quote the input).
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// Largest file downloaded through the Bot API.
pub const MAX_FILE_BYTES: usize = 50 * 1024 * 1024;

/// The egress policy's resolver for teloxide's reqwest (another major version than ours).
struct TeloxideResolver(Arc<EgressPolicy>);

impl reqwest012::dns::Resolve for TeloxideResolver {
    fn resolve(&self, name: reqwest012::dns::Name) -> reqwest012::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let permitted = switchboard_channel::egress::resolve(&policy, &host).await?;
            let addrs: reqwest012::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_only_our_markup_becomes_tags() {
        assert_eq!(
            to_html("<script>alert(1)</script> & **bold** `a<b`"),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; <b>bold</b> <code>a&lt;b</code>"
        );
        assert_eq!(to_html("2 ** 3 is 8"), "2 ** 3 is 8");
        assert_eq!(to_html("**a** and **b"), "<b>a</b> and **b");
    }

    #[test]
    fn long_text_splits_at_breaks_within_the_limit() {
        let text = format!("{}\n\n{}", "a".repeat(3500), "b ".repeat(1000));
        let pieces = split_text(&text, MAX_TEXT_UNITS);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0], "a".repeat(3500));
        assert!(pieces.iter().all(|p| utf16_len(p) <= MAX_TEXT_UNITS));
        // No break anywhere: a hard cut, counted in UTF-16 units (emoji are two).
        let emoji = "😀".repeat(3000);
        let pieces = split_text(&emoji, MAX_TEXT_UNITS);
        assert!(pieces.iter().all(|p| utf16_len(p) <= MAX_TEXT_UNITS));
        assert_eq!(pieces.concat(), emoji);
        assert_eq!(split_text("short", MAX_TEXT_UNITS), vec!["short"]);
    }

    fn verdict<R: DeserializeOwned + std::fmt::Debug>(body: &str, status: u16) -> SendError {
        answer::<R>(body.as_bytes(), status)
            .expect_err("a refusal")
            .verdict()
    }

    #[test]
    fn answers_are_read_like_teloxide_reads_them() {
        let sent: Sent = answer(
            br#"{"ok":true,"result":{"message_id":77,"chat":{"id":1,"type":"private"},"date":1,"text":"hi"}}"#,
            200,
        )
        .expect("sent");
        assert_eq!(sent.message_id, 77);
        assert_eq!(
            verdict::<Sent>(
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
                429
            ),
            SendError::RetryAfter(Duration::from_secs(3), "Telegram: too many requests".into())
        );
        assert!(matches!(
            answer::<Sent>(
                br#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234}}"#,
                400
            ),
            Err(Failure::Api(RequestError::MigrateToChatId(ChatId(-1001234))))
        ));
        assert!(matches!(
            answer::<Sent>(
                br#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0"}"#,
                400
            ),
            Err(Failure::Api(RequestError::Api(ApiError::CantParseEntities(_))))
        ));
        let blocked = verdict::<Sent>(
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
            403,
        );
        assert!(!blocked.is_retryable(), "{blocked:?}");
        assert!(
            verdict::<IgnoredAny>(
                r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#,
                502
            )
            .is_retryable()
        );
        assert!(verdict::<Sent>(r#"{"ok":true,"result":true}"#, 200).is_retryable());
        assert!(verdict::<Sent>(r#"{"ok":true}"#, 200).is_retryable());
    }

    #[test]
    fn what_a_hostile_api_url_answers_is_never_repeated_and_never_crashes() {
        let page = "<html><body>token 123:SECRET in a proxy's error page</body></html>";
        let error = verdict::<Sent>(page, 502);
        assert!(error.is_retryable());
        assert!(!error.to_string().contains("SECRET"), "{error}");
        // Nesting far deeper than a stack could recurse, in a field we skip: skipped without
        // recursing (the message is read); where a value is read, an error, never a crash.
        let deep = format!(
            r#"{{"ok":true,"result":{{"message_id":1,"x":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let sent: Sent = answer(deep.as_bytes(), 200).expect("the deep field is skipped");
        assert_eq!(sent.message_id, 1);
        let deep_description = format!(
            r#"{{"ok":false,"description":{}1{}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(verdict::<Sent>(&deep_description, 400).is_retryable());
    }

    #[test]
    fn bot_api_errors_map_to_what_the_outbox_does() {
        use teloxide_core::types::Seconds;
        assert_eq!(
            classify(RequestError::RetryAfter(Seconds::from_seconds(7))),
            SendError::RetryAfter(Duration::from_secs(7), "Telegram: too many requests".into())
        );
        assert!(!classify(RequestError::Api(ApiError::BotBlocked)).is_retryable());
        assert!(
            !classify(RequestError::Api(ApiError::Unknown(
                "Bad Request: nope".into()
            )))
            .is_retryable()
        );
        assert!(
            classify(RequestError::Api(ApiError::Unknown(
                "Internal Server Error".into()
            )))
            .is_retryable()
        );
    }
}
