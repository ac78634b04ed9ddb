//! Text out of an uploaded file: Markdown and plain text as they are, HTML without its markup
//! (html5gum's WHATWG tokenizer), PDF through `pdf-extract` in a bounded child process
//! ([`super::pdf_worker`]; text layer only: scanned pages without one have no text).

use switchboard_channel::html::{AMPERSAND, escape_references};

/// The formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Text,
    Html,
    Pdf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "markdown" | "md" => Some(Format::Markdown),
            "text" | "txt" | "plain" => Some(Format::Text),
            "html" | "htm" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }

    /// From a file name's extension.
    pub fn from_path(path: &str) -> Option<Format> {
        path.rsplit_once('.')
            .and_then(|(_, ext)| Format::parse(ext))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::Text => "text",
            Format::Html => "html",
            Format::Pdf => "pdf",
        }
    }
}

/// The text to chunk, and a title found in the document (Markdown's first `# `, HTML's `<title>`
/// or first `<h1>`).
pub fn extract(content: &str, format: Format) -> (String, Option<String>) {
    match format {
        Format::Markdown => {
            let title = content
                .lines()
                .find_map(|l| l.trim().strip_prefix("# ").map(|t| t.trim().to_owned()));
            (content.to_owned(), title)
        }
        // A PDF arrives here as its extracted text ([`pdf_text`]).
        Format::Text | Format::Pdf => (content.to_owned(), None),
        Format::Html => html_to_text(content),
    }
}

/// Largest PDF accepted, in bytes.
pub const MAX_PDF_BYTES: usize = 16 * 1024 * 1024;

/// pdf-extract's output as paragraphs: lines are separated by newlines and pages by form feeds;
/// runs of blank lines collapse so chunking sees paragraphs. (The PDF itself is read in a bounded
/// child process: [`super::pdf_worker`].)
pub fn tidy_pdf_text(extracted: &str) -> String {
    let mut text = String::with_capacity(extracted.len());
    let mut blank = 0;
    for line in extracted.replace('\u{c}', "\n\n").lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !text.is_empty() {
            text.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        text.push_str(line);
    }
    text
}

/// HTML to text for knowledge pages, through html5gum's WHATWG tokenizer (entities decoded by
/// it): drops scripts, styles, templates and comments, turns headings into Markdown headings (so
/// chunking follows them), block elements into paragraph breaks, list items into `- ` lines. It
/// never executes or keeps markup.
///
/// Why a tokenizer and not a tree builder (html5ever through scraper): building the tree is
/// quadratic on hostile input (every `<div>` start scans the stack of open elements, so 16 MiB of
/// unclosed `<div>`s never finishes; html5ever's tokenizer also checks each attribute against
/// all earlier ones of its tag). Text extraction needs no tree: tags in, text out, one pass over
/// the input, attributes ignored, so any HTML costs time linear in its size.
fn html_to_text(html: &str) -> (String, Option<String>) {
    use html5gum::emitters::callback::{CallbackEmitter, CallbackEvent};
    use html5gum::{Span, Tokenizer};
    use std::convert::Infallible;

    // Character references are decoded by `htmlize` in the text we keep, not by the tokenizer:
    // html5gum finds a named reference by trying every entity of its first letter in turn, so
    // 16 MiB of `&lt` took seconds. Every `&` that could start a reference becomes a private-use
    // character the tokenizer passes through as text (one that was there already becomes
    // U+FFFD: it means nothing in a page).
    let escaped = escape_references(html);
    let html = escaped.as_deref().unwrap_or(html);
    let mut text = HtmlText {
        out: String::with_capacity(html.len().min(1 << 20) / 2),
        ..HtmlText::default()
    };
    {
        let on_event = |event: CallbackEvent<'_>, _: Span<()>| -> Option<Infallible> {
            match event {
                CallbackEvent::OpenStartTag { name } => text.start(name),
                CallbackEvent::EndTag { name } => text.end(name),
                CallbackEvent::String { value } => text.text(value),
                _ => {}
            }
            None
        };
        let mut emitter = CallbackEmitter::new(on_event);
        // Script, style, title and the like switch the tokenizer to their raw-text states (what
        // a tree builder would do), so `<` inside a script is not read as a tag.
        emitter.naively_switch_states(true);
        // The callback keeps everything; the iterator yields nothing (its items are
        // `Infallible`), it only drives the tokenizer to the end.
        Tokenizer::new_with_emitter(html, emitter).for_each(drop);
    }
    text.finish()
}

/// Text as the page shows it: `&` back, character references decoded (WHATWG rules).
fn decoded(value: &[u8]) -> std::borrow::Cow<'_, str> {
    let value = String::from_utf8_lossy(value);
    if !value.contains(AMPERSAND) {
        return value;
    }
    let restored = value.replace(AMPERSAND, "&");
    std::borrow::Cow::Owned(htmlize::unescape(restored).into_owned())
}

