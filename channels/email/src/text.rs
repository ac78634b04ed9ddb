//! The text a person newly wrote in an email: HTML turned into text, quoted history and
//! signature cut off.
//!
//! Where it sits: [`crate::inbound`] calls [`new_text`] on every mail's bodies, so the core
//! answers what was written now, not the thread quoted below it. Every pass here is linear in
//! the size of the mail (one look at each line, a bounded look-ahead; one tokenizer pass over
//! HTML), so a hostile mail costs time in proportion to its size, never more.
//!
//! What it must never do: drop everything. When stripping leaves nothing (a mail that is all
//! quote, or a marker we misread), the unstripped text is kept instead.

use std::convert::Infallible;

use switchboard_channel::html::{AMPERSAND, escape_references};

/// The text a person newly wrote: text/plain when there is some, otherwise the HTML as text;
/// then quoted history and signature removed (see [`strip_quoted`]). Falls back to the whole
/// text, trimmed, when stripping leaves nothing.
pub fn new_text(plain: Option<&str>, html: Option<&str>) -> String {
    if let Some(plain) = plain.filter(|p| !p.trim().is_empty()) {
        let stripped = strip_quoted(plain);
        return if stripped.is_empty() {
            tidy(plain)
        } else {
            stripped
        };
    }
    let Some(html) = html else {
        return String::new();
    };
    let stripped = strip_quoted(&html_text(html, true));
    if !stripped.is_empty() {
        return stripped;
    }
    tidy(&html_to_text(html))
}

/// HTML as the reader sees it, as text: block elements become line breaks, list items `- `
/// lines; scripts, styles and the document head are dropped; character references decoded.
pub fn html_to_text(html: &str) -> String {
    html_text(html, false)
}

/// Prefixes of the one-line signatures mobile and webmail clients add.
const DEVICE_SIGNATURES: [&str; 10] = [
    "sent from my ",
    "sent from mail for windows",
    "sent from outlook",
    "get outlook for ",
    "sent from yahoo mail",
    "sent from samsung",
    "sent with proton mail",
    "envoyé de mon ",
    "enviado desde mi ",
    "von meinem ",
];

/// How attribution lines ("On Mon, 1 Jan 2024, Ann <ann@x> wrote:") begin and end, in the
/// languages clients commonly use.
const ATTRIBUTION_STARTS: [&str; 6] = ["on ", "le ", "am ", "el ", "il ", "op "];
const ATTRIBUTION_ENDS: [&str; 8] = [
    "wrote:",
    "writes:",
    "a écrit :",
    "a écrit:",
    "schrieb:",
    "escribió:",
    "ha scritto:",
    "schreef:",
];

/// `text` without quoted history and signature:
/// - lines starting with `>` are dropped (text between them, an inline answer, is kept);
/// - an attribution line ("On …, … wrote:", also wrapped over two lines) is dropped when a `>`
///   quote follows, and otherwise ends the text (the history below it is not marked);
/// - Outlook's `-----Original Message-----`, a `_____` separator line, and a
///   `From: … Sent:/Date: … To:/Subject:` header block end the text;
/// - a `-- ` signature line and the usual "Sent from my iPhone" lines end it too.
///
/// Lines are trimmed at the end, leading and trailing blank lines dropped and runs of blank
/// lines collapsed. May return an empty string (see [`new_text`] for the fallback).
pub fn strip_quoted(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.starts_with('>') {
            i += 1;
            continue;
        }
        if let Some(span) = attribution(&lines, i) {
            // Look at the next non-blank line: a `>` quote means the history is marked and
            // inline answers may follow; anything else means the rest is unmarked history.
            let next = lines[i + span..].iter().find(|l| !l.trim().is_empty());
            if next.is_some_and(|l| l.trim_start().starts_with('>')) {
                i += span;
                continue;
            }
            break;
        }
        if is_signature(line) || starts_history(&lines, i) {
            break;
        }
        kept.push(line);
        i += 1;
    }
    tidy_lines(kept.into_iter())
}

