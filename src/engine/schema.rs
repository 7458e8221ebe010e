//! Structured output: the JSON Schema given with `--schema`, loaded and compiled once at start-up,
//! sent with every request, and used to check every answer and to split it into `out.<name>`
//! columns.
//!
//! OpenAI's strict mode (the only mode that guarantees the schema is followed) accepts a subset
//! of JSON Schema: every object must list all its properties in `required` and set
//! `additionalProperties: false`. A schema outside that subset is refused at start-up with the
//! list of places to change, rather than by the API on the first request of a long run;
//! `--no-strict` sends it anyway with `strict: false` (the answers are still validated here).

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::base::error::{Error, describe_io};

/// Validation errors listed in a row's error before "and N more".
const MAX_LISTED: usize = 3;

/// A loaded, compiled `--schema`.
pub struct OutputSchema {
    /// The name sent with the schema (OpenAI requires one): the file's stem, reduced to the
    /// characters the API allows.
    pub name: String,
    /// The schema exactly as the file has it (key order kept), which is what is sent.
    pub schema: Value,
    /// Whether to ask the API to enforce the schema (`strict: true`).
    pub strict: bool,
    /// The top-level properties, in the schema's order: one `out.<name>` column each.
    pub properties: Vec<String>,
    validator: jsonschema::Validator,
}

impl fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSchema")
            .field("name", &self.name)
            .field("strict", &self.strict)
            .field("properties", &self.properties)
            .finish_non_exhaustive()
    }
}

/// Two schemas are the same request setting when they send the same thing.
impl PartialEq for OutputSchema {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.strict == other.strict && self.schema == other.schema
    }
}

impl OutputSchema {
    /// Reads, parses and compiles the schema in `path`. Every problem is an input error naming
    /// the file (and, for JSON syntax, the line and column).
    pub fn load(path: &Path, strict: bool) -> Result<Self, Error> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Input(format!(
                "cannot read {shown} (given to --schema): {}",
                describe_io(&e)
            ))
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Input(format!(
                "{shown}: line {}, column {}: not valid JSON: {e}",
                e.line(),
                e.column()
            ))
        })?;
        let name = schema_name(path);
        Self::new(name, schema, strict).map_err(|e| Error::Input(format!("{shown}: {e}")))
    }

    /// Compiles `schema` and checks that it can be used for output columns (and, when `strict`,
    /// that OpenAI's strict mode accepts it).
    pub fn new(name: String, schema: Value, strict: bool) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("not a valid JSON Schema: {e} (at {})", e.schema_path()))?;
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return Err(
                "the schema must describe an object with \"properties\" (each top-level \
                 property becomes an out.<name> results column), e.g. {\"type\": \"object\", \
                 \"properties\": {\"sentiment\": {\"type\": \"string\"}}, \"required\": \
                 [\"sentiment\"], \"additionalProperties\": false}"
                    .into(),
            );
        };
        if schema.get("type").is_some_and(|t| t != "object") {
            return Err("the schema's top level must have \"type\": \"object\"".into());
        }
        if strict {
            let problems = strict_problems(&schema);
            if !problems.is_empty() {
                return Err(format!(
                    "OpenAI strict mode would refuse this schema:\n  {}\nFix these (strict mode \
                     needs every property listed in \"required\" and \"additionalProperties\": \
                     false on every object; make a field optional with a type such as \
                     [\"string\", \"null\"]), or pass --no-strict to send it with strict: false \
                     (answers are still validated, but the API no longer guarantees the shape)",
                    problems.join("\n  ")
                ));
            }
        }
        Ok(OutputSchema {
            name,
            properties: props.keys().cloned().collect(),
            schema,
            strict,
            validator,
        })
    }

    /// Parses an answer and validates it. The error says what is wrong and where (a JSON
    /// pointer into the answer), for the row's `error` column.
    pub fn check(&self, answer: &str) -> Result<Value, String> {
        // serde_json's message ends with the line and column.
        let value: Value = serde_json::from_str(answer).map_err(|e| format!("not JSON: {e}"))?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().as_str();
                let at = if at.is_empty() { "/" } else { at };
                format!("at {at}: {e}")
            })
            .collect();
        if errors.is_empty() {
            return Ok(value);
        }
        let mut msg = format!(
            "does not match the schema: {}",
            errors[..errors.len().min(MAX_LISTED)].join("; ")
        );
        if errors.len() > MAX_LISTED {
            msg.push_str(&format!(" (and {} more)", errors.len() - MAX_LISTED));
        }
        Err(msg)
    }

    /// The `out.<name>` cells of an answer: strings as they are, other values as compact JSON,
    /// empty when the property is absent or the answer is not a JSON object.
    pub fn cells(&self, answer: &str) -> Vec<String> {
        let value = serde_json::from_str::<Value>(answer).ok();
        self.properties
            .iter()
            .map(|p| match value.as_ref().and_then(|v| v.get(p)) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            })
            .collect()
    }

    /// The column names, `out.<property>`, in schema order.
    pub fn columns(&self) -> Vec<String> {
        self.properties.iter().map(|p| format!("out.{p}")).collect()
    }
}

/// The file stem with every character OpenAI does not allow in a name (`a-zA-Z0-9_-`, at most
/// 64) replaced by `_`.
fn schema_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "output".into()
    } else {
        name
    }
}

