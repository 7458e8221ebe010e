//! Answers that fit a JSON Schema, for requests that carry one (`response_format` json_schema).
//!
//! Like the mock's plain answers, they are deterministic and tied to the prompt: strings quote
//! the prompt's start and end, and every other choice (enum member, number, boolean) comes from a
//! hash of the prompt and the value's place in the document, so a test can recompute the answer
//! a row should get and different rows get different answers. [`break_answer`] spoils an answer
//! on purpose (`--invalid-json-rate`) so the client's validation and retry path can be tested.

use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

/// Characters of the prompt's start and end that a generated string quotes.
const QUOTE_CHARS: usize = 40;
/// Nesting (and `$ref` hops) followed at most; deeper, a value is `null`.
const MAX_DEPTH: usize = 32;
/// Nesting past which objects get only their required properties, so a recursive schema
/// (`{"tree": {"$ref": "#"}}`) ends well before [`MAX_DEPTH`].
const OPTIONAL_DEPTH: usize = 8;

/// The answer to `prompt` under `schema`, as a JSON value that validates against it (for the
/// schemas strict mode allows: objects, arrays, enums, bounded numbers, `$ref` into
/// `$defs`/`definitions`, `anyOf`; `pattern` and `format` beyond dates, emails, URIs and UUIDs
/// are not honoured).
pub fn generate(schema: &Value, prompt: &str) -> Value {
    let g = Generator {
        root: schema,
        prompt: prompt.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    g.value(schema, "", 0)
}

struct Generator<'a> {
    root: &'a Value,
    /// The prompt with whitespace folded.
    prompt: String,
}