/// The number of lines (1 or 2) of an attribution line starting at `lines[i]`.
fn attribution(lines: &[&str], i: usize) -> Option<usize> {
    let first = lines[i].trim();
    let lower_start = lowercase_prefix(first, 3);
    if !ATTRIBUTION_STARTS.contains(&lower_start.as_str()) {
        return None;
    }
    if ends_attribution(first) {
        return Some(1);
    }
    // Clients wrap long attributions: "On Mon, 15 Apr 2013 at 20:20, Ann <ann@x>\nwrote:".
    let second = lines.get(i + 1)?.trim();
    (first.len() < 400 && second.len() < 400 && ends_attribution(second)).then_some(2)
}

fn ends_attribution(line: &str) -> bool {
    // Compare on the last few characters only: lowercasing a 5 MB line is linear anyway, but
    // there is no need.
    let tail: String = line
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .to_lowercase();
    ATTRIBUTION_ENDS.iter().any(|end| tail.ends_with(end))
}

/// The first `n` characters of `s`, lowercased.
fn lowercase_prefix(s: &str, n: usize) -> String {
    s.chars().take(n).collect::<String>().to_lowercase()
}

fn is_signature(line: &str) -> bool {
    let t = line.trim();
    if line.trim_end_matches(['\r', '\n']) == "-- " || t == "--" {
        return true;
    }
    if t.len() > 80 {
        return false;
    }
    let lower = t.to_lowercase();
    DEVICE_SIGNATURES.iter().any(|p| lower.starts_with(p))
}

/// Does the quoted history start at `lines[i]` (Outlook and friends)?
fn starts_history(lines: &[&str], i: usize) -> bool {
    let t = lines[i].trim();
    if t.len() >= 10 && t.bytes().all(|b| b == b'_') {
        return true;
    }
    if t.starts_with("-----") {
        let lower = lowercase_prefix(t, 60);
        if lower.contains("original message") || lower.contains("ursprüngliche nachricht") {
            return true;
        }
    }
    // "From: Ann <ann@x>" then, within a few lines, "Sent:"/"Date:" and "To:"/"Subject:".
    if header_field(t, &["from:"]) {
        let next = &lines[i + 1..lines.len().min(i + 6)];
        let sent = next
            .iter()
            .any(|l| header_field(l.trim(), &["sent:", "date:"]));
        let to = next
            .iter()
            .any(|l| header_field(l.trim(), &["to:", "subject:"]));
        return sent && to;
    }
    false
}

/// Does `line` start with one of `names` (lowercase, with the colon), optionally in `*bold*`?
fn header_field(line: &str, names: &[&str]) -> bool {
    let line = line.trim_start_matches('*');
    let lower = lowercase_prefix(line, 10);
    names.iter().any(|n| lower.starts_with(n))
}

/// Normalized line endings, lines trimmed at the end, blank runs collapsed, trimmed.
fn tidy(text: &str) -> String {
    tidy_lines(text.lines())
}

fn tidy_lines<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut blank = false;
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push_str("\n\n");
        } else if !out.is_empty() {
            out.push('\n');
        }
        blank = false;
        out.push_str(line);
    }
    out
}

