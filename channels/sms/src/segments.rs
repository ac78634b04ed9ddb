//! SMS segments: how much text one SMS carries, and cutting a long reply into SMS-sized messages.
//!
//! An SMS carries 140 bytes: 160 GSM-7 septets, or 70 UCS-2 code units when any character is
//! outside the GSM 03.38 alphabet (one emoji turns the whole message into UCS-2). A longer message
//! is concatenated: each segment spends a header on reassembly and keeps 153 septets or 67 code
//! units. A segment never ends in the middle of an extension character (`€`, `{`, … — an escape
//! septet plus the character) or of a surrogate pair (an emoji is two UTF-16 code units), so the
//! count is a packing, not a division.
//!
//! Twilio bills and paces by segment and concatenates at most 10; [`split`] cuts a longer reply
//! into several messages, each within the limit, at whitespace when it can and never inside a
//! character cluster. Everything here is linear in the length of the text: replies are ours, but
//! a tenant's template or an agent can send anything.

use unicode_segmentation::UnicodeSegmentation;

/// How an SMS encodes its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 7-bit alphabet (with its extension table).
    Gsm7,
    /// UTF-16 code units (UCS-2 as phones display it).
    Ucs2,
}

/// Septets in a single GSM-7 SMS.
pub const GSM7_SINGLE: usize = 160;
/// Septets per segment of a concatenated GSM-7 SMS.
pub const GSM7_SEGMENT: usize = 153;
/// UTF-16 code units in a single UCS-2 SMS.
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 code units per segment of a concatenated UCS-2 SMS.
pub const UCS2_SEGMENT: usize = 67;

/// The GSM 03.38 basic character set in table order (0x00-0x7F; 0x1B, the escape to the
/// extension table, left out).
pub const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡\
ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each character is sent as the escape and itself.
pub const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// The ASCII characters of a set, one bit per code point.
const fn ascii_bits(set: &str) -> u128 {
    let bytes = set.as_bytes();
    let mut bits = 0u128;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] < 128 {
            bits |= 1 << bytes[i];
        }
        i += 1;
    }
    bits
}

const ASCII_BASIC: u128 = ascii_bits(GSM7_BASIC);
const ASCII_EXTENSION: u128 = ascii_bits(GSM7_EXTENSION);

/// The basic set's other characters, sorted (checked against [`GSM7_BASIC`] by a test).
const NON_ASCII_BASIC: [char; 39] = [
    '¡', '£', '¤', '¥', '§', '¿', 'Ä', 'Å', 'Æ', 'Ç', 'É', 'Ñ', 'Ö', 'Ø', 'Ü', 'ß', 'à', 'ä', 'å',
    'æ', 'è', 'é', 'ì', 'ñ', 'ò', 'ö', 'ø', 'ù', 'ü', 'Γ', 'Δ', 'Θ', 'Λ', 'Ξ', 'Π', 'Σ', 'Φ', 'Ψ',
    'Ω',
];

/// Septets a character takes in GSM-7: 1 in the basic set, 2 in the extension table (escape +
/// character), `None` outside the alphabet.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if c.is_ascii() {
        let bit = 1u128 << (c as u32);
        if ASCII_BASIC & bit != 0 {
            Some(1)
        } else if ASCII_EXTENSION & bit != 0 {
            Some(2)
        } else {
            None
        }
    } else if NON_ASCII_BASIC.binary_search(&c).is_ok() {
        Some(1)
    } else if c == '€' {
        Some(2)
    } else {
        None
    }
}

/// The encoding an SMS with this text uses.
pub fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// The segments an SMS with this text takes (0 for an empty text).
pub fn segment_count(text: &str) -> usize {
    let mut fill = Fill::default();
    match encoding(text) {
        Encoding::Gsm7 => {
            for c in text.chars() {
                fill.add(gsm7_septets(c).unwrap_or(2), GSM7_SEGMENT);
            }
            fill.segments(GSM7_SINGLE)
        }
        Encoding::Ucs2 => {
            for c in text.chars() {
                fill.add(c.len_utf16(), UCS2_SEGMENT);
            }
            fill.segments(UCS2_SINGLE)
        }
    }
}

