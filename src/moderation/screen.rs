//! The held-back sentence buffer for streamed answers: the widget shows an answer while the
//! model writes it, but a sentence reaches the preview only once it is complete and the
//! policy's outbound rules have passed the answer up to its end. When the rules would hold or
//! block the answer, the preview is withdrawn and nothing more is shown — the blocked sentence
//! never reaches the visitor; the stored answer (the tenant's safe fallback, or nothing while a
//! moderator decides) replaces the preview as usual.
//!
//! The text after the last complete sentence is never previewed: it arrives with the stored
//! answer. Each check reads the new sentences and the 1 KiB shown before them (a rule's match
//! may span sentences), so screening stays linear in the answer's length however many short
//! sentences a model writes; the whole answer is checked again before it is stored.

use std::sync::{Arc, Mutex};

use crate::answer::Deltas;

use super::{Action, Active};

/// How much of the text already shown each check reads again, in bytes.
const OVERLAP: usize = 1024;

/// A [`Deltas`] that forwards whole sentences once the rules pass them.
pub struct Screen<'a> {
    inner: &'a dyn Deltas,
    active: Arc<Active>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Everything the model has written so far.
    text: String,
    /// How many bytes of `text` the preview shows.
    shown: usize,
    /// The rules stopped the preview: nothing more is shown.
    stopped: bool,
}