/// Whether `name` is a name OpenAI accepts for a response format.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every place where `schema` breaks OpenAI's strict-mode rules on objects, as JSON pointers
/// with what to change. Walks properties, items, `$defs`/`definitions` and the combinators.
pub fn strict_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk_strict(schema, "", &mut problems);
    problems
}

fn walk_strict(s: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        return;
    };
    let here = if at.is_empty() { "/" } else { at };
    let is_object = obj.get("type").is_some_and(|t| {
        t == "object"
            || t.as_array()
                .is_some_and(|a| a.iter().any(|x| x == "object"))
    }) || obj.contains_key("properties");
    if is_object {
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            problems.push(format!("{here}: add \"additionalProperties\": false"));
        }
        let props: Vec<&String> = obj
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<String> = props
            .iter()
            .filter(|p| !required.contains(&p.as_str()))
            .map(|p| format!("{p:?}"))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{here}: add {} to \"required\" (strict mode requires every property)",
                missing.join(", ")
            ));
        }
    }
    for key in ["properties", "$defs", "definitions"] {
        if let Some(map) = obj.get(key).and_then(Value::as_object) {
            for (name, sub) in map {
                walk_strict(sub, &format!("{at}/{key}/{}", escape(name)), problems);
            }
        }
    }
    if let Some(items) = obj.get("items") {
        walk_strict(items, &format!("{at}/items"), problems);
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(list) = obj.get(key).and_then(Value::as_array) {
            for (i, sub) in list.iter().enumerate() {
                walk_strict(sub, &format!("{at}/{key}/{i}"), problems);
            }
        }
    }
}

/// JSON pointer escaping of one segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "score": {"type": "integer", "minimum": 1, "maximum": 5},
                "topics": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["sentiment", "score", "topics"],
            "additionalProperties": false
        })
    }

    #[test]
    fn valid_answers_pass_and_become_cells_in_schema_order() {
        let s = OutputSchema::new("r".into(), review_schema(), true).unwrap();
        assert_eq!(s.columns(), ["out.sentiment", "out.score", "out.topics"]);
        let answer = r#"{"topics": ["fit", "price"], "score": 4, "sentiment": "positive"}"#;
        s.check(answer).unwrap();
        assert_eq!(s.cells(answer), ["positive", "4", r#"["fit","price"]"#]);
        assert_eq!(s.cells("not json"), ["", "", ""]);
    }

    #[test]
    fn invalid_answers_say_where_and_what() {
        let s = OutputSchema::new("r".into(), review_schema(), true).unwrap();
        let e = s
            .check(r#"{"sentiment": "meh", "score": 9, "topics": []}"#)
            .unwrap_err();
        assert!(
            e.contains("at /sentiment:") && e.contains("at /score:"),
            "{e}"
        );
        let e = s.check(r#"{"sentiment": "positive""#).unwrap_err();
        assert!(e.starts_with("not JSON") && e.contains("line 1"), "{e}");
        let e = s
            .check(r#"{"sentiment": "positive", "score": 2}"#)
            .unwrap_err();
        assert!(e.contains("at /:") && e.contains("topics"), "{e}");
    }

    #[test]
    fn strict_mode_problems_are_listed_with_their_place() {
        let loose = json!({
            "type": "object",
            "properties": {
                "a": {"type": "string"},
                "b": {"type": "object", "properties": {"c": {"type": "integer"}}},
                "d": {"type": "array", "items": {"$ref": "#/$defs/item"}}
            },
            "required": ["a"],
            "$defs": {"item": {"type": "object", "properties": {"e": {"type": "string"}},
                "required": ["e"], "additionalProperties": false}}
        });
        let p = strict_problems(&loose);
        assert_eq!(
            p,
            [
                "/: add \"additionalProperties\": false",
                "/: add \"b\", \"d\" to \"required\" (strict mode requires every property)",
                "/properties/b: add \"additionalProperties\": false",
                "/properties/b: add \"c\" to \"required\" (strict mode requires every property)",
            ]
        );
        let e = OutputSchema::new("x".into(), loose.clone(), true).unwrap_err();
        assert!(
            e.contains("--no-strict") && e.contains("/properties/b"),
            "{e}"
        );
        OutputSchema::new("x".into(), loose, false).unwrap();
        assert!(strict_problems(&review_schema()).is_empty());
    }

    #[test]
    fn unusable_schemas_are_refused() {
        let e = OutputSchema::new("x".into(), json!({"type": "string"}), false).unwrap_err();
        assert!(e.contains("properties"), "{e}");
        let e = OutputSchema::new(
            "x".into(),
            json!({"type": "object", "properties": {"a": {"type": "strnig"}}}),
            false,
        )
        .unwrap_err();
        assert!(e.contains("not a valid JSON Schema"), "{e}");
    }

    #[test]
    fn files_give_names_and_json_errors_give_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my review.schema.json");
        std::fs::write(
            &path,
            "{\n  \"type\": \"object\",\n  \"properties\": {,}\n}",
        )
        .unwrap();
        let e = OutputSchema::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("my review.schema.json: line 3, column"), "{e}");
        std::fs::write(&path, review_schema().to_string()).unwrap();
        let s = OutputSchema::load(&path, true).unwrap();
        assert_eq!(s.name, "my_review_schema");
        assert!(valid_name(&s.name));
        let e = OutputSchema::load(&dir.path().join("nope.json"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json") && e.contains("--schema"), "{e}");
    }
}