/// HTML to text through html5gum's WHATWG tokenizer (one pass, no tree: a tree builder is
/// quadratic on piles of unclosed elements). With `skip_quotes`, `<blockquote>`s and Gmail's,
/// Yahoo's and Thunderbird's quote containers are left out, and Outlook's reply header ends
/// the text.
fn html_text(html: &str, skip_quotes: bool) -> String {
    use html5gum::Tokenizer;
    use html5gum::emitters::callback::{CallbackEmitter, CallbackEvent};

    // html5gum finds a named character reference by trying every entity of its first letter in
    // turn, which is slow on megabytes of `&lt`: each `&` that may start a reference becomes a
    // private-use character the tokenizer passes through, decoded by `htmlize` afterwards.
    let escaped = escape_references(html);
    let html = escaped.as_deref().unwrap_or(html);
    let mut state = HtmlText {
        skip_quotes,
        ..HtmlText::default()
    };
    {
        let on_event = |event: CallbackEvent<'_>, _: html5gum::Span<()>| -> Option<Infallible> {
            match event {
                CallbackEvent::OpenStartTag { name } => state.open(name),
                CallbackEvent::AttributeName { name } => {
                    state.attribute = matches!(name, b"class" | b"id");
                }
                CallbackEvent::AttributeValue { value } if state.attribute => {
                    state.marks.push(' ');
                    state.marks.push_str(&String::from_utf8_lossy(value));
                }
                CallbackEvent::CloseStartTag { self_closing } => state.close(self_closing),
                CallbackEvent::EndTag { name } => state.end(name),
                CallbackEvent::String { value } => state.text(value),
                _ => {}
            }
            None
        };
        let mut emitter = CallbackEmitter::new(on_event);
        // Script, style and title switch the tokenizer to their raw-text states, as a browser
        // would, so a `<` inside a script is not a tag.
        emitter.naively_switch_states(true);
        Tokenizer::new_with_emitter(html, emitter).for_each(drop);
    }
    tidy(&state.out)
}

/// What [`html_text`] keeps between tokenizer events.
#[derive(Default)]
struct HtmlText {
    out: String,
    skip_quotes: bool,
    /// The start tag being read, until its `>`.
    tag: Vec<u8>,
    /// Its `class` and `id` values, space-separated.
    marks: String,
    /// The attribute being read is a `class` or an `id`.
    attribute: bool,
    /// Inside an element whose content is not shown (script, style, head, …): its name.
    hidden: Option<Vec<u8>>,
    /// Inside a quote being left out: the element's name and how deep it nests.
    quote: Option<(Vec<u8>, usize)>,
    /// Outlook's reply header was seen: everything after it is history.
    stopped: bool,
    /// Inside `<pre>`: whitespace is kept.
    pre: usize,
}

const VOID: [&[u8]; 14] = [
    b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"link", b"meta", b"param",
    b"source", b"track", b"wbr",
];

const HIDDEN: [&[u8]; 8] = [
    b"script",
    b"style",
    b"head",
    b"title",
    b"noscript",
    b"template",
    b"iframe",
    b"object",
];

impl HtmlText {
    fn open(&mut self, name: &[u8]) {
        self.tag.clear();
        self.tag.extend_from_slice(name);
        self.marks.clear();
        self.attribute = false;
    }

