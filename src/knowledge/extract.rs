//! Text out of an uploaded file: Markdown and plain text as they are, HTML without its markup,
//! PDF through `pdf-extract` (text layer only: scanned pages without one have no text).

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

/// The text layer of a PDF, pages separated by blank lines. A damaged or unsupported file is an
/// error (the parser's panics included: the input is a stranger's file).
pub fn pdf_text(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() > MAX_PDF_BYTES {
        return Err("the PDF is larger than 16 MiB".into());
    }
    if !bytes.starts_with(b"%PDF-") {
        return Err("not a PDF (no %PDF- header)".into());
    }
    let extracted = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes))
        .map_err(|_| "the PDF could not be read (damaged or unsupported)".to_owned())?
        .map_err(|e| format!("the PDF could not be read: {e}"))?;
    // pdf-extract separates lines with newlines and pages with form feeds; collapse runs of
    // blank lines so chunking sees paragraphs.
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
    if text.trim().is_empty() {
        return Err("the PDF has no text layer (a scan?)".into());
    }
    Ok(text)
}

/// A small HTML-to-text pass for knowledge pages: drops scripts, styles and comments, turns
/// headings into Markdown headings (so chunking follows them), block elements into paragraph
/// breaks, list items into `- ` lines, and decodes the common entities. It never executes or
/// keeps markup.
fn html_to_text(html: &str) -> (String, Option<String>) {
    let mut out = String::with_capacity(html.len() / 2);
    let mut title: Option<String> = None;
    let mut h1: Option<String> = None;
    let mut rest = html;
    let mut capture: Option<(String, String)> = None; // (tag, text) for <title> and <h1>
    while let Some(lt) = rest.find('<') {
        push_text(&mut out, &mut capture, &rest[..lt]);
        rest = &rest[lt..];
        if rest.starts_with("<!--") {
            rest = rest.find("-->").map_or("", |end| &rest[end + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            rest = "";
            break;
        };
        let tag_body = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag_body.starts_with('/');
        let name: String = tag_body
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && matches!(name.as_str(), "script" | "style" | "noscript" | "template") {
            let end = format!("</{name}");
            rest = match rest.to_ascii_lowercase().find(&end) {
                Some(i) => rest[i..].find('>').map_or("", |j| &rest[i + j + 1..]),
                None => "",
            };
            continue;
        }
        match (name.as_str(), closing) {
            ("title" | "h1", false) => capture = Some((name.clone(), String::new())),
            ("title", true) | ("h1", true) => {
                if let Some((tag, text)) = capture.take() {
                    let text = collapse(&text);
                    if tag == "title" && title.is_none() && !text.is_empty() {
                        title = Some(text.clone());
                    }
                    if tag == "h1" && h1.is_none() && !text.is_empty() {
                        h1 = Some(text.clone());
                    }
                    if tag == "h1" {
                        out.push_str(&format!("\n\n# {text}\n\n"));
                    }
                }
            }
            (h, false)
                if h.len() == 2 && h.starts_with('h') && h.as_bytes()[1].is_ascii_digit() =>
            {
                let level = usize::from(h.as_bytes()[1] - b'0').clamp(1, 6);
                out.push_str("\n\n");
                out.push_str(&"#".repeat(level));
                out.push(' ');
            }
            (h, true) if h.len() == 2 && h.starts_with('h') && h.as_bytes()[1].is_ascii_digit() => {
                out.push_str("\n\n");
            }
            ("li", false) => out.push_str("\n- "),
            ("br", _) => out.push('\n'),
            (
                "p" | "div" | "section" | "article" | "ul" | "ol" | "table" | "tr" | "pre"
                | "blockquote" | "header" | "footer" | "main" | "nav",
                _,
            ) => out.push_str("\n\n"),
            ("td" | "th", _) => out.push(' '),
            _ => {}
        }
    }
    push_text(&mut out, &mut capture, rest);
    // Tidy: trim lines, at most one blank line in a row.
    let mut tidy = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let line = collapse(line);
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !tidy.is_empty() {
            tidy.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        tidy.push_str(&line);
    }
    (tidy, title.or(h1))
}

fn push_text(out: &mut String, capture: &mut Option<(String, String)>, raw: &str) {
    let text = decode_entities(raw);
    match capture {
        Some((tag, buf)) => {
            buf.push_str(&text);
            if tag == "h1" {
                // Written out when the heading closes.
            }
        }
        None => out.push_str(&text),
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let entity = &rest[1..e];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
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
        assert_eq!(decode_entities("&#x41;&#66;&bogus;&"), "AB&bogus;&");
    }
}
