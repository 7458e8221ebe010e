//! Prompts rendered from each row: minijinja templates over the column names.
//!
//! Templates are checked against the header before anything is sent: a misspelt `{{ revew }}`
//! is an error that names the column and lists the real ones, not ten thousand requests that say
//! "Review: ". Rendering uses strict undefined-variable handling for the same reason.
//!
//! A template is a small program, and one row of it can loop or recurse without end. Every
//! render has a budget, so a template cannot hang the pre-flight or exhaust memory: at most
//! [`TEMPLATE_FUEL`] steps (minijinja's `fuel`: three nested loops over a long cell run out in
//! milliseconds), a shallow nesting limit ([`TEMPLATE_DEPTH`], which keeps a recursive macro
//! that doubles a string from doubling more than a few times) and at most [`MAX_PROMPT_BYTES`]
//! of output. Steps are counted the same on every machine; what they cannot count (a string
//! that doubles in one step, forty times over) the watchdog of [`render_guard`] stops.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::base::error::Error;
use crate::engine::attach::{Kind, Wanted};
use crate::engine::input::{InputFile, Row, list_columns};
use crate::engine::render_guard;

const USER: &str = "user";
const SYSTEM: &str = "system";
/// Name under which every column is also reachable, for names that are not identifiers.
const ROW_VAR: &str = "row";

/// Steps one render may take. A prompt template that substitutes columns takes tens; one that
/// loops over a list in a cell, thousands. A million is about 20 ms of work, far beyond any
/// prompt, and ends three nested loops over a 3,000-character cell (27 billion steps) at once.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// minijinja's nesting budget (each `for`/`if` costs 1, a macro call about 5; the default is
/// 500). Prompts nest a few levels; 40 lets a recursive macro call itself only a handful of
/// times, so one that doubles a string on every call cannot grow it more than about a
/// thousandfold.
pub const TEMPLATE_DEPTH: usize = 40;
/// The largest prompt a render may produce: 32 MB, Anthropic's limit on a whole request (no
/// API accepts a larger body, and none has a context window near it).
pub const MAX_PROMPT_BYTES: usize = 32 * 1024 * 1024;

/// The rendered messages of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub system: Option<String>,
    /// The user prompt's text (its text segments joined, when it has attachments).
    pub user: String,
    /// The user prompt in order, text and attachments, when the template calls `image()` or
    /// `file()`; empty otherwise (a text-only request, sent exactly as before).
    pub parts: Vec<Segment>,
}

/// A piece of a user prompt with attachments.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    Attach(Wanted),
}

/// The template functions that attach a file: `{{ image(photo) }}`, `{{ file(scan) }}`. They
/// win over a column of the same name (reachable as `row.image`) in a template that calls them.
const FUNCTIONS: [&str; 2] = ["image", "file"];
/// What `image(cell)` renders to: a mark `\u{1}NONCE:INDEX\u{2}` naming the attachment's
/// place in [`Collector`], split out again after the render (a function cannot hand anything
/// but text back through minijinja). The nonce is random for each render, so a cell cannot
/// forge a mark: text in a cell that looks like one (or a stray `\u{1}`, the delimiter of
/// Hive exports) stays text, and only files the template asked for are read.
const MARK_OPEN: char = '\u{1}';
const MARK_CLOSE: char = '\u{2}';

/// Whether template `text` calls one of [`FUNCTIONS`]: a name followed by `(` inside a tag,
/// judged from minijinja's own tokens (so "the image(s)" in text, `{{ file }}` the column, a
/// string literal, a comment or `row.image(..)` are not calls). A template that does not lex
/// calls nothing (its parse error is reported when it is added).
fn calls_functions(text: &str) -> bool {
    use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
    // A unit struct without minijinja's `custom_syntax` feature, a real one with it.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = minijinja::syntax::SyntaxConfig::default();
    let Ok(tokens) = tokenize(text, false, syntax, WhitespaceConfig::default())
        .map(|t| t.map(|(token, _)| token))
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    tokens.windows(2).enumerate().any(|(i, w)| {
        let after_dot = i > 0 && matches!(tokens[i - 1], Token::Dot);
        matches!(w, [Token::Ident(name), Token::ParenOpen] if FUNCTIONS.contains(name))
            && !after_dot
    })
}

/// The attachments of one render, pushed by `image()`/`file()` as the template runs.
struct Collector {
    nonce: u128,
    wanted: std::sync::Arc<std::sync::Mutex<Vec<Wanted>>>,
}