/// What [`html_to_text`] keeps between tokenizer events.
#[derive(Default)]
struct HtmlText {
    out: String,
    title: Option<String>,
    h1: Option<String>,
    /// Inside a `<title>` (`true`) or `<h1>` (`false`): its text so far.
    capture: Option<(bool, String)>,
    /// Inside a raw-text element that is not content (script, style, …): until its end tag.
    raw: bool,
    /// Depth of `<template>` elements (their content is not shown).
    template: usize,
}

impl HtmlText {
    fn start(&mut self, name: &[u8]) {
        match name {
            b"script" | b"style" | b"noscript" | b"iframe" | b"noembed" | b"xmp" | b"textarea" => {
                self.raw = true;
                return;
            }
            b"template" => {
                self.template += 1;
                return;
            }
            _ => {}
        }
        if self.raw || self.template > 0 {
            return;
        }
        match name {
            b"title" => self.capture = Some((true, String::new())),
            b"h1" => {
                self.flush_capture();
                self.capture = Some((false, String::new()));
            }
            b"li" => self.out.push_str("\n- "),
            b"br" => self.out.push('\n'),
            b"td" | b"th" => self.out.push(' '),
            _ => {
                if let Some(level) = heading_level(name) {
                    self.flush_capture();
                    self.out.push_str(&"\n\n######"[..2 + level]);
                    self.out.push(' ');
                } else if is_block(name) {
                    self.out.push_str("\n\n");
                }
            }
        }
    }

    fn end(&mut self, name: &[u8]) {
        if self.raw {
            // In a raw-text state the tokenizer ends only at the element's own end tag.
            self.raw = false;
            return;
        }
        if name == b"template" {
            self.template = self.template.saturating_sub(1);
            return;
        }
        if self.template > 0 {
            return;
        }
        match name {
            b"title" => {
                if matches!(self.capture, Some((true, _))) {
                    self.flush_capture();
                }
            }
            _ if heading_level(name).is_some() => {
                if matches!(self.capture, Some((false, _))) {
                    self.flush_capture();
                } else {
                    self.out.push_str("\n\n");
                }
            }
            _ if is_block(name) => self.out.push_str("\n\n"),
            _ => {}
        }
    }

    fn text(&mut self, value: &[u8]) {
        if self.raw || self.template > 0 {
            return;
        }
        let value = decoded(value);
        match &mut self.capture {
            Some((_, buf)) => buf.push_str(&value),
            None => self.out.push_str(&value),
        }
    }

    /// Ends a `<title>` or `<h1>` being read: the title is remembered, the heading written.
    fn flush_capture(&mut self) {
        let Some((is_title, text)) = self.capture.take() else {
            return;
        };
        if is_title {
            if self.title.is_none() {
                self.title = Some(collapse(&text)).filter(|t| !t.is_empty());
            }
            return;
        }
        if self.h1.is_none() {
            self.h1 = Some(collapse(&text)).filter(|t| !t.is_empty());
        }
        self.out.push_str("\n\n# ");
        self.out.push_str(&text);
        self.out.push_str("\n\n");
    }

    /// The text, tidied (lines trimmed, at most one blank line in a row), and the title.
    fn finish(mut self) -> (String, Option<String>) {
        self.flush_capture();
        let mut tidy = String::with_capacity(self.out.len());
        let mut blank = 0;
        for line in self.out.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else {
                blank += 1;
                continue;
            };
            if !tidy.is_empty() {
                tidy.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            tidy.push_str(first);
            for word in words {
                tidy.push(' ');
                tidy.push_str(word);
            }
        }
        (tidy, self.title.or(self.h1))
    }
}

/// `h1`…`h6` as 1…6.
fn heading_level(name: &[u8]) -> Option<usize> {
    match name {
        [b'h', d @ b'1'..=b'6'] => Some(usize::from(d - b'0')),
        _ => None,
    }
}

