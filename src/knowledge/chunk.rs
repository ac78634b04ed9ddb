//! Token-aware chunking that follows the document's structure.
//!
//! A document (Markdown, or text extracted from HTML/PDF) is cut into sections at its headings,
//! sections into blocks at blank lines (a fenced code block is one block), and blocks are packed
//! into chunks of at most `max_tokens` tokens. A block too large for one chunk is cut at sentence
//! ends, and a sentence too large at word boundaries. Consecutive chunks of a section overlap by
//! up to `overlap_tokens` (whole sentences from the end of the previous chunk), so an answer that
//! straddles a cut is still found whole in one chunk.
//!
//! Tokens are counted with tiktoken's `o200k_base`. That is not the chat model's tokenizer (there
//! is no single one), so counts are budgets, not exact lengths.

use tiktoken_rs::CoreBPE;

/// Chunking parameters.
#[derive(Debug, Clone, Copy)]
pub struct ChunkConfig {
    pub max_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            max_tokens: 256,
            overlap_tokens: 32,
        }
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The heading path above the chunk (`Setup > Install`), empty before the first heading.
    pub heading: String,
    pub text: String,
    pub tokens: usize,
}

/// The shared tokenizer (built once, ~0.1 s).
pub fn tokenizer() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

pub fn count_tokens(text: &str) -> usize {
    tokenizer().encode_ordinary(text).len()
}

/// Cuts `text` (Markdown or plain) into chunks.
pub fn chunk(text: &str, config: ChunkConfig) -> Vec<Chunk> {
    let max = config.max_tokens.max(16);
    let overlap = config.overlap_tokens.min(max / 2);
    let mut chunks = Vec::new();
    for section in sections(text) {
        let heading = section.path.join(" > ");
        // Pieces no larger than `max` tokens, in order.
        let mut pieces: Vec<(String, usize)> = Vec::new();
        for block in &section.blocks {
            let tokens = count_tokens(block);
            if tokens <= max {
                pieces.push((block.clone(), tokens));
            } else {
                pieces.extend(split_large(block, max));
            }
        }
        pack(&heading, pieces, max, overlap, &mut chunks);
    }
    chunks
}

struct Section {
    path: Vec<String>,
    blocks: Vec<String>,
}

/// Sections at Markdown headings (ATX `#` and setext underlines), blocks at blank lines.
fn sections(text: &str) -> Vec<Section> {
    let mut out = vec![Section {
        path: Vec::new(),
        blocks: Vec::new(),
    }];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut fence: Option<&str> = None;
    let lines: Vec<&str> = text.lines().collect();
    let flush = |block: &mut Vec<&str>, out: &mut Vec<Section>| {
        let joined = block.join("\n");
        let joined = joined.trim();
        if !joined.is_empty()
            && let Some(section) = out.last_mut()
        {
            section.blocks.push(joined.to_owned());
        }
        block.clear();
    };
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(marker) = fence {
            block.push(line);
            if trimmed.starts_with(marker) {
                fence = None;
                flush(&mut block, &mut out);
            }
            i += 1;
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            flush(&mut block, &mut out);
            fence = Some(if trimmed.starts_with("```") {
                "```"
            } else {
                "~~~"
            });
            block.push(line);
            i += 1;
            continue;
        }
        let atx = trimmed
            .bytes()
            .take_while(|b| *b == b'#')
            .count()
            .clamp(0, 7);
        let setext = i + 1 < lines.len() && !trimmed.is_empty() && block.is_empty() && {
            let next = lines[i + 1].trim();
            next.len() >= 3 && (next.bytes().all(|b| b == b'=') || next.bytes().all(|b| b == b'-'))
        };
        let heading = if (1..=6).contains(&atx) && trimmed[atx..].starts_with(' ') {
            Some((
                atx,
                trimmed[atx..]
                    .trim()
                    .trim_end_matches('#')
                    .trim()
                    .to_owned(),
            ))
        } else if setext {
            let level = if lines[i + 1].trim().starts_with('=') {
                1
            } else {
                2
            };
            i += 1;
            Some((level, trimmed.trim().to_owned()))
        } else {
            None
        };
        if let Some((level, title)) = heading {
            flush(&mut block, &mut out);
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            out.push(Section {
                path: path.iter().map(|(_, t)| t.clone()).collect(),
                blocks: Vec::new(),
            });
        } else if trimmed.is_empty() {
            flush(&mut block, &mut out);
        } else {
            block.push(line);
        }
        i += 1;
    }
    flush(&mut block, &mut out);
    out.retain(|s| !s.blocks.is_empty());
    out
}