/// Cuts `text` into messages of at most `max_segments` segments each (at least 1), in order.
/// A text that fits is returned whole; an empty one gives no message. Cuts fall on a line break
/// or a space in the second half of a message when there is one (the whitespace at the cut is
/// dropped, and so is a piece that is only whitespace), else between two grapheme clusters; only
/// a cluster longer than a whole message is cut between its characters. Each message is measured
/// in its own encoding, as Twilio sends it. Linear in the length of the text.
pub fn split(text: &str, max_segments: u32) -> Vec<String> {
    let max = max_segments.max(1) as usize;
    if text.is_empty() {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let Some((end, breaks)) = fill_from(text, start, max) else {
            if start == 0 {
                // It all fits: the text as it is.
                return vec![text.to_owned()];
            }
            parts.push(text[start..].to_owned());
            break;
        };
        if end.0 == start {
            // One cluster longer than a whole message (a run of combining marks): cut it
            // between characters, the only place left.
            start = cut_inside(text, start, end.1, max, &mut parts);
            continue;
        }
        // Cut at the last line break, else the last space, in the second half of the message
        // (so no message is mostly empty), else before the cluster that did not fit. After a
        // cut at whitespace the clusters between it and `end` are scanned again, at most half
        // a message: the whole split stays linear.
        let half = start + (end.0 - start) / 2;
        let usable = |b: Option<Break>| b.filter(|b| b.at > start && b.at >= half);
        match usable(breaks.line).or(usable(breaks.space)) {
            Some(b) => {
                parts.push(text[start..b.at].trim_end().to_owned());
                start = b.next;
            }
            None => {
                parts.push(text[start..end.0].to_owned());
                start = end.0;
            }
        }
    }
    // Whitespace between two cuts is not worth an SMS.
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// A place to cut at whitespace: the message ends at `at`, the next one starts at `next`.
#[derive(Debug, Clone, Copy)]
struct Break {
    at: usize,
    next: usize,
}

/// The last line break and the last other whitespace seen while filling a message.
#[derive(Debug, Clone, Copy, Default)]
struct Breaks {
    line: Option<Break>,
    space: Option<Break>,
}

/// Fills one message from `start` (a cluster boundary, or the rest of a cluster cut inside)
/// cluster by cluster. `None` if the rest
/// of the text fits; else the first cluster that does not fit, as `(offset, end)`, and the
/// whitespace seen before it.
fn fill_from(text: &str, start: usize, max: usize) -> Option<((usize, usize), Breaks)> {
    let mut fill = PartFill::default();
    let mut breaks = Breaks::default();
    for (offset, cluster) in Clusters::at(text, start) {
        let mut grown = fill;
        // Most clusters are one ASCII byte: no character decoding for them.
        let (space, line) = match cluster.as_bytes() {
            &[byte] => {
                grown.add(char::from(byte));
                (byte.is_ascii_whitespace(), byte == b'\n')
            }
            _ => {
                grown.add_str(cluster);
                let space = cluster.chars().all(char::is_whitespace);
                (space, space && cluster.contains('\n'))
            }
        };
        if grown.segments() > max {
            return Some(((offset, offset + cluster.len()), breaks));
        }
        fill = grown;
        if space {
            let at = Break {
                at: offset,
                next: offset + cluster.len(),
            };
            if line {
                breaks.line = Some(at);
            } else {
                breaks.space = Some(at);
            }
        }
    }
    None
}

/// Cuts the oversized cluster `text[start..end]` between characters into full messages; the
/// start of what is left of it (the beginning of the next message).
fn cut_inside(text: &str, start: usize, end: usize, max: usize, parts: &mut Vec<String>) -> usize {
    let mut fill = PartFill::default();
    let mut piece = start;
    for (i, c) in text[start..end].char_indices() {
        let mut grown = fill;
        grown.add(c);
        if grown.segments() > max && start + i > piece {
            parts.push(text[piece..start + i].to_owned());
            piece = start + i;
            fill = PartFill::default();
            fill.add(c);
        } else {
            fill = grown;
        }
    }
    piece
}

/// The grapheme clusters of a text with their byte offsets, as `grapheme_indices` gives them,
/// with a fast path for ASCII: a byte followed by another ASCII byte (CR LF aside) is a cluster
/// of its own, so ASCII text does not pay for the full segmentation rules.
struct Clusters<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Clusters<'a> {
    /// The clusters from `at` on; `at` must be a cluster boundary for them to be the text's.
    fn at(text: &'a str, at: usize) -> Clusters<'a> {
        Clusters { text, at }
    }
}

impl<'a> Iterator for Clusters<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        let start = self.at;
        let rest = self.text.get(start..).filter(|r| !r.is_empty())?;
        let bytes = rest.as_bytes();
        let len = match (bytes[0], bytes.get(1)) {
            (b'\r', Some(b'\n')) => 2,
            (first, next) if first.is_ascii() && next.is_none_or(u8::is_ascii) => 1,
            // A cluster starts here (every cut is at one), so segmenting the rest from here
            // agrees with segmenting the whole text.
            _ => rest.graphemes(true).next().map_or(rest.len(), str::len),
        };
        self.at = start + len;
        Some((start, &rest[..len]))
    }
}