impl Generator<'_> {
    /// A number from the prompt and the value's place (`at`, a JSON pointer).
    fn hash(&self, at: &str) -> u64 {
        let mut h = Sha256::new();
        h.update(self.prompt.as_bytes());
        h.update(b"\0");
        h.update(at.as_bytes());
        let d = h.finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    fn value(&self, s: &Value, at: &str, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        let Some(obj) = s.as_object() else {
            // `true` or `{}`: anything goes.
            return Value::String(self.quote(None, None));
        };
        if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
            return match self.resolve(target) {
                Some(t) => self.value(t, at, depth + 1),
                None => Value::Null,
            };
        }
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(options) = obj.get("enum").and_then(Value::as_array)
            && !options.is_empty()
        {
            return options[(self.hash(at) % options.len() as u64) as usize].clone();
        }
        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            return self.value(&merge(s, all), at, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key).and_then(Value::as_array)
                && !list.is_empty()
            {
                // The first branch that is not just null, so optional fields get a value.
                let pick = list
                    .iter()
                    .find(|b| b.get("type").is_none_or(|t| t != "null"))
                    .unwrap_or(&list[0]);
                return self.value(pick, at, depth + 1);
            }
        }
        match self.type_of(obj) {
            "object" => self.object(obj, at, depth),
            "array" => self.array(obj, at, depth),
            "integer" => self.integer(obj, at),
            "number" => self.number(obj, at),
            "boolean" => Value::Bool(self.hash(at).is_multiple_of(2)),
            "null" => Value::Null,
            _ => self.string(obj, at),
        }
    }

    /// The declared type (the first that is not null, for a list such as ["string", "null"]),
    /// else one inferred from the keywords.
    fn type_of<'s>(&self, obj: &'s Map<String, Value>) -> &'s str {
        match obj.get("type") {
            Some(Value::String(t)) => t,
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .or_else(|| list.first().and_then(Value::as_str))
                .unwrap_or("string"),
            _ if obj.contains_key("properties") => "object",
            _ if obj.contains_key("items") => "array",
            _ if obj.contains_key("minimum") || obj.contains_key("maximum") => "number",
            _ => "string",
        }
    }

    fn resolve(&self, target: &str) -> Option<&Value> {
        let pointer = target.strip_prefix('#')?;
        self.root.pointer(pointer)
    }

    /// Every declared property, in the schema's order (so required ones too), then any required
    /// name that has no schema of its own.
    fn object(&self, obj: &Map<String, Value>, at: &str, depth: usize) -> Value {
        let mut out = Map::new();
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                if depth >= OPTIONAL_DEPTH && !required.contains(&name.as_str()) {
                    continue;
                }
                let here = format!("{at}/{name}");
                out.insert(name.clone(), self.value(sub, &here, depth + 1));
            }
        }
        for name in required {
            if !out.contains_key(name) {
                out.insert(name.to_string(), Value::String(self.quote(None, None)));
            }
        }
        Value::Object(out)
    }

    fn array(&self, obj: &Map<String, Value>, at: &str, depth: usize) -> Value {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let len = min.max(1 + self.hash(at) % 3).min(max).min(64);
        let any = Value::Bool(true);
        let items = obj.get("items").unwrap_or(&any);
        Value::Array(
            (0..len)
                .map(|i| self.value(items, &format!("{at}/{i}"), depth + 1))
                .collect(),
        )
    }

    /// Inclusive bounds from minimum/maximum and their exclusive forms (draft 6+ numbers or
    /// draft 4 booleans).
    fn bounds(&self, obj: &Map<String, Value>, integer: bool) -> (f64, f64) {
        let get = |k: &str| obj.get(k).and_then(Value::as_f64);
        let step = if integer { 1.0 } else { 0.01 };
        let mut lo = get("minimum");
        let mut hi = get("maximum");
        if let Some(x) = get("exclusiveMinimum") {
            lo = Some(lo.map_or(x + step, |l| l.max(x + step)));
        } else if obj.get("exclusiveMinimum") == Some(&Value::Bool(true)) {
            lo = lo.map(|l| l + step);
        }
        if let Some(x) = get("exclusiveMaximum") {
            hi = Some(hi.map_or(x - step, |h| h.min(x - step)));
        } else if obj.get("exclusiveMaximum") == Some(&Value::Bool(true)) {
            hi = hi.map(|h| h - step);
        }
        match (lo, hi) {
            (Some(l), Some(h)) => (l, h.max(l)),
            (Some(l), None) => (l, l + 100.0),
            (None, Some(h)) => (h - 100.0, h),
            (None, None) => (0.0, 100.0),
        }
    }

    fn integer(&self, obj: &Map<String, Value>, at: &str) -> Value {
        let (lo, hi) = self.bounds(obj, true);
        let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
        let span = (hi.saturating_sub(lo)).max(0) as u64 + 1;
        let mut v = lo.saturating_add((self.hash(at) % span) as i64);
        if let Some(m) = obj
            .get("multipleOf")
            .and_then(Value::as_i64)
            .filter(|m| *m > 0)
        {
            // The nearest multiple inside the bounds, if there is one.
            let down = v - v.rem_euclid(m);
            v = if down >= lo { down } else { down + m };
        }
        json!(v)
    }

    fn number(&self, obj: &Map<String, Value>, at: &str) -> Value {
        let (lo, hi) = self.bounds(obj, false);
        let steps = ((hi - lo) * 100.0).floor().max(0.0) as u64 + 1;
        let v = lo + (self.hash(at) % steps) as f64 / 100.0;
        let v = (v * 100.0).round() / 100.0;
        Number::from_f64(v.clamp(lo, hi)).map_or(Value::Null, Value::Number)
    }

    fn string(&self, obj: &Map<String, Value>, at: &str) -> Value {
        let min = obj
            .get("minLength")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let max = obj
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let h = self.hash(at);
        let formatted = match obj.get("format").and_then(Value::as_str) {
            Some("date") => Some(format!("2026-{:02}-{:02}", 1 + h % 12, 1 + (h >> 8) % 28)),
            Some("date-time") => Some(format!(
                "2026-{:02}-{:02}T{:02}:{:02}:00Z",
                1 + h % 12,
                1 + (h >> 8) % 28,
                (h >> 16) % 24,
                (h >> 24) % 60
            )),
            Some("time") => Some(format!("{:02}:{:02}:00", h % 24, (h >> 8) % 60)),
            Some("email") => Some(format!("user{}@example.com", h % 10_000)),
            Some("uri") => Some(format!("https://example.com/{}", h % 10_000)),
            Some("uuid") => Some(format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                h as u32,
                (h >> 32) as u16,
                (h >> 48) & 0xfff,
                (h >> 20) & 0xfff,
                h & 0xffff_ffff_ffff
            )),
            _ => None,
        };
        Value::String(formatted.unwrap_or_else(|| self.quote(min, max)))
    }

    /// The prompt's start and end (all of it when short), like the mock's plain answers,
    /// padded with dots to `min` characters and cut to `max`.
    fn quote(&self, min: Option<usize>, max: Option<usize>) -> String {
        let chars: Vec<char> = self.prompt.chars().collect();
        let mut s: String = if chars.len() <= 2 * QUOTE_CHARS {
            self.prompt.clone()
        } else {
            let head: String = chars[..QUOTE_CHARS].iter().collect();
            let tail: String = chars[chars.len() - QUOTE_CHARS..].iter().collect();
            format!("{head}…{tail}")
        };
        let len = s.chars().count();
        if let Some(min) = min
            && len < min
        {
            s.extend(std::iter::repeat_n('.', min - len));
        }
        if let Some(max) = max {
            s = s.chars().take(max).collect();
        }
        s
    }
}