    fn close(&mut self, self_closing: bool) {
        let name = std::mem::take(&mut self.tag);
        let void = self_closing || VOID.contains(&name.as_slice());
        if self.stopped {
            return;
        }
        if let Some(hidden) = &self.hidden {
            // An unclosed <head> ends where the body starts.
            if !(hidden.as_slice() == b"head" && name == b"body") {
                return;
            }
            self.hidden = None;
        }
        if let Some((quoted, depth)) = &mut self.quote {
            if *quoted == name && !void {
                *depth += 1;
            }
            return;
        }
        if HIDDEN.contains(&name.as_slice()) {
            if !void {
                self.hidden = Some(name);
            }
            return;
        }
        if self.skip_quotes {
            let marks = self.marks.to_ascii_lowercase();
            if marks.contains("divrplyfwdmsg") || marks.contains("appendonsend") {
                self.stopped = true;
                return;
            }
            let quote = name == b"blockquote"
                || marks.contains("gmail_quote")
                || marks.contains("yahoo_quoted")
                || marks.contains("moz-cite-prefix")
                || marks.contains("gmail_signature");
            if quote && !void {
                self.quote = Some((name, 1));
                return;
            }
        }
        match name.as_slice() {
            b"br" => self.out.push('\n'),
            b"li" => self.out.push_str("\n- "),
            b"td" | b"th" => self.out.push(' '),
            b"pre" => {
                self.pre += 1;
                self.out.push('\n');
            }
            b"p" | b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6" | b"table" | b"ul" | b"ol" => {
                self.out.push_str("\n\n")
            }
            n if is_block(n) => self.out.push('\n'),
            _ => {}
        }
    }

    fn end(&mut self, name: &[u8]) {
        if self.stopped {
            return;
        }
        if let Some(hidden) = &self.hidden {
            if hidden.as_slice() == name {
                self.hidden = None;
            }
            return;
        }
        if let Some((quoted, depth)) = &mut self.quote {
            if quoted.as_slice() == name {
                *depth -= 1;
                if *depth == 0 {
                    self.quote = None;
                    self.out.push('\n');
                }
            }
            return;
        }
        match name {
            b"pre" => {
                self.pre = self.pre.saturating_sub(1);
                self.out.push('\n');
            }
            b"p" | b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6" | b"table" | b"ul" | b"ol" => {
                self.out.push_str("\n\n")
            }
            n if is_block(n) => self.out.push('\n'),
            _ => {}
        }
    }

    fn text(&mut self, value: &[u8]) {
        if self.stopped || self.hidden.is_some() || self.quote.is_some() {
            return;
        }
        let value = String::from_utf8_lossy(value);
        let value = if value.contains(AMPERSAND) {
            htmlize::unescape(value.replace(AMPERSAND, "&")).into_owned()
        } else {
            value.into_owned()
        };
        if self.pre > 0 {
            self.out.push_str(&value);
            return;
        }
        // Runs of whitespace show as one space.
        let mut space = self.out.ends_with([' ', '\n']);
        for c in value.chars() {
            if c.is_whitespace() && c != '\u{a0}' {
                if !space {
                    self.out.push(' ');
                    space = true;
                }
            } else {
                self.out.push(if c == '\u{a0}' { ' ' } else { c });
                space = false;
            }
        }
    }
}