impl<'a> Screen<'a> {
    pub fn new(inner: &'a dyn Deltas, active: Arc<Active>) -> Screen<'a> {
        Screen {
            inner,
            active,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether the rules stopped the preview.
    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The end (byte offset) of the last complete sentence in `text` after `from`: a `.`, `!`, `?`
/// or `…` (or their full-width forms) followed by white space, or a line break.
fn last_sentence_end(text: &str, from: usize) -> Option<usize> {
    let rest = &text[from..];
    let mut end = None;
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let after = i + c.len_utf8();
        let ends = c == '\n'
            || (matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
                && chars.peek().is_some_and(|(_, n)| n.is_whitespace()));
        if ends {
            end = Some(from + after);
        }
    }
    end
}

impl Deltas for Screen<'_> {
    fn delta(&self, text: &str) {
        let mut state = self.lock();
        if state.stopped {
            return;
        }
        state.text.push_str(text);
        let Some(end) = last_sentence_end(&state.text, state.shown) else {
            return;
        };
        let mut from = state.shown.saturating_sub(OVERLAP);
        while !state.text.is_char_boundary(from) {
            from -= 1;
        }
        let verdict = self.active.check(&state.text[from..end], false);
        if matches!(verdict.action, Action::Hold | Action::Block) {
            state.stopped = true;
            metrics::counter!("switchboard_preview_stopped_total").increment(1);
            if state.shown > 0 {
                self.inner.reset();
            }
            return;
        }
        let shown = state.shown;
        self.inner.delta(&state.text[shown..end]);
        state.shown = end;
    }

    fn reset(&self) {
        let mut state = self.lock();
        let shown = state.shown;
        *state = State::default();
        if shown > 0 {
            self.inner.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moderation::{Compiled, Policy};
    use serde_json::json;

    #[derive(Default)]
    struct Preview {
        frames: Mutex<Vec<String>>,
    }

    impl Deltas for Preview {
        fn delta(&self, text: &str) {
            self.frames.lock().expect("lock").push(text.to_owned());
        }
        fn reset(&self) {
            self.frames.lock().expect("lock").push("<reset>".to_owned());
        }
    }

    fn active(policy: serde_json::Value) -> Arc<Active> {
        let policy: Policy = serde_json::from_value(policy).expect("policy");
        Arc::new(Active::new(1, Compiled::new(policy).expect("compiles")))
    }

    fn feed(screen: &Screen<'_>, text: &str, piece: usize) {
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(piece) {
            screen.delta(&chunk.iter().collect::<String>());
        }
    }

    #[test]
    fn whole_sentences_are_shown_once_the_rules_pass_them() {
        let preview = Preview::default();
        let screen = Screen::new(&preview, active(json!({})));
        feed(
            &screen,
            "Sleep matters. Keep a routine!\nAnd the rest is",
            3,
        );
        let frames = preview.frames.lock().expect("lock").clone();
        assert_eq!(frames.concat(), "Sleep matters. Keep a routine!\n");
        assert!(!screen.stopped());
    }

    #[test]
    fn a_blocked_sentence_never_reaches_the_preview() {
        let policy = json!({ "rules": [
            { "id": "cure", "words": ["miracle cure"], "action": "block", "applies_to": "outbound" },
            { "id": "mild", "words": ["fine"], "action": "flag", "applies_to": "outbound" }
        ]});
        for piece in [1, 2, 5, 100] {
            let preview = Preview::default();
            let screen = Screen::new(&preview, active(policy.clone()));
            feed(
                &screen,
                "Rest is fine. Try this miracle cure tonight. Then sleep well. ",
                piece,
            );
            let frames = preview.frames.lock().expect("lock").clone();
            assert!(screen.stopped());
            assert!(
                frames.iter().all(|f| !f.contains("miracle")),
                "{piece}: {frames:?}"
            );
            if piece < 100 {
                // The first sentence (only flagged) was shown, then withdrawn.
                assert_eq!(frames.first().map(String::as_str), Some("Rest is fine."));
                assert_eq!(frames.last().map(String::as_str), Some("<reset>"));
            } else {
                // All at once: nothing was shown, so nothing is withdrawn.
                assert!(frames.is_empty(), "{frames:?}");
            }
        }
    }

    #[test]
    fn a_match_across_sentences_stops_it_too() {
        let policy = json!({ "rules": [
            { "id": "x", "regex": "(?s)stop\\. now", "action": "hold", "applies_to": "outbound" }
        ]});
        let preview = Preview::default();
        let screen = Screen::new(&preview, active(policy));
        feed(&screen, "Please stop. now go. ", 1);
        let frames = preview.frames.lock().expect("lock").clone();
        assert!(frames.iter().all(|f| !f.contains("now")), "{frames:?}");
        assert!(screen.stopped());
    }

    #[test]
    fn inbound_rules_do_not_stop_answers_and_a_reset_starts_over() {
        let policy = json!({ "rules": [
            { "id": "in", "words": ["refund"], "action": "block", "applies_to": "inbound" }
        ]});
        let preview = Preview::default();
        let screen = Screen::new(&preview, active(policy));
        feed(&screen, "A refund takes a week. ", 4);
        screen.reset();
        feed(&screen, "Again. ", 7);
        let frames = preview.frames.lock().expect("lock").clone();
        assert_eq!(frames, ["A refund takes a week.", "<reset>", "Again."]);
    }

    #[test]
    fn many_tiny_sentences_are_screened_in_linear_time() {
        let policy = json!({ "rules": [
            { "id": "x", "regex": "(?i)forbidden\\W+words", "action": "block", "applies_to": "outbound" }
        ]});
        let preview = Preview::default();
        let screen = Screen::new(&preview, active(policy));
        let started = std::time::Instant::now();
        // 200,000 sentences of one word, one delta each (a model writing "a." forever).
        for _ in 0..200_000 {
            screen.delta("é. ");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!screen.stopped());
        // A match spanning the last sentence boundary is still found.
        screen.delta("Forbidden. ");
        screen.delta("words now. ");
        assert!(screen.stopped());
    }

    #[test]
    fn sentence_ends_are_found_in_any_script() {
        assert_eq!(last_sentence_end("Hola. ¿Qué", 0), Some(5));
        assert_eq!(last_sentence_end("v1.2 is out", 0), None);
        assert_eq!(last_sentence_end("你好。 再见", 0), Some("你好。".len()));
        assert_eq!(last_sentence_end("a\nb", 0), Some(2));
        assert_eq!(last_sentence_end("Done. More. ", 6), Some(11));
    }
}