impl Collector {
    fn new() -> Self {
        Collector {
            nonce: rand::random(),
            wanted: Default::default(),
        }
    }

    /// The text before a mark's index.
    fn prefix(&self) -> String {
        format!("{MARK_OPEN}{:032x}:", self.nonce)
    }

    /// The minijinja function for `kind`: records the cell, renders its mark.
    fn function(&self, kind: Kind) -> Value {
        let (wanted, prefix) = (self.wanted.clone(), self.prefix());
        Value::from_function(move |cell: Value| -> Result<String, minijinja::Error> {
            let Some(cell) = cell.as_str() else {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "{0}() takes a cell: a column name, or row.name (a column named {0} is \
                         row.{0} in a template that calls {0}())",
                        kind.function()
                    ),
                ));
            };
            let mut wanted = wanted.lock().unwrap_or_else(|e| e.into_inner());
            wanted.push(Wanted {
                kind,
                cell: cell.to_string(),
            });
            Ok(format!("{prefix}{}{MARK_CLOSE}", wanted.len() - 1))
        })
    }

    /// Splits a rendered prompt at this render's marks: its text (joined) and its segments in
    /// order. Whitespace-only text between attachments is dropped (Anthropic refuses such
    /// blocks). An error if an attachment's mark did not reach the output intact (a filter
    /// changed it).
    fn split(&self, out: &str) -> Result<(String, Vec<Segment>), String> {
        let wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let (prefix, mut seen) = (self.prefix(), vec![false; wanted.len()]);
        let (mut text, mut parts, mut pending) = (String::new(), Vec::new(), String::new());
        let mut rest = out;
        while let Some(open) = rest.find(&prefix) {
            let after = rest.get(open + prefix.len()..).unwrap_or("");
            let index = after
                .split_once(MARK_CLOSE)
                .and_then(|(i, tail)| Some((i.parse::<usize>().ok()?, tail)))
                .filter(|(i, _)| *i < wanted.len());
            let Some((i, tail)) = index else {
                // Not a mark after all: plain text, up to and including the prefix.
                pending.push_str(rest.get(..open + prefix.len()).unwrap_or(""));
                rest = after;
                continue;
            };
            pending.push_str(rest.get(..open).unwrap_or(""));
            push_text(&mut text, &mut parts, std::mem::take(&mut pending));
            parts.push(Segment::Attach(wanted[i].clone()));
            seen[i] = true;
            rest = tail;
        }
        pending.push_str(rest);
        push_text(&mut text, &mut parts, pending);
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(format!(
                "user template: the output of {}() did not reach the prompt as it was (a filter \
                 changed it?); write {{{{ {}(column) }}}} on its own",
                wanted[i].kind.function(),
                wanted[i].kind.function()
            ));
        }
        Ok((text, parts))
    }
}

/// Adds text between attachments, unless it is only whitespace.
fn push_text(text: &mut String, parts: &mut Vec<Segment>, t: String) {
    if !t.trim().is_empty() {
        text.push_str(&t);
        parts.push(Segment::Text(t));
    }
}

/// Compiled prompt templates for one run.
pub struct Prompts {
    env: Environment<'static>,
    /// `Some(i)`: the user prompt is column `i`, sent as is.
    prompt_column: Option<usize>,
    has_system: bool,
    /// The templates that are only text and `{{ column }}`, in their fast form.
    plain_user: Option<Plain>,
    plain_system: Option<Plain>,
    /// The user template calls `image()` or `file()`.
    attaches: bool,
    /// Renders that ran out of their budget. Past [`BUDGET_FAILURES`] the template is not run
    /// again (each such row costs a full budget, and the run cannot go ahead anyway).
    over_budget: std::sync::atomic::AtomicUsize,
}

/// Rows a template may run out of its budget on before it is no longer rendered.
const BUDGET_FAILURES: usize = 10;

/// A template that is only text and `{{ column }}` substitutions (most prompts are), rendered
/// by concatenation instead of through minijinja, which builds a context of every column for
/// each row: the render is done twice per row (pre-flight and send), and this way it costs a
/// tenth as much. Anything else (filters, tags, `row[...]`, whitespace control) uses minijinja.
#[derive(Debug)]
struct Plain(Vec<Part>);

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Column(usize),
}