/// A concatenation packing in one encoding: units used, segments opened, units in the last one.
#[derive(Debug, Clone, Copy, Default)]
struct Fill {
    units: usize,
    segments: usize,
    last: usize,
}

impl Fill {
    /// Adds one indivisible unit (a character) of `width` code units/septets.
    fn add(&mut self, width: usize, per_segment: usize) {
        self.units += width;
        if self.segments == 0 || self.last + width > per_segment {
            self.segments += 1;
            self.last = width;
        } else {
            self.last += width;
        }
    }

    /// Segments taken: one if it all fits a single SMS, else the concatenated packing.
    fn segments(&self, single: usize) -> usize {
        match self.units {
            0 => 0,
            n if n <= single => 1,
            _ => self.segments,
        }
    }
}

/// One message being filled, measured both ways until a character outside GSM-7 decides.
#[derive(Debug, Clone, Copy, Default)]
struct PartFill {
    gsm: Fill,
    ucs2: Fill,
    ucs2_only: bool,
}

impl PartFill {
    fn add(&mut self, c: char) {
        match gsm7_septets(c) {
            Some(septets) => self.gsm.add(septets, GSM7_SEGMENT),
            None => self.ucs2_only = true,
        }
        self.ucs2.add(c.len_utf16(), UCS2_SEGMENT);
    }

    fn add_str(&mut self, s: &str) {
        for c in s.chars() {
            self.add(c);
        }
    }

