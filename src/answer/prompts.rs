//! Prompt templates: what the model is told, and what the bot says without it.
//!
//! Four templates, built in from `prompts/` and overridable per tenant (`PUT /v1/prompts/{name}`,
//! stored in SQL), rendered with MiniJinja (Jinja2 syntax). Variables not in a template's context
//! are errors, so a typo is refused when the override is saved, not found in a conversation.
//!
//! | name | rendered into | variables |
//! |---|---|---|
//! | `persona` | the start of the system message | `assistant`, `channel` |
//! | `answer` | the rest of the system message | `assistant`, `channel`, `question`, `sources` (`n`, `title`, `section`, `text`) |
//! | `no_answer` | the reply when no knowledge matches | `assistant`, `channel`, `question`, `reason` (`no_documents`, `no_match`) |
//! | `fallback` | the reply quoting the best passage when the model is not answering | `assistant`, `channel`, `question`, `source` (`title`, `section`, `text`), `reason` (`no_model`, `unavailable`, `timeout`, `error`, `empty`, `ungrounded`: the written answer did not match its sources) |

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// The template names, in the order listed.
pub const NAMES: [&str; 4] = ["persona", "answer", "no_answer", "fallback"];

/// The built-in text of a template.
pub fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        "persona" => include_str!("../../prompts/persona.jinja"),
        "answer" => include_str!("../../prompts/answer.jinja"),
        "no_answer" => include_str!("../../prompts/no_answer.jinja"),
        "fallback" => include_str!("../../prompts/fallback.jinja"),
        _ => return None,
    })
}

/// What a template names in its text: `sources` (and its items) for `answer`, `source` for
/// `fallback`.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub n: usize,
    pub title: String,
    pub section: String,
    pub text: String,
}

/// Everything a template may use; each template sees the fields its row above names.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Context {
    pub assistant: String,
    pub channel: String,
    pub question: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Source>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no template is called {0:?} (there are: persona, answer, no_answer, fallback)")]
    Unknown(String),
    #[error("{0}")]
    Template(String),
}

/// A tenant's templates: the built-in ones with the tenant's overrides on top.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    overrides: HashMap<String, String>,
}

impl Prompts {
    pub fn with_overrides(overrides: HashMap<String, String>) -> Prompts {
        Prompts { overrides }
    }

    /// Renders `name`. A tenant's template that fails (it was valid when saved, but a later
    /// version may give it a context it does not expect) falls back to the built-in one.
    pub fn render(&self, name: &str, context: &Context) -> Result<String, PromptError> {
        let builtin = builtin(name).ok_or_else(|| PromptError::Unknown(name.to_owned()))?;
        if let Some(body) = self.overrides.get(name) {
            match render_text(name, body, context) {
                Ok(text) => return Ok(text),
                Err(e) => {
                    tracing::warn!(template = name, error = %e, "a tenant's prompt template failed; using the built-in one");
                }
            }
        }
        render_text(name, builtin, context)
    }

    /// Renders `name` where it costs least: inline when the tenant's template (if it has one)
    /// is [`plain`] substitution — its work is linear in its own size and its values', and a
    /// hop to the blocking pool and back would cost more than the rendering (a context switch
    /// or two per answer, measured in the channels bench) — otherwise on the blocking pool,
    /// within [`RENDER_TIMEOUT`] ([`off_runtime`]). The built-in templates are ours and a few
    /// hundred steps.
    pub async fn render_where_cheapest(
        self,
        name: &'static str,
        context: Context,
    ) -> Result<String, PromptError> {
        if self.overrides.get(name).is_none_or(|body| plain(body)) {
            return self.render(name, &context);
        }
        off_runtime(move || self.render(name, &context)).await?
    }
}

/// Whether a template is plain substitution: text with `{{ name }}` or `{{ name.field }}`
/// expressions only (whitespace control allowed) — no tags, comments, filters, calls,
/// operators or literals, so nothing in it loops or builds values. Deliberately narrow: anything
/// else is treated as arbitrary work.
pub fn plain(body: &str) -> bool {
    if body.contains("{%") || body.contains("{#") {
        return false;
    }
    let mut rest = body;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return false;
        };
        let inner = after[..close]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let is_path = !inner.is_empty()
            && inner.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !is_path {
            return false;
        }
        rest = &after[close + 2..];
    }
    true
}