impl Plain {
    /// The fast form of `source`, if it has one. Mirrors minijinja's defaults: one trailing
    /// newline of the template is dropped; values are written as they are (no escaping).
    fn new(source: &str, headers: &[String]) -> Option<Plain> {
        // As minijinja's lexer: a trailing `\n`, then (separately) a trailing `\r`.
        let rest = source.strip_suffix('\n').unwrap_or(source);
        let mut rest = rest.strip_suffix('\r').unwrap_or(rest);
        if rest.contains("{%") || rest.contains("{#") {
            return None;
        }
        let mut parts = Vec::new();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}")?;
            let name = after[..close].trim_matches([' ', '\t']);
            let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            const KEYWORDS: [&str; 13] = [
                "true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is",
                "if", "else",
            ];
            if !identifier || name == ROW_VAR || KEYWORDS.contains(&name) {
                return None;
            }
            parts.push(Part::Column(headers.iter().rposition(|h| h == name)?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Some(Plain(parts))
    }

    fn render(&self, name: &str, headers: &[String], row: &Row) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            if out.len() > MAX_PROMPT_BYTES {
                return Err(too_long(name));
            }
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Column(i) => match row.record.get(*i) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(format!(
                            "{name} template: undefined value: this row has no \"{}\" field",
                            headers[*i]
                        ));
                    }
                },
            }
        }
        if out.len() > MAX_PROMPT_BYTES {
            return Err(too_long(name));
        }
        Ok(out)
    }
}

impl Prompts {
    pub fn new(
        prompt: &PromptSource,
        system: Option<&str>,
        input: &InputFile,
    ) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_DEPTH);
        let mut plain_user = None;
        let mut attaches = false;
        let prompt_column = match prompt {
            PromptSource::Template(text) => {
                add_checked(&mut env, USER, "the prompt template", text.clone(), input)?;
                attaches = calls_functions(text);
                plain_user = Plain::new(text, &input.headers).filter(|_| !attaches);
                None
            }
            PromptSource::PromptColumn => Some(
                input
                    .headers
                    .iter()
                    .position(|h| h == "prompt")
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "no prompt: give --prompt 'TEMPLATE' or --prompt-file FILE, or add a \
                             column named \"prompt\" to {}; its columns are: {}",
                            input.path.display(),
                            list_columns(&input.headers)
                        ))
                    })?,
            ),
        };
        if let Some(text) = system {
            if calls_functions(text) {
                return Err(Error::Usage(
                    "the system template calls image() or file(): attachments go in the prompt \
                     (--prompt or --prompt-file), not the system prompt"
                        .into(),
                ));
            }
            add_checked(
                &mut env,
                SYSTEM,
                "the system template",
                text.to_string(),
                input,
            )?;
        }
        Ok(Prompts {
            env,
            prompt_column,
            has_system: system.is_some(),
            plain_user,
            plain_system: system.and_then(|text| Plain::new(text, &input.headers)),
            attaches,
            over_budget: Default::default(),
        })
    }

    /// Whether the prompt attaches files (`image()`, `file()`): what a row's request is made
    /// of then lies outside the input too.
    pub fn attaches(&self) -> bool {
        self.attaches
    }

    /// Renders one row. The error is a short reason; the caller adds the file and line.
    pub fn render(&self, input: &InputFile, row: &Row) -> Result<Rendered, String> {
        let (user, parts) = match (self.prompt_column, &self.plain_user) {
            (Some(i), _) => (row.record.get(i).unwrap_or("").to_string(), Vec::new()),
            (None, Some(plain)) => (plain.render(USER, &input.headers, row)?, Vec::new()),
            (None, None) if self.attaches => {
                let collector = Collector::new();
                collector.split(&self.render_one(USER, input, row, Some(&collector))?)?
            }
            (None, None) => (self.render_one(USER, input, row, None)?, Vec::new()),
        };
        if user.trim().is_empty() && parts.is_empty() {
            return Err("the prompt is empty".into());
        }
        let system = match (self.has_system, &self.plain_system) {
            (false, _) => None,
            (true, Some(plain)) => Some(plain.render(SYSTEM, &input.headers, row)?),
            (true, None) => Some(self.render_one(SYSTEM, input, row, None)?),
        };
        Ok(Rendered {
            system,
            user,
            parts,
        })
    }

    /// Renders template `name`; `image()`/`file()` exist when `collector` is given.
    fn render_one(
        &self,
        name: &str,
        input: &InputFile,
        row: &Row,
        collector: Option<&Collector>,
    ) -> Result<String, String> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.over_budget.load(Relaxed) >= BUDGET_FAILURES {
            return Err(format!(
                "{name} template: not rendered: it ran out of its budget on {BUDGET_FAILURES} \
                 rows already"
            ));
        }
        let columns: BTreeMap<&str, &str> = input
            .headers
            .iter()
            .map(String::as_str)
            .zip(row.record.iter())
            .collect();
        let mut ctx: BTreeMap<&str, Value> =
            columns.iter().map(|(k, v)| (*k, Value::from(*v))).collect();
        ctx.entry(ROW_VAR)
            .or_insert_with(|| Value::from_serialize(columns));
        if let Some(c) = collector {
            ctx.insert("image", c.function(Kind::Image));
            ctx.insert("file", c.function(Kind::File));
        }
        let mut out = Bounded::default();
        let template = self
            .env
            .get_template(name)
            .map_err(|e| format!("{name} template: {e}"))?;
        let rendered = render_guard::guarded(&input.path, row.line, name, || {
            template.render_captured_to(&ctx, &mut out).map(drop)
        });
        rendered.map_err(|e| {
            let (message, over_budget) = budget_message(name, &e, out.over);
            if over_budget {
                self.over_budget.fetch_add(1, Relaxed);
            }
            message
        })?;
        String::from_utf8(out.bytes).map_err(|_| format!("{name} template: output is not UTF-8"))
    }

    /// Renders through minijinja even when there is a fast form, for tests that compare them.
    #[cfg(test)]
    fn render_slow(&self, input: &InputFile, row: &Row) -> Result<Rendered, String> {
        let user = self.render_one(USER, input, row, None)?;
        let system = match self.has_system {
            true => Some(self.render_one(SYSTEM, input, row, None)?),
            false => None,
        };
        Ok(Rendered {
            system,
            user,
            parts: Vec::new(),
        })
    }
}

