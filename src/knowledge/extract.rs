//! Text out of an uploaded file: Markdown and plain text as they are, HTML without its markup
//! (html5ever through `scraper`), PDF through `pdf-extract` in a bounded child process
//! ([`super::pdf_worker`]; text layer only: scanned pages without one have no text).

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

/// HTML to text for knowledge pages, through html5ever (the browsers' parsing algorithm, linear
/// in the input, entities decoded by the tokenizer): drops scripts, styles, templates and
/// comments, turns headings into Markdown headings (so chunking follows them), block elements
/// into paragraph breaks, list items into `- ` lines. The tree is walked without recursion, so
/// deep nesting costs no stack. It never executes or keeps markup.
fn html_to_text(html: &str) -> (String, Option<String>) {
    use scraper::Node;
    use scraper::node::Element;
    let document = scraper::Html::parse_document(html);
    let mut out = String::with_capacity(html.len().min(1 << 20) / 2);
    let mut title: Option<String> = None;
    let mut h1: Option<String> = None;
    // Inside a <title> or <h1>: its text so far. Inside a skipped element: its depth.
    let mut capture: Option<(bool, String)> = None; // (is_title, text)
    let mut skipping = 0usize;
    let heading = |e: &Element| -> Option<usize> {
        let name = e.name();
        (name.len() == 2 && name.starts_with('h'))
            .then(|| name.as_bytes()[1])
            .filter(u8::is_ascii_digit)
            .map(|d| usize::from(d - b'0').clamp(1, 6))
    };
    for edge in document.tree.root().traverse() {
        match edge {
            ego_tree::iter::Edge::Open(node) => match node.value() {
                Node::Element(e) => {
                    if matches!(e.name(), "script" | "style" | "noscript" | "template") {
                        skipping += 1;
                        continue;
                    }
                    if skipping > 0 {
                        continue;
                    }
                    match e.name() {
                        "title" => capture = Some((true, String::new())),
                        "h1" => capture = Some((false, String::new())),
                        "li" => out.push_str("\n- "),
                        "br" => out.push('\n'),
                        "td" | "th" => out.push(' '),
                        name if is_block(name) => out.push_str("\n\n"),
                        _ => {
                            if let Some(level) = heading(e) {
                                out.push_str("\n\n");
                                out.push_str(&"#".repeat(level));
                                out.push(' ');
                            }
                        }
                    }
                }
                Node::Text(t) if skipping == 0 => match &mut capture {
                    Some((_, buf)) => buf.push_str(t),
                    None => out.push_str(t),
                },
                _ => {}
            },
            ego_tree::iter::Edge::Close(node) => {
                let Node::Element(e) = node.value() else {
                    continue;
                };
                if matches!(e.name(), "script" | "style" | "noscript" | "template") {
                    skipping = skipping.saturating_sub(1);
                    continue;
                }
                if skipping > 0 {
                    continue;
                }
                match e.name() {
                    "title" | "h1" => {
                        if let Some((is_title, text)) = capture.take() {
                            let text = collapse(&text);
                            if is_title && title.is_none() && !text.is_empty() {
                                title = Some(text.clone());
                            }
                            if !is_title {
                                if h1.is_none() && !text.is_empty() {
                                    h1 = Some(text.clone());
                                }
                                out.push_str("\n\n# ");
                                out.push_str(&text);
                                out.push_str("\n\n");
                            }
                        }
                    }
                    name if is_block(name) => out.push_str("\n\n"),
                    _ => {
                        if heading(e).is_some() {
                            out.push_str("\n\n");
                        }
                    }
                }
            }
        }
    }
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

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "section"
            | "article"
            | "ul"
            | "ol"
            | "table"
            | "tr"
            | "pre"
            | "blockquote"
            | "header"
            | "footer"
            | "main"
            | "nav"
    )
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
}
