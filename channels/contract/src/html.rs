//! Shared by every reader of HTML from outside (documents a creator uploads, mail bodies): the
//! guard that keeps character references away from html5gum's tokenizer.
//!
//! html5gum finds a named reference by trying every entity of its first letter in turn, so 16 MiB
//! of `&lt` took seconds. Readers replace every `&` that could start a reference with
//! [`AMPERSAND`], which the tokenizer passes through as text, and decode references themselves
//! (with `htmlize`) in the text they keep, after putting `&` back.

/// Stands for `&` while the tokenizer runs: a private-use character that means nothing in a page.
pub const AMPERSAND: char = '\u{E000}';

/// `html` with each `&` followed by a letter, digit or `#` replaced by [`AMPERSAND`] (and any
/// [`AMPERSAND`] already in it by U+FFFD: it means nothing in a page, and would come back as
/// `&`); `None` when nothing changes. Linear in the input.
pub fn escape_references(html: &str) -> Option<String> {
    let cleaned = html
        .contains(AMPERSAND)
        .then(|| html.replace(AMPERSAND, "\u{FFFD}"));
    let html = cleaned.as_deref().unwrap_or(html);
    let bytes = html.as_bytes();
    let starts = |i: usize| {
        bytes
            .get(i + 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'#')
    };
    let mut out: Option<String> = None;
    let mut last = 0;
    for (i, _) in html.match_indices('&').filter(|(i, _)| starts(*i)) {
        let out = out.get_or_insert_with(|| String::with_capacity(html.len() + html.len() / 8));
        out.push_str(&html[last..i]);
        out.push(AMPERSAND);
        last = i + 1;
    }
    match out {
        Some(mut out) => {
            out.push_str(&html[last..]);
            Some(out)
        }
        None => cleaned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_could_start_a_reference_is_marked() {
        assert_eq!(escape_references("a & b"), None);
        assert_eq!(
            escape_references("&lt;x&#38;").as_deref(),
            Some("\u{E000}lt;x\u{E000}#38;")
        );
        assert_eq!(
            escape_references("\u{E000}&amp;").as_deref(),
            Some("\u{FFFD}\u{E000}amp;")
        );
        let big = "&lt".repeat(1 << 20);
        assert_eq!(
            escape_references(&big).map(|s| s.len()),
            Some(big.len() / 3 * 5)
        );
    }
}