/// A render's output, refused past [`MAX_PROMPT_BYTES`] (checked as it is written, so an
/// endless template stops at the limit instead of filling memory).
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_PROMPT_BYTES {
            self.over = true;
            return Err(std::io::Error::other("prompt too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A render error, saying which budget ran out and what to do about it; `true` when one did.
fn budget_message(name: &str, e: &minijinja::Error, over: bool) -> (String, bool) {
    use minijinja::ErrorKind as K;
    let message = match e.kind() {
        _ if over => too_long(name),
        K::OutOfFuel => format!(
            "{name} template: took more than {TEMPLATE_FUEL} steps (loops over loops?); a prompt \
             template must finish quickly: simplify its loops"
        ),
        K::InvalidOperation if e.to_string().contains("recursion") => format!(
            "{name} template: nested deeper than {TEMPLATE_DEPTH} levels (a macro that calls \
             itself?); simplify it"
        ),
        _ => return (format!("{name} template: {e}"), false),
    };
    (message, true)
}

fn too_long(name: &str) -> String {
    format!(
        "{name} template: the prompt is longer than {} MB, more than any API accepts; shorten \
         the template or the cells it uses",
        MAX_PROMPT_BYTES / (1024 * 1024)
    )
}

/// The columns `text` reads as `row["name"]`, `row['name']` or `row.name` (which
/// `undeclared_variables` sees only as `row`), each with the way it was written.
fn row_lookups(text: &str) -> Vec<(String, String)> {
    static LOOKUP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = LOOKUP.get_or_init(|| {
        regex::Regex::new(
            r#"\brow\s*(?:\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\]|\.([A-Za-z_][A-Za-z0-9_]*)\b(\s*\()?)"#,
        )
        .expect("a valid pattern")
    });
    re.captures_iter(text)
        // `row.items()` is a method of the row, not a column.
        .filter(|c| c.get(4).is_none())
        .filter_map(|c| {
            let name = c.get(1).or(c.get(2)).or(c.get(3))?.as_str().to_string();
            Some((name, c[0].to_string()))
        })
        .collect()
}

/// Compiles `text` as template `name` and checks that every variable it reads is a column.
fn add_checked(
    env: &mut Environment<'static>,
    name: &'static str,
    what: &str,
    text: String,
    input: &InputFile,
) -> Result<(), Error> {
    env.add_template_owned(name, text)
        .map_err(|e| Error::Usage(format!("{what} does not parse: {e:#}")))?;
    let tmpl = env.get_template(name).expect("template was just added");
    let functions = calls_functions(&text_of(env, name));
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !(functions && FUNCTIONS.contains(&v.as_str())))
        .filter(|v| v != ROW_VAR && !input.headers.iter().any(|h| h == v))
        .map(|v| format!("{{{{ {v} }}}}"))
        .collect();
    unknown.sort();
    if !input.headers.iter().any(|h| h == ROW_VAR) {
        for (column, written) in row_lookups(&text_of(env, name)) {
            let shown = format!("{{{{ {written} }}}}");
            if !input.headers.contains(&column) && !unknown.contains(&shown) {
                unknown.push(shown);
            }
        }
    }
    if !unknown.is_empty() {
        let names = unknown.join(", ");
        return Err(Error::Input(format!(
            "{what} uses {names}, which {} not a column of {}; its columns are: {}",
            if unknown.len() == 1 { "is" } else { "are" },
            input.path.display(),
            list_columns(&input.headers)
        )));
    }
    Ok(())
}

/// The source of template `name`, as added.
fn text_of(env: &Environment<'static>, name: &str) -> String {
    env.get_template(name)
        .map(|t| t.source().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::input::fixtures::{input, row};

    #[test]
    fn renders_columns_and_row_lookup() {
        let inp = input(&["review", "my col"]);
        let p = Prompts::new(
            &PromptSource::Template("R: {{ review }} / {{ row['my col'] }}".into()),
            Some("sys {{ review|upper }}"),
            &inp,
        )
        .unwrap();
        let r = p.render(&inp, &row(&["good", "x"])).unwrap();
        assert_eq!(r.user, "R: good / x");
        assert_eq!(r.system.as_deref(), Some("sys GOOD"));
    }

    #[test]
    fn unknown_column_is_named_with_the_real_ones() {
        let inp = input(&["review", "product"]);
        let msg = Prompts::new(&PromptSource::Template("{{ revew }}".into()), None, &inp)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("{{ revew }}"), "{msg}");
        assert!(msg.contains("\"review\", \"product\""), "{msg}");
    }

    #[test]
    fn row_lookup_of_a_missing_column_lists_the_columns() {
        let inp = input(&["review", "product"]);
        for (text, shown) in [
            ("{{ row[\"product name\"] }}", "{{ row[\"product name\"] }}"),
            ("{{ row['nme'] | upper }}", "{{ row['nme'] }}"),
            ("{{ row.prodct }}", "{{ row.prodct }}"),
        ] {
            let msg = Prompts::new(&PromptSource::Template(text.into()), None, &inp)
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains(shown), "{text}: {msg}");
            assert!(msg.contains("\"review\", \"product\""), "{msg}");
        }
        let ok = "{{ row['review'] }} {{ row.product }} {% for k, v in row.items() %}{% endfor %}";
        assert!(Prompts::new(&PromptSource::Template(ok.into()), None, &inp).is_ok());
    }

    fn render_error(template: &str, cell: &str) -> String {
        let inp = input(&["text"]);
        let p = Prompts::new(&PromptSource::Template(template.into()), None, &inp).unwrap();
        p.render(&inp, &row(&[cell])).unwrap_err()
    }

    #[test]
    fn nested_loops_over_a_long_cell_run_out_of_steps() {
        let cell = "x".repeat(3000);
        let e = render_error(
            "{% for a in text %}{% for b in text %}{% for c in text %}.{% endfor %}{% endfor \
             %}{% endfor %}",
            &cell,
        );
        assert!(e.contains("steps") && e.contains("user template"), "{e}");
    }

    #[test]
    fn a_template_over_budget_on_ten_rows_is_not_run_again() {
        let inp = input(&["text"]);
        let loops = "{% for a in text %}{% for b in text %}{% for c in text %}.{% endfor %}{% \
                     endfor %}{% endfor %}";
        let p = Prompts::new(&PromptSource::Template(loops.into()), None, &inp).unwrap();
        let long = row(&[&"x".repeat(3000)]);
        for _ in 0..BUDGET_FAILURES {
            assert!(p.render(&inp, &long).unwrap_err().contains("steps"));
        }
        let e = p.render(&inp, &row(&["x"])).unwrap_err();
        assert!(e.contains("not rendered"), "{e}");
    }

    #[test]
    fn a_recursive_doubling_macro_is_stopped() {
        let cell = "x".repeat(3000);
        let e = render_error(
            "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif \
             %}{% endmacro %}{{ d(text, 60) }}",
            &cell,
        );
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn a_prompt_over_the_size_limit_is_refused() {
        let cell = "x".repeat(MAX_PROMPT_BYTES / 4 + 1);
        let slow = render_error("{{ text }}{{ text }}{{ text }}{{ text|upper }}", &cell);
        assert!(slow.contains("longer than"), "{slow}");
        let fast = render_error("{{ text }}{{ text }}{{ text }}{{ text }}{{ text }}", &cell);
        assert!(fast.contains("longer than"), "{fast}");
    }

    #[test]
    fn image_and_file_calls_become_attachments_in_order() {
        let inp = input(&["photo", "scan", "image", "name"]);
        let p = Prompts::new(
            &PromptSource::Template(
                "Describe {{ image(photo) }} for {{ name }}{{ file(row.scan) }}\n{{ image(row.image) }}"
                    .into(),
            ),
            None,
            &inp,
        )
        .unwrap();
        let r = p
            .render(&inp, &row(&["a.png", "b.pdf", "c.jpg", "Ann"]))
            .unwrap();
        let img = |c: &str| {
            Segment::Attach(Wanted {
                kind: Kind::Image,
                cell: c.into(),
            })
        };
        assert_eq!(
            r.parts,
            vec![
                Segment::Text("Describe ".into()),
                img("a.png"),
                Segment::Text(" for Ann".into()),
                Segment::Attach(Wanted {
                    kind: Kind::File,
                    cell: "b.pdf".into()
                }),
                img("c.jpg"),
            ]
        );
        assert_eq!(r.user, "Describe  for Ann");
        // An attachment alone is a prompt; a template without calls has no parts.
        let only = Prompts::new(
            &PromptSource::Template("{{ image(photo) }}".into()),
            None,
            &inp,
        );
        assert_eq!(
            only.unwrap()
                .render(&inp, &row(&["a", "b", "c", "d"]))
                .unwrap()
                .parts,
            [img("a")]
        );
        let plain = Prompts::new(&PromptSource::Template("{{ name }}".into()), None, &inp).unwrap();
        assert!(
            plain
                .render(&inp, &row(&["a", "b", "c", "d"]))
                .unwrap()
                .parts
                .is_empty()
        );
        let sys = Prompts::new(
            &PromptSource::Template("x".into()),
            Some("{{ image(photo) }}"),
            &inp,
        );
        assert!(sys.err().unwrap().to_string().contains("system"));
        let shadowed = Prompts::new(
            &PromptSource::Template("{{ image(image) }}".into()),
            None,
            &inp,
        );
        let e = shadowed
            .unwrap()
            .render(&inp, &row(&["a", "b", "c", "d"]))
            .unwrap_err();
        assert!(e.contains("row.image"), "{e}");
        let typo = Prompts::new(
            &PromptSource::Template("{{ image(phot) }}".into()),
            None,
            &inp,
        );
        assert!(typo.err().unwrap().to_string().contains("phot"));
    }

    #[test]
    fn cells_cannot_forge_or_break_attachment_marks() {
        let inp = input(&["name", "photo"]);
        let p = Prompts::new(
            &PromptSource::Template("{{ name }} {{ image(photo) }}".into()),
            None,
            &inp,
        )
        .unwrap();
        let img = |c: &str| {
            Segment::Attach(Wanted {
                kind: Kind::Image,
                cell: c.into(),
            })
        };
        // A multi-byte character after the mark byte (this panicked), a forged mark, and a
        // stray \u{1} (the Hive delimiter) before a real one: all stay text.
        for name in [
            "\u{1}é",
            "\u{1}I/home/u/passport.pdf\u{2}",
            "\u{1}",
            "a\u{1}b\u{2}\u{1}",
        ] {
            let r = p.render(&inp, &row(&[name, "a.png"])).unwrap();
            assert_eq!(
                r.parts,
                vec![Segment::Text(format!("{name} ")), img("a.png")],
                "{name:?}"
            );
        }
        // A filter that changes the mark loses the attachment: an error, not a silent drop.
        let mangled = Prompts::new(
            &PromptSource::Template("{{ image(photo)|upper }}".into()),
            None,
            &inp,
        );
        let e = mangled
            .unwrap()
            .render(&inp, &row(&["x", "a.png"]))
            .unwrap_err();
        assert!(e.contains("image()"), "{e}");
    }

    #[test]
    fn only_real_calls_attach_and_a_column_named_file_stays_a_column() {
        let inp = input(&["file", "photo"]);
        let p = Prompts::new(
            &PromptSource::Template("Summarize this file (a contract): {{ file }}".into()),
            Some("Describe the image(s) briefly"),
            &inp,
        )
        .unwrap();
        let r = p.render(&inp, &row(&["the text", "a.png"])).unwrap();
        assert_eq!(r.user, "Summarize this file (a contract): the text");
        assert!(r.parts.is_empty());
        for (text, calls) in [
            ("{{ image (photo) }}", true),
            ("{{- file(row.photo) -}}", true),
            ("{% if 1 %}{{ image(photo) }}{% endif %}", true),
            ("image(photo) {{ photo }}", false),
            ("{{ \"image(x)\" }} {# file(x) #} {{ photo }}", false),
            ("{% raw %}{{ image(photo) }}{% endraw %}", false),
            ("{{ row.file(1) }}", false),
        ] {
            assert_eq!(calls_functions(text), calls, "{text}");
        }
    }

    #[test]
    fn syntax_error_is_reported() {
        let inp = input(&["a"]);
        let msg = Prompts::new(&PromptSource::Template("{{ a ".into()), None, &inp)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("does not parse"), "{msg}");
    }

    #[test]
    fn plain_templates_render_exactly_as_minijinja_does() {
        let inp = input(&["review", "product", "my col", "true"]);
        let rows = [
            row(&["good", "Kettle", "x", "t"]),
            row(&["{{ review }}", "a}}b", "", "t"]),
            row(&["line1\nline2\r\n", "<b>&amp;</b>", "\"q\"", "t"]),
        ];
        let plain = [
            "Review: {{ review }}",
            "{{review}}{{product}}",
            "{{ product }} says {{ review }}.\n",
            "{{ product }}\r\n",
            "old Mac line end {{ product }}\r",
            "{{ product }}\n\r",
            "ends with two newlines\n\n{{ review }}\n\n",
            "}} { } {{ review }} }}",
            "no variables at all",
            "\t{{\treview\t}}\t",
        ];
        let not_plain = [
            "{{ review|upper }}",
            "{{ row['my col'] }}",
            "{{- review -}} x",
            "{% if review %}{{ review }}{% endif %}",
            "{# note #}{{ review }}",
            "{{ true }}",
            "{{ review ~ product }}",
        ];
        for (text, plain) in plain
            .iter()
            .map(|t| (t, true))
            .chain(not_plain.iter().map(|t| (t, false)))
        {
            let p =
                Prompts::new(&PromptSource::Template(text.to_string()), Some(text), &inp).unwrap();
            assert_eq!(p.plain_user.is_some(), plain, "{text:?}");
            assert_eq!(p.plain_system.is_some(), plain, "{text:?}");
            for r in &rows {
                let (fast, slow) = (p.render(&inp, r), p.render_slow(&inp, r));
                if !fast.as_ref().is_err_and(|e| e.contains("empty")) {
                    assert_eq!(fast, slow, "{text:?} on {:?}", r.record);
                }
            }
        }
    }

    #[test]
    fn plain_template_on_a_short_row_is_an_error_not_a_panic() {
        let inp = input(&["a", "b"]);
        let p = Prompts::new(&PromptSource::Template("{{ b }}".into()), None, &inp).unwrap();
        let e = p.render(&inp, &row(&["only a"])).unwrap_err();
        assert!(e.contains("\"b\""), "{e}");
    }

    #[test]
    fn prompt_column_is_used_as_is_and_required() {
        let inp = input(&["id", "prompt"]);
        let p = Prompts::new(&PromptSource::PromptColumn, None, &inp).unwrap();
        let r = p
            .render(&inp, &row(&["1", "{{ not a template }}"]))
            .unwrap();
        assert_eq!(r.user, "{{ not a template }}");
        assert!(p.render(&inp, &row(&["1", "  "])).is_err());

        let msg = Prompts::new(&PromptSource::PromptColumn, None, &input(&["text"]))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("--prompt"), "{msg}");
    }
}

/// Where the user prompt comes from.
#[derive(Debug, Clone)]
pub enum PromptSource {
    /// A minijinja template over the columns.
    Template(String),
    /// The text of the column named `prompt`, sent as it is.
    PromptColumn,
}