fn is_block(name: &[u8]) -> bool {
    matches!(
        name,
        b"div"
            | b"tr"
            | b"blockquote"
            | b"hr"
            | b"section"
            | b"article"
            | b"header"
            | b"footer"
            | b"address"
            | b"dl"
            | b"dt"
            | b"dd"
            | b"figure"
            | b"main"
            | b"nav"
            | b"aside"
            | b"form"
            | b"fieldset"
            | b"center"
            | b"body"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_plain_reply_keeps_only_the_new_text() {
        let plain = "Thanks, that works!\n\nOn Mon, Apr 15, 2013 at 8:20 PM, Switchboard <bot@acme.example> wrote:\n\n> Your order shipped.\n> \n> -- \n> Acme\n";
        assert_eq!(new_text(Some(plain), None), "Thanks, that works!");
        // Gmail wraps a long attribution over two lines.
        let wrapped = "Yes please\r\n\r\nOn Mon, Apr 15, 2013 at 8:20 PM, Very Long Name Here <someone@example.com>\r\nwrote:\r\n\r\n> Shall I book it?\r\n";
        assert_eq!(new_text(Some(wrapped), None), "Yes please");
    }

    #[test]
    fn gmail_html_reply_drops_the_quote_container() {
        let html = r#"<div dir="ltr">Sounds <b>good</b> &amp; thanks<br>Ann</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Apr 15, 2013 at 8:20 PM Bot &lt;bot@x&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0">Old text</blockquote></div>"#;
        assert_eq!(new_text(None, Some(html)), "Sounds good & thanks\nAnn");
    }

    #[test]
    fn outlook_replies_end_at_the_header_block() {
        let plain = "I'll be there at 3.\r\n\r\n-----Original Message-----\r\nFrom: Bot <bot@acme.example>\r\nSent: Monday, April 15, 2013 8:20 PM\r\nTo: Ann\r\nSubject: Appointment\r\n\r\nWhen suits you?";
        assert_eq!(new_text(Some(plain), None), "I'll be there at 3.");
        let plain = "Confirmed.\n\n________________________________\nFrom: Bot <bot@acme.example>\nSent: Monday\nTo: Ann\nSubject: Re: x\n\nEarlier";
        assert_eq!(new_text(Some(plain), None), "Confirmed.");
        let plain =
            "See below.\n\nFrom: Bot <bot@acme.example>\nDate: Monday\nSubject: x\n\nEarlier";
        assert_eq!(new_text(Some(plain), None), "See below.");
        let html = r#"<html><head><style>p{color:red}</style></head><body><div>Works for me.</div><div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> Bot<br><b>Sent:</b> Monday</div><div>Earlier</div></body></html>"#;
        assert_eq!(new_text(None, Some(html)), "Works for me.");
    }

    #[test]
    fn apple_mail_replies_and_mobile_signatures() {
        let plain = "Perfect, see you then.\n\nSent from my iPhone\n\n> On Apr 15, 2013, at 20:20, Bot <bot@acme.example> wrote:\n> \n> See you Tuesday?\n";
        assert_eq!(new_text(Some(plain), None), "Perfect, see you then.");
        let html = r#"<html><body style="word-wrap: break-word;">Great<div><br><div><div>On Apr 15, 2013, at 8:20 PM, Bot &lt;bot@acme.example&gt; wrote:</div><br><blockquote type="cite"><div>Tuesday?</div></blockquote></div></div></body></html>"#;
        assert_eq!(new_text(None, Some(html)), "Great");
    }

    #[test]
    fn inline_answers_between_quotes_are_kept_and_signatures_cut() {
        let plain = "On Mon, Bot wrote:\n> Which size?\nMedium\n> Which colour?\nBlue\n\n-- \nAnn Example\nCEO";
        assert_eq!(new_text(Some(plain), None), "Medium\nBlue");
    }

    #[test]
    fn all_quote_falls_back_to_the_whole_text() {
        let plain = "> only a quote\n> nothing else";
        assert_eq!(
            new_text(Some(plain), None),
            "> only a quote\n> nothing else"
        );
        assert_eq!(new_text(Some("  \n"), None), "");
        assert_eq!(new_text(None, None), "");
        assert_eq!(
            new_text(Some(" "), Some("<p>From html</p>")),
            "From html",
            "empty plain falls through to the HTML"
        );
    }

    #[test]
    fn html_blocks_lists_and_hidden_elements() {
        let html = "<p>One</p><p>Two&nbsp;words</p><ul><li>a</li><li>b</li></ul><script>alert('<p>x</p>')</script><pre>  keep\n  this</pre>";
        assert_eq!(
            html_to_text(html),
            "One\n\nTwo words\n\n- a\n- b\n\n  keep\n  this"
        );
    }

    #[test]
    fn an_unclosed_head_ends_at_the_body() {
        let html = "<html><head><title>t</title><meta charset=utf-8><body><p>Hello</p></body>";
        assert_eq!(new_text(None, Some(html)), "Hello");
    }

    #[test]
    fn stays_linear_on_huge_inputs() {
        let quotes = "> quoted line\n".repeat(200_000);
        let text = format!("New text\n{quotes}");
        let start = std::time::Instant::now();
        assert_eq!(new_text(Some(&text), None), "New text");
        let line = "x".repeat(5 * 1024 * 1024);
        assert_eq!(new_text(Some(&line), None).len(), line.len());
        let html = format!("<div>{}</div>", "&lt".repeat(500_000));
        assert!(!new_text(None, Some(&html)).is_empty());
        let nested = "<blockquote>".repeat(100_000);
        assert_eq!(new_text(None, Some(&format!("hi{nested}"))), "hi");
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    }
}