/// `s` with the keywords of every `allOf` branch merged in (properties and required added up),
/// and `allOf` itself removed.
fn merge(s: &Value, all: &[Value]) -> Value {
    let mut out = s.as_object().cloned().unwrap_or_default();
    out.remove("allOf");
    for branch in all.iter().filter_map(Value::as_object) {
        for (k, v) in branch {
            match (k.as_str(), out.get_mut(k), v) {
                ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                    mine.extend(theirs.clone());
                }
                ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                    mine.extend(theirs.iter().cloned());
                }
                (_, Some(_), _) => {}
                (_, None, _) => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// How an answer is spoilt for `--invalid-json-rate`: `roll` (uniform in 0..1) picks it.
/// Half the time the text is not JSON at all (prose around a cut-off document, as a model that
/// ignores the format writes); otherwise it is JSON that breaks the schema: a required property
/// removed, else an unknown one added where none is allowed, else the wrong type altogether.
pub fn break_answer(schema: &Value, valid: &Value, roll: f64) -> String {
    let text = valid.to_string();
    if roll < 0.5 {
        let cut: String = text.chars().take(text.chars().count() / 2).collect();
        return format!("Sure! Here is the JSON you asked for: {cut}");
    }
    let mut broken = valid.clone();
    if let Some(obj) = broken.as_object_mut() {
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .and_then(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .find(|n| obj.contains_key(*n))
            });
        if let Some(name) = required {
            obj.shift_remove(name);
            return broken.to_string();
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            obj.insert("unexpected_field".into(), json!(true));
            return broken.to_string();
        }
    }
    json!(["not", "the", "schema's", "type"]).to_string()
}

/// The schema a chat request's `response_format` asks for, checked the way OpenAI checks it:
/// `None` for `text` and `json_object`; an error message (sent as a 400
/// `invalid_request_error`) for a malformed format, an invalid schema, or, with `strict: true`,
/// a schema outside strict mode's rules.
pub fn requested_schema(format: &Value) -> Result<Option<&Value>, String> {
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") | Some("json_object") => return Ok(None),
        Some("json_schema") => {}
        Some(other) => {
            return Err(format!(
                "Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."
            ));
        }
        None => return Err("Missing required parameter: 'response_format.type'.".into()),
    }
    let Some(spec) = format.get("json_schema").and_then(Value::as_object) else {
        return Err("Missing required parameter: 'response_format.json_schema'.".into());
    };
    let name = match spec.get("name") {
        Some(Value::String(n)) if crate::engine::schema::valid_name(n) => n,
        Some(Value::String(n)) => {
            return Err(format!(
                "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters, but got '{n}'."
            ));
        }
        _ => return Err("Missing required parameter: 'response_format.json_schema.name'.".into()),
    };
    let Some(schema) = spec.get("schema").filter(|s| s.is_object()) else {
        return Err(format!(
            "Invalid schema for response_format '{name}': 'response_format.json_schema.schema' must be an object."
        ));
    };
    if let Err(e) = jsonschema::validator_for(schema) {
        return Err(format!("Invalid schema for response_format '{name}': {e}"));
    }
    match spec.get("strict") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => {}
        Some(Value::Bool(true)) => {
            if schema.get("type") != Some(&json!("object")) {
                return Err(format!(
                    "Invalid schema for response_format '{name}': schema must be a JSON Schema of 'type: \"object\"', got 'type: {}'.",
                    schema.get("type").unwrap_or(&Value::Null)
                ));
            }
            if let Some(problem) = crate::engine::schema::strict_problems(schema).first() {
                return Err(format!(
                    "Invalid schema for response_format '{name}': In strict mode, {problem}."
                ));
            }
        }
        Some(other) => {
            return Err(format!(
                "Invalid type for 'response_format.json_schema.strict': expected a boolean, but got {other} instead."
            ));
        }
    }
    Ok(Some(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validates(schema: &Value, prompt: &str) -> Value {
        let v = generate(schema, prompt);
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v} breaks {schema}: {errors:?}");
        v
    }

    fn schemas() -> Vec<Value> {
        vec![
            json!({"type": "object", "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "summary": {"type": "string"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "recommend": {"type": "boolean"}
            }, "required": ["sentiment", "summary", "confidence", "stars", "recommend"],
            "additionalProperties": false}),
            json!({"type": "object", "properties": {
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                    "minItems": 4, "maxItems": 6},
                "address": {"type": "object", "properties": {
                    "city": {"type": "string", "minLength": 60},
                    "zip": {"type": ["string", "null"], "format": "uuid"}
                }, "required": ["city", "zip"], "additionalProperties": false},
                "when": {"type": "string", "format": "date-time"},
                "kind": {"const": "review"}
            }, "required": ["tags", "address", "when", "kind"], "additionalProperties": false}),
            json!({"type": "object", "properties": {
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
                "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
                "level": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 13},
                "ratio": {"type": "number", "exclusiveMaximum": -5},
                "even": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 2}
            }, "required": ["items", "note", "level", "ratio", "even"],
            "additionalProperties": false,
            "$defs": {"item": {"type": "object", "properties": {
                "name": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}
            }, "required": ["name", "qty"], "additionalProperties": false}}}),
            json!({"type": "object", "allOf": [
                {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}
            ]}),
            json!({"type": "object", "properties": {"tree": {"$ref": "#"}},
                "required": []}),
        ]
    }

    #[test]
    fn generated_answers_validate_for_many_schemas_and_prompts() {
        for schema in schemas() {
            for i in 0..40 {
                validates(
                    &schema,
                    &format!("prompt number {i}: review of product {}", i * 7),
                );
            }
        }
    }

    #[test]
    fn answers_are_deterministic_and_tied_to_the_prompt() {
        let schema = &schemas()[0];
        let a = validates(schema, "Review:  the kettle\nleaks");
        assert_eq!(a, generate(schema, "Review: the kettle leaks"));
        assert_eq!(a["summary"], "Review: the kettle leaks");
        let long = format!("{} middle {}", "a".repeat(50), "z".repeat(50));
        let quoted = format!("{}…{}", "a".repeat(40), "z".repeat(40));
        assert_eq!(validates(schema, &long)["summary"], quoted.as_str());
        // Different prompts pick different enum members somewhere among a few rows.
        let picked: std::collections::HashSet<String> = (0..30)
            .map(|i| generate(schema, &format!("row {i}"))["sentiment"].to_string())
            .collect();
        assert_eq!(picked.len(), 3, "{picked:?}");
        // Keys come in the schema's order.
        let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["sentiment", "summary", "confidence", "stars", "recommend"]
        );
    }

    #[test]
    fn broken_answers_never_validate() {
        for schema in schemas() {
            let validator = jsonschema::validator_for(&schema).unwrap();
            for i in 0..20 {
                let valid = generate(&schema, &format!("p{i}"));
                for roll in [0.1, 0.7] {
                    let text = break_answer(&schema, &valid, roll);
                    let ok = serde_json::from_str::<Value>(&text)
                        .map(|v| validator.is_valid(&v))
                        .unwrap_or(false);
                    assert!(!ok, "{text} validates against {schema}");
                }
            }
        }
    }
}