/// Steps (MiniJinja instructions) one rendering may take: the built-in templates take a few
/// hundred; a tenant's nested `range(100000)` loops run out long before they hurt anyone.
pub const FUEL: u64 = 50_000;
/// Longest text one rendering may produce.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Longest wait for a rendering run off the async workers ([`off_runtime`]); fuel bounds the
/// work, this bounds the wait whatever happens.
pub const RENDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Renders any template text (a program's message, say) with the same limits as the prompts:
/// fuel, recursion, output size; an undefined variable is an error.
pub fn render_text(
    name: &str,
    body: &str,
    context: &impl Serialize,
) -> Result<String, PromptError> {
    let env = compiled(name, body)?;
    let template = env
        .get_template(name)
        .map_err(|e| PromptError::Template(describe(&e)))?;
    let mut out = Capped::default();
    template
        .render_captured_to(context, &mut out)
        .map_err(|e| {
            if out.overflowed {
                PromptError::Template(format!(
                    "the template renders more than {} KiB",
                    MAX_OUTPUT_BYTES / 1024
                ))
            } else {
                PromptError::Template(describe(&e))
            }
        })?;
    let text = String::from_utf8(out.bytes)
        .map_err(|_| PromptError::Template("the template renders invalid UTF-8".into()))?;
    Ok(text.trim().to_owned())
}

/// Template source kept compiled, in bytes, at most; past it the cache starts again.
const COMPILED_BYTES: usize = 1024 * 1024;

/// Compiled templates by name and text.
#[derive(Default)]
struct Compiled {
    by_name: HashMap<String, HashMap<String, Arc<Environment<'static>>>>,
    bytes: usize,
}

/// `body` compiled as template `name`, in an environment with the rendering limits (fuel,
/// recursion, strict undefined), from a cache: every answer renders a template, and building an
/// environment (its built-in filters, tests and globals) and compiling the text cost more than
/// rendering a short one. Fuel is counted per rendering, so sharing the compiled template
/// changes no limit (test `fuel_is_counted_per_rendering_of_a_cached_template`).
fn compiled(name: &str, body: &str) -> Result<Arc<Environment<'static>>, PromptError> {
    static CACHE: LazyLock<Mutex<Compiled>> = LazyLock::new(Mutex::default);
    let lock = || {
        CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(env) = lock().by_name.get(name).and_then(|texts| texts.get(body)) {
        return Ok(env.clone());
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(false);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(32);
    env.add_template_owned(name.to_owned(), body.to_owned())
        .map_err(|e| PromptError::Template(describe(&e)))?;
    let env = Arc::new(env);
    let mut cache = lock();
    if cache.bytes + name.len() + body.len() > COMPILED_BYTES {
        *cache = Compiled::default();
    }
    cache.bytes += name.len() + body.len();
    cache
        .by_name
        .entry(name.to_owned())
        .or_default()
        .insert(body.to_owned(), env.clone());
    Ok(env)
}

/// The variables a template reads (dotted: `contact.name`, `fields.goal`), or why it does not
/// parse.
pub fn template_variables(body: &str) -> Result<std::collections::HashSet<String>, PromptError> {
    let mut env = Environment::new();
    env.set_recursion_limit(32);
    env.add_template("t", body)
        .map_err(|e| PromptError::Template(describe(&e)))?;
    let template = env
        .get_template("t")
        .map_err(|e| PromptError::Template(describe(&e)))?;
    Ok(template.undeclared_variables(true))
}

/// An output that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// MiniJinja's message: kind, detail, and where (`syntax error: … (in persona:1)`).
fn describe(e: &minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!("the template does too much work (more than {FUEL} steps): {e}");
    }
    e.to_string()
}

/// Runs template work on the blocking pool, never on the async workers, and gives up waiting
/// after [`RENDER_TIMEOUT`].
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PromptError> {
    match tokio::time::timeout(RENDER_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(PromptError::Template(format!(
            "rendering the template failed: {e}"
        ))),
        Err(_) => Err(PromptError::Template(format!(
            "rendering the template took longer than {} s",
            RENDER_TIMEOUT.as_secs()
        ))),
    }
}

/// A context with every variable `name` may use, for checking a template before it is saved.
pub fn sample_context(name: &str) -> Context {
    let source = Source {
        n: 1,
        title: "Sleep".into(),
        section: "Evening routine".into(),
        text: "Keep the same bedtime every day.".into(),
    };
    let mut context = Context {
        assistant: "Demo".into(),
        channel: "widget".into(),
        question: "How do I sleep better?".into(),
        ..Context::default()
    };
    match name {
        "answer" => context.sources = Some(vec![source]),
        "no_answer" => context.reason = Some("no_match".into()),
        "fallback" => {
            context.source = Some(source);
            context.reason = Some("timeout".into());
        }
        _ => {}
    }
    context
}

/// Checks a template a tenant wants to save: known name, valid syntax, renders with every
/// variable it may see, and says something.
pub fn validate(name: &str, body: &str) -> Result<(), PromptError> {
    if builtin(name).is_none() {
        return Err(PromptError::Unknown(name.to_owned()));
    }
    if body.len() > 16 * 1024 {
        return Err(PromptError::Template(
            "a template may be at most 16 KiB".into(),
        ));
    }
    let mut contexts = vec![sample_context(name)];
    if name == "no_answer" {
        let mut other = sample_context(name);
        other.reason = Some("no_documents".into());
        contexts.push(other);
    }
    for context in contexts {
        let text = render_text(name, body, &context)?;
        if text.is_empty() {
            return Err(PromptError::Template(
                "the template renders to nothing".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_substitution_counts_as_plain() {
        for body in [
            "echo: {{ question }}",
            "{{- question -}} and {{contact.name}}",
            "no expressions at all",
            "a lone } or { or }} is text",
            "",
        ] {
            assert!(plain(body), "{body:?}");
        }
        for body in [
            "{{ question|upper }}",
            "{{ question ~ question }}",
            "{{ 'a' * 100000 }}",
            "{{ range(100000)|join }}",
            "{{ sources[0] }}",
            "{{ question() }}",
            "{% for i in range(10) %}x{% endfor %}",
            "{# a comment #}",
            "{{ question }",
            "{{ }}",
            "{{ 9lives }}",
            "{{ a..b }}",
            "{{ é }}",
        ] {
            assert!(!plain(body), "{body:?}");
        }
    }

    #[tokio::test]
    async fn plain_and_other_templates_render_the_same_wherever_they_run() {
        let context = Context {
            question: "hi {{ there }}".into(),
            ..sample_context("no_answer")
        };
        for (body, want) in [
            ("echo: {{ question }}", "echo: hi {{ there }}"),
            ("{{ question|upper }}", "HI {{ THERE }}"),
        ] {
            let prompts =
                Prompts::with_overrides(HashMap::from([("no_answer".to_owned(), body.to_owned())]));
            let text = prompts
                .render_where_cheapest("no_answer", context.clone())
                .await
                .expect("renders");
            assert_eq!(text, want);
        }
        // A tenant's template that fails falls back to the built-in one, inline too.
        let broken = Prompts::with_overrides(HashMap::from([(
            "no_answer".to_owned(),
            "{{ nothing_like_this }}".to_owned(),
        )]));
        let text = broken
            .render_where_cheapest("no_answer", context.clone())
            .await
            .expect("the built-in one");
        assert_eq!(
            text,
            Prompts::default()
                .render("no_answer", &context)
                .expect("built-in")
        );
    }

    /// A template is compiled once and rendered many times: its fuel is counted per rendering.
    /// This one takes ~2,000 steps; a shared budget would run out before the 50th rendering.
    #[test]
    fn fuel_is_counted_per_rendering_of_a_cached_template() -> Result<(), PromptError> {
        let body = "{% for i in range(500) %}{{ question }}{% endfor %}";
        let context = sample_context("no_answer");
        for _ in 0..100 {
            let text = render_text("no_answer", body, &context)?;
            assert_eq!(text.len(), 500 * context.question.len());
        }
        // And a template over the limit still runs out, cached or not.
        let greedy = "{% for i in range(100000) %}{{ question }}{% endfor %}";
        for _ in 0..2 {
            let e = render_text("no_answer", greedy, &context).expect_err("out of fuel");
            assert!(e.to_string().contains("does too much work"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn every_builtin_template_renders_with_its_context() -> Result<(), PromptError> {
        for name in NAMES {
            validate(name, builtin(name).unwrap_or_default())?;
        }
        let prompts = Prompts::default();
        let mut context = sample_context("answer");
        context.sources = Some(vec![
            Source {
                n: 1,
                title: "Sleep".into(),
                section: "".into(),
                text: "Dark rooms help.".into(),
            },
            Source {
                n: 2,
                title: "Stress".into(),
                section: "Breathing".into(),
                text: "Breathe out slowly.".into(),
            },
        ]);
        let text = prompts.render("answer", &context)?;
        assert!(text.contains("[1] Sleep\nDark rooms help."), "{text}");
        assert!(
            text.contains("[2] Stress — Breathing\nBreathe out slowly."),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn overrides_win_and_broken_ones_fall_back() -> Result<(), PromptError> {
        let prompts = Prompts::with_overrides(HashMap::from([
            (
                "persona".to_owned(),
                "You are {{ assistant }}, a sleep coach.".to_owned(),
            ),
            ("no_answer".to_owned(), "{{ nonsense.field }}".to_owned()),
        ]));
        let context = sample_context("persona");
        assert_eq!(
            prompts.render("persona", &context)?,
            "You are Demo, a sleep coach."
        );
        let no_answer = prompts.render("no_answer", &sample_context("no_answer"))?;
        assert!(
            no_answer.starts_with("I couldn't find anything"),
            "{no_answer}"
        );
        Ok(())
    }

    #[test]
    fn invalid_templates_are_refused_with_a_reason() {
        let unknown = validate("greeting", "hi").err().map(|e| e.to_string());
        assert!(unknown.is_some_and(|e| e.contains("no template")));
        let syntax = validate("persona", "{% if %}").err().map(|e| e.to_string());
        assert!(syntax.is_some_and(|e| e.contains("syntax")), "syntax");
        let typo = validate("persona", "You are {{ asistant }}")
            .err()
            .map(|e| e.to_string());
        assert!(typo.is_some_and(|e| e.contains("undefined")), "undefined");
        // `sources` exists for `answer` only.
        assert!(validate("persona", "{{ sources }}").is_err());
        assert!(validate("answer", "{% for s in sources %}{{ s.text }}{% endfor %}").is_ok());
        assert!(validate("fallback", "   ").is_err());
    }
}