fn is_block(name: &[u8]) -> bool {
    matches!(
        name,
        b"p" | b"div"
            | b"section"
            | b"article"
            | b"ul"
            | b"ol"
            | b"table"
            | b"tr"
            | b"pre"
            | b"blockquote"
            | b"header"
            | b"footer"
            | b"main"
            | b"nav"
    )
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// HTML built to make a parser slow (the patterns that were quadratic before, and the ones a
/// tree builder or a duplicate-attribute check is quadratic on), each made about `n` bytes long.
/// Shared by the linearity test below and `benches/hostile_html.rs`.
#[doc(hidden)]
pub mod hostile {
    /// A pattern's name and how to make `n` bytes of it.
    pub type Pattern = (&'static str, fn(usize) -> String);

    pub const PATTERNS: [Pattern; 9] = [
        ("ampersands", |n| "&".repeat(n)),
        ("empty scripts", |n| "<script></script>".repeat(n / 17)),
        ("unclosed divs", |n| "<div>".repeat(n / 5)),
        ("misnested formatting", |n| {
            "<b><i><p></b></i>".repeat(n / 17)
        }),
        ("one tag, many attributes", |n| {
            let mut s = String::from("<a");
            let mut i = 0;
            while s.len() < n {
                s.push_str(&format!(" x{i}"));
                i += 1;
            }
            s + ">"
        }),
        ("unterminated comment", |n| {
            format!("<!--{}", "a-".repeat(n / 2))
        }),
        ("entity prefixes", |n| "&amp&lt&#x&#&notin".repeat(n / 18)),
        ("open angle brackets", |n| "<".repeat(n)),
        ("unclosed headings", |n| "<h1>a<h2>".repeat(n / 9)),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_keeps_text_structure_and_drops_markup_and_scripts() {
        let html = r#"<html><head><title>Sleep &amp; focus</title><style>p{color:red}</style></head>
<body><h1>Sleep</h1><p>Go to bed at the <b>same</b> time.</p><script>alert("x")</script>
<h2>Tips</h2><ul><li>No screens</li><li>Dark room &lt;3</li></ul><!-- hidden --></body></html>"#;
        let (text, title) = extract(html, Format::Html);
        assert_eq!(title.as_deref(), Some("Sleep & focus"));
        assert!(text.contains("# Sleep"), "{text}");
        assert!(text.contains("## Tips"), "{text}");
        assert!(text.contains("Go to bed at the same time."), "{text}");
        assert!(text.contains("- Dark room <3"), "{text}");
        assert!(!text.contains("alert") && !text.contains("color:red") && !text.contains("hidden"));
    }

    #[test]
    fn markdown_title_and_formats() {
        let (_, title) = extract("intro\n# Habits\ntext", Format::Markdown);
        assert_eq!(title.as_deref(), Some("Habits"));
        assert_eq!(Format::from_path("notes/a.MD"), Some(Format::Markdown));
        assert_eq!(Format::from_path("a.pdf"), Some(Format::Pdf));
        assert_eq!(Format::from_path("a.docx"), None);
    }

    #[test]
    fn html_structure_survives_the_tokenizer() {
        let html = "<template><p>hidden</p><template>deeper</template></template>\
            <h1>Main <i>title</i></h1><h3>Part</h3><p>a<br>b</p>\
            <table><tr><td>x</td><td>y</td></tr></table>\
            <textarea><p>typed</p></textarea><noscript>enable js</noscript>\
            <script>if (a < b) { document.write('</p>never') }</script><p>end &#x1F600; &notanentity</p>";
        let (text, title) = extract(html, Format::Html);
        assert_eq!(title.as_deref(), Some("Main title"));
        assert_eq!(
            text,
            "# Main title\n\n### Part\n\na\nb\n\nx y\n\nend \u{1F600} \u{AC}anentity"
        );
    }

    /// Hostile HTML costs time linear in its size (issue "Hardening": 1 MB of `&` or 4 MB of
    /// empty `<script></script>` did not finish in 25 s; a tree builder is quadratic on unclosed
    /// nesting, a duplicate-attribute check on one huge tag). Each pattern is extracted at 256 KiB
    /// and at 2 MiB: linear work takes about 8 times as long, quadratic 64 times. A ratio, not a
    /// time, so that a slow or busy machine does not fail it; the ≤ 2 s for 16 MiB that the
    /// release build takes is measured by `cargo bench --bench hostile_html` (docs/BENCHMARKS.md).
    #[test]
    fn hostile_html_takes_linear_time() {
        const MIB: usize = 1024 * 1024;
        for (name, make) in hostile::PATTERNS {
            let time = |size: usize, runs: usize| {
                let html = make(size);
                (0..runs)
                    .map(|_| {
                        let started = std::time::Instant::now();
                        let (text, _) = extract(&html, Format::Html);
                        std::hint::black_box(text);
                        started.elapsed()
                    })
                    .min()
                    .unwrap_or_default()
            };
            let small = time(MIB / 4, 3);
            let large = time(2 * MIB, 1);
            eprintln!("{name}: 256 KiB in {small:?}, 2 MiB in {large:?}");
            assert!(
                large < small * 20 + std::time::Duration::from_millis(100),
                "{name}: 256 KiB in {small:?}, 2 MiB in {large:?}: not linear"
            );
        }
    }
}