    fn segments(&self) -> usize {
        if self.ucs2_only {
            self.ucs2.segments(UCS2_SINGLE)
        } else {
            self.gsm.segments(GSM7_SINGLE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn assert_parts_fit(text: &str, parts: &[String], max: u32) {
        for (i, p) in parts.iter().enumerate() {
            assert!(!p.is_empty(), "part {i} is empty");
            let n = segment_count(p);
            assert!(n <= max as usize, "part {i} takes {n} segments > {max}");
        }
        // Nothing is lost but the whitespace at the cuts.
        let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert_eq!(strip(&parts.concat()), strip(text));
    }

    #[test]
    fn the_gsm7_tables_are_whole() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
        let mut non_ascii: Vec<char> = GSM7_BASIC.chars().filter(|c| !c.is_ascii()).collect();
        non_ascii.sort();
        non_ascii.dedup();
        assert_eq!(non_ascii, NON_ASCII_BASIC);
        assert!(GSM7_BASIC.chars().all(|c| gsm7_septets(c) == Some(1)));
        assert!(GSM7_EXTENSION.chars().all(|c| gsm7_septets(c) == Some(2)));
        let all: Vec<char> = (0..=0x2FFFF).filter_map(char::from_u32).collect();
        let in_alphabet = all.iter().filter(|c| gsm7_septets(**c).is_some()).count();
        assert_eq!(in_alphabet, 137, "127 basic + 10 extension characters");
        for c in ['`', '\t', '\u{1B}', 'ç', 'ï', '€', 'Ç'] {
            let expected = match c {
                '€' => Some(2),
                'Ç' => Some(1),
                _ => None,
            };
            assert_eq!(gsm7_septets(c), expected, "{c:?}");
        }
    }

    #[test]
    fn gsm7_and_ucs2_are_told_apart() {
        assert_eq!(encoding("Hello @ £5, Ça va? {ok} €"), Encoding::Gsm7);
        assert_eq!(encoding("naïve"), Encoding::Ucs2, "ï is not in GSM-7");
        assert_eq!(encoding("hi 😀"), Encoding::Ucs2);
        assert_eq!(encoding("Привет"), Encoding::Ucs2);
        assert_eq!(encoding(""), Encoding::Gsm7);
    }

    #[test]
    fn single_and_concatenated_limits() {
        assert_eq!(segment_count(""), 0);
        assert_eq!(segment_count(&"a".repeat(160)), 1);
        assert_eq!(segment_count(&"a".repeat(161)), 2);
        assert_eq!(segment_count(&"a".repeat(306)), 2);
        assert_eq!(segment_count(&"a".repeat(307)), 3);
        // Extension characters count two septets.
        assert_eq!(segment_count(&"€".repeat(80)), 1);
        assert_eq!(segment_count(&"€".repeat(81)), 2);
        assert_eq!(segment_count(&"é".repeat(70)), 1, "é is GSM-7");
        assert_eq!(segment_count(&"ï".repeat(70)), 1);
        assert_eq!(segment_count(&"ï".repeat(71)), 2);
        assert_eq!(segment_count(&"ï".repeat(134)), 2);
        assert_eq!(segment_count(&"ï".repeat(135)), 3);
        // 35 emoji = 70 UTF-16 code units: one SMS.
        assert_eq!(segment_count(&"😀".repeat(35)), 1);
        assert_eq!(segment_count(&"😀".repeat(36)), 2);
    }

    #[test]
    fn escapes_and_surrogate_pairs_are_never_split_across_segments() {
        // 152 basic septets + `€` (2 septets) cannot share the first 153-septet segment.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        // Divided naively: 306 septets = 2 segments; packed: 152 | 2+152 = 154 > 153 → 3.
        assert_eq!(segment_count(&text), 3);
        // 66 code units + an emoji (2) cannot share a 67-unit segment.
        let text = format!("{}😀{}", "ï".repeat(66), "ï".repeat(66));
        assert_eq!(segment_count(&text), 3);
    }

    #[test]
    fn a_text_that_fits_is_sent_whole_and_long_ones_are_cut_at_whitespace() {
        assert_eq!(split("", 10), Vec::<String>::new());
        assert_eq!(split("hello", 1), vec!["hello"]);
        assert_eq!(split("  ", 1), vec!["  "], "a text that fits is left alone");
        // Trailing whitespace after the last cut is no message of its own.
        let padded = format!("{}{}", "word ".repeat(40), " ".repeat(300));
        let parts = split(&padded, 1);
        assert!(parts.iter().all(|p| !p.trim().is_empty()), "{parts:?}");
        assert_parts_fit(&padded, &parts, 1);
        let words = "lorem ipsum dolor sit amet ".repeat(40);
        let parts = split(&words, 1);
        assert!(parts.len() > 1);
        assert_parts_fit(&words, &parts, 1);
        for (i, p) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            assert!(!p.starts_with(' ') && (last || !p.ends_with(' ')), "{p:?}");
            assert!(
                words.contains(p.as_str()) && p.split(' ').all(|w| words.contains(w)),
                "cut inside a word: {p:?}"
            );
        }
        // A line break is preferred to a later space.
        let lines = format!("{}\n{}", "a b ".repeat(30), "c d ".repeat(30));
        let parts = split(&lines, 1);
        assert_eq!(parts[0], "a b ".repeat(30).trim_end());
        assert_parts_fit(&lines, &parts, 1);
    }

    #[test]
    fn a_3000_character_text_goes_as_two_messages_of_ten_segments() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(67);
        assert!(text.len() > 3000);
        let parts = split(&text[..3000], 10);
        assert_eq!(parts.len(), 2);
        assert_parts_fit(&text[..3000], &parts, 10);
        assert_eq!(split(&text[..1000], 10).len(), 1);
    }