/// A block larger than `max` tokens, cut at sentence ends, and sentences at words.
fn split_large(block: &str, max: usize) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for sentence in sentences(block) {
        let tokens = count_tokens(&sentence);
        if tokens <= max {
            out.push((sentence, tokens));
            continue;
        }
        let mut current = String::new();
        for word in sentence.split_whitespace() {
            let candidate = if current.is_empty() {
                word.to_owned()
            } else {
                format!("{current} {word}")
            };
            if count_tokens(&candidate) > max && !current.is_empty() {
                let tokens = count_tokens(&current);
                out.push((std::mem::take(&mut current), tokens));
                current = word.to_owned();
            } else {
                current = candidate;
            }
        }
        if !current.is_empty() {
            let tokens = count_tokens(&current);
            out.push((current, tokens));
        }
    }
    out
}

/// Sentences: cut after `.`, `?`, `!` followed by whitespace, and at line breaks.
fn sentences(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = block.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            push_trimmed(&mut out, &mut current);
            continue;
        }
        current.push(c);
        if matches!(c, '.' | '?' | '!') && chars.peek().is_some_and(|n| n.is_whitespace()) {
            push_trimmed(&mut out, &mut current);
        }
    }
    push_trimmed(&mut out, &mut current);
    out
}

fn push_trimmed(out: &mut Vec<String>, current: &mut String) {
    let t = current.trim();
    if !t.is_empty() {
        out.push(t.to_owned());
    }
    current.clear();
}

/// Packs pieces into chunks of at most `max` tokens; each new chunk starts with up to `overlap`
/// tokens of the previous one's last pieces (sentences of a split block, or whole small blocks).
fn pack(
    heading: &str,
    pieces: Vec<(String, usize)>,
    max: usize,
    overlap: usize,
    out: &mut Vec<Chunk>,
) {
    let mut current: Vec<(String, usize)> = Vec::new();
    let mut size = 0usize;
    let emit = |current: &[(String, usize)], out: &mut Vec<Chunk>| {
        if current.is_empty() {
            return;
        }
        let text = current
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        let tokens = count_tokens(&text);
        out.push(Chunk {
            heading: heading.to_owned(),
            text,
            tokens,
        });
    };
    let mut fresh = 0usize; // pieces in `current` not yet emitted in an earlier chunk
    for (piece, tokens) in pieces {
        // Separators cost about one token per join.
        if size + tokens + current.len() > max && fresh > 0 {
            emit(&current, out);
            // Carry the tail over, within the overlap budget and leaving room for this piece.
            let mut carried: Vec<(String, usize)> = Vec::new();
            let mut carried_size = 0;
            for (text, t) in current.iter().rev() {
                if carried_size + t > overlap || carried_size + t + tokens + carried.len() + 1 > max
                {
                    break;
                }
                carried_size += t;
                carried.insert(0, (text.clone(), *t));
            }
            current = carried;
            size = carried_size;
            fresh = 0;
        }
        size += tokens;
        current.push((piece, tokens));
        fresh += 1;
    }
    if fresh > 0 {
        emit(&current, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_headings_and_keep_code_blocks_whole() {
        let doc = "Intro line.\n\n# Setup\n\nInstall it.\n\n## Linux\n\n```sh\napt install x\n\n# not a heading\n```\n\nDone.\n\nTitle Two\n=========\n\nLast.";
        let chunks = chunk(doc, ChunkConfig::default());
        let headings: Vec<&str> = chunks.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(headings, ["", "Setup", "Setup > Linux", "Title Two"]);
        assert!(
            chunks[2].text.contains("# not a heading"),
            "{:?}",
            chunks[2]
        );
        assert!(chunks[2].text.ends_with("Done."));
    }

    #[test]
    fn long_text_is_cut_within_the_budget_with_overlap() {
        let sentence = "The quick brown fox jumps over the lazy dog near the river bank.";
        let text: String = (0..120)
            .map(|i| format!("{sentence} Number {i}. "))
            .collect();
        let config = ChunkConfig {
            max_tokens: 100,
            overlap_tokens: 20,
        };
        let chunks = chunk(&text, config);
        assert!(chunks.len() > 5, "{}", chunks.len());
        for c in &chunks {
            assert!(c.tokens <= 100 + 10, "chunk of {} tokens", c.tokens);
        }
        // Consecutive chunks share text (the overlap), and nothing is lost.
        for pair in chunks.windows(2) {
            let last_sentence = pair[0].text.rsplit("\n\n").next().unwrap_or("");
            assert!(
                pair[1].text.contains(last_sentence),
                "no overlap between chunks"
            );
        }
        for i in 0..120 {
            let needle = format!("Number {i}.");
            assert!(
                chunks.iter().any(|c| c.text.contains(&needle)),
                "lost {needle}"
            );
        }
    }

    #[test]
    fn a_single_huge_word_run_is_still_cut() {
        let text = "word ".repeat(2_000);
        let chunks = chunk(
            &text,
            ChunkConfig {
                max_tokens: 64,
                overlap_tokens: 0,
            },
        );
        assert!(chunks.iter().all(|c| c.tokens <= 70));
        let words: usize = chunks
            .iter()
            .map(|c| c.text.split_whitespace().count())
            .sum();
        assert_eq!(words, 2_000);
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk("  \n\n  ", ChunkConfig::default()).is_empty());
    }
}
