//! Prompts rendered from each row: minijinja templates over the column names.
//!
//! Templates are checked against the header before anything is sent: a misspelt `{{ revew }}`
//! is an error that names the column and lists the real ones, not ten thousand requests that say
//! "Review: ". Rendering uses strict undefined-variable handling for the same reason.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::config::PromptSource;
use crate::error::Error;
use crate::input::{InputFile, Row, list_columns};

const USER: &str = "user";
const SYSTEM: &str = "system";
/// Name under which every column is also reachable, for names that are not identifiers.
const ROW_VAR: &str = "row";

/// The rendered messages of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub system: Option<String>,
    pub user: String,
}

/// Compiled prompt templates for one run.
pub struct Prompts {
    env: Environment<'static>,
    /// `Some(i)`: the user prompt is column `i`, sent as is.
    prompt_column: Option<usize>,
    has_system: bool,
}

impl Prompts {
    pub fn new(
        prompt: &PromptSource,
        system: Option<&str>,
        input: &InputFile,
    ) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let prompt_column = match prompt {
            PromptSource::Template(text) => {
                add_checked(&mut env, USER, "the prompt template", text.clone(), input)?;
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
        })
    }

    /// Renders one row. The error is a short reason; the caller adds the file and line.
    pub fn render(&self, input: &InputFile, row: &Row) -> Result<Rendered, String> {
        let columns: BTreeMap<&str, &str> = input
            .headers
            .iter()
            .map(String::as_str)
            .zip(row.record.iter())
            .collect();
        let user = match self.prompt_column {
            Some(i) => row.record.get(i).unwrap_or("").to_string(),
            None => self.render_one(USER, &columns)?,
        };
        if user.trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        let system = if self.has_system {
            Some(self.render_one(SYSTEM, &columns)?)
        } else {
            None
        };
        Ok(Rendered { system, user })
    }

    fn render_one(&self, name: &str, columns: &BTreeMap<&str, &str>) -> Result<String, String> {
        let mut ctx: BTreeMap<&str, Value> =
            columns.iter().map(|(k, v)| (*k, Value::from(*v))).collect();
        ctx.entry(ROW_VAR)
            .or_insert_with(|| Value::from_serialize(columns));
        self.env
            .get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| format!("{name} template: {e}"))
    }
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
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| v != ROW_VAR && !input.headers.iter().any(|h| h == v))
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        let names = unknown
            .iter()
            .map(|v| format!("{{{{ {v} }}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Input(format!(
            "{what} uses {names}, which {} not a column of {}; its columns are: {}",
            if unknown.len() == 1 { "is" } else { "are" },
            input.path.display(),
            list_columns(&input.headers)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csv::StringRecord;

    fn input(headers: &[&str]) -> InputFile {
        InputFile {
            path: "in.csv".into(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            id_index: None,
            format: Default::default(),
        }
    }

    fn row(fields: &[&str]) -> Row {
        Row {
            seq: 0,
            line: 2,
            byte: 0,
            id: "1".into(),
            record: StringRecord::from(fields.to_vec()),
            json_cells: Default::default(),
        }
    }

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
    fn syntax_error_is_reported() {
        let inp = input(&["a"]);
        let msg = Prompts::new(&PromptSource::Template("{{ a ".into()), None, &inp)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("does not parse"), "{msg}");
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