    #[test]
    fn clusters_and_pairs_stay_whole() {
        // Family emoji (ZWJ sequence), flags, and an e with a combining accent.
        let family = "👨\u{200D}👩\u{200D}👧";
        let text = format!("{family}🇫🇷e\u{0301}").repeat(50);
        let clusters: std::collections::HashSet<&str> = text.graphemes(true).collect();
        assert_eq!(clusters.len(), 3);
        for max in [1, 2, 3] {
            let parts = split(&text, max);
            assert_parts_fit(&text, &parts, max);
            for p in &parts {
                assert!(
                    p.graphemes(true).all(|g| clusters.contains(g)),
                    "a cluster was cut: {p:?}"
                );
                assert!(!p.starts_with('\u{0301}') && !p.starts_with('\u{200D}'));
            }
        }
        // A cluster longer than a message is cut between characters, nothing lost.
        let zalgo = format!("a{}", "\u{0301}".repeat(500));
        let parts = split(&zalgo, 1);
        assert_eq!(parts.concat(), zalgo);
        assert_parts_fit(&zalgo, &parts, 1);
    }

    #[test]
    fn the_ascii_fast_path_agrees_with_full_segmentation() {
        let text = "ab\r\ncd\re\u{0301}x 👍🏽 🇫🇷🇩🇪!\n👨\u{200D}👩 नमस्ते z\u{0308}\r\n";
        let fast: Vec<(usize, &str)> = Clusters::at(text, 0).collect();
        let full: Vec<(usize, &str)> = text.grapheme_indices(true).collect();
        assert_eq!(fast, full);
    }

    #[test]
    fn each_message_is_measured_in_its_own_encoding() {
        // One emoji at the very end must not make the GSM-7 text before it UCS-2 sized: measured
        // as a whole it is 1,502 code units (23 UCS-2 segments), but it goes as 10 GSM-7
        // segments and the emoji alone.
        let text = format!("{}😀", "word ".repeat(300));
        assert_eq!(encoding(&text), Encoding::Ucs2);
        let parts = split(&text, 10);
        assert_eq!(parts.len(), 2);
        assert_eq!(encoding(&parts[0]), Encoding::Gsm7);
        assert_eq!(parts[1], "😀");
        assert_parts_fit(&text, &parts, 10);
    }

    #[test]
    fn a_megabyte_of_hostile_text_splits_in_linear_time() {
        let mb = 1 << 20;
        let cases = [
            ("emoji", "😀".repeat(mb / 4)),
            ("no spaces", "x".repeat(mb)),
            ("extension chars", "€{}[]~|^\\".repeat(mb / 11)),
            ("flags", "🇫🇷".repeat(mb / 8)),
            ("combining marks", format!("e{}", "\u{0301}".repeat(mb / 2))),
            ("zwj chain", "👨\u{200D}".repeat(mb / 7)),
            ("spaces", " ".repeat(mb)),
            ("one space early", format!("a {}", "b".repeat(mb))),
            ("line breaks", "ab\n".repeat(mb / 3)),
        ];
        for (name, text) in cases {
            let started = Instant::now();
            let parts = split(&text, 10);
            let took = started.elapsed();
            assert!(took < Duration::from_secs(1), "{name}: {took:?}");
            let started = Instant::now();
            let _ = segment_count(&text);
            assert!(started.elapsed() < Duration::from_secs(1), "{name}");
            assert_parts_fit(&text, &parts, 10);
        }
    }
}
