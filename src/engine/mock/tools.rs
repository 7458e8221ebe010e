//! Function tools of OpenAI's Chat Completions and Responses APIs: `tools` checked as OpenAI
//! checks them, and the call `tool_choice` makes the mock answer with. The mock calls a tool
//! when it is made to: `tool_choice` `"required"` (the first tool) or naming a function; with
//! `"auto"` (the default) or `"none"` it answers in text. Only function tools are served; any
//! other kind (web search, file search...) is refused with a 400 that says so.

use serde_json::{Value, json};

/// Which API's shapes `tools` and `tool_choice` come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// `{"type": "function", "function": {"name", "parameters"}}`.
    Chat,
    /// `{"type": "function", "name", "parameters"}`.
    Responses,
}

/// A 400: message, param and code.
pub(super) type Refusal = (String, String, &'static str);

/// The function the mock calls, with the schema its arguments fit.
pub(super) struct Call {
    pub name: String,
    pub parameters: Value,
}

/// Checks `tools` and `tool_choice`; returns the function to call, or none for a text answer.
pub(super) fn forced(
    flavor: Flavor,
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<Option<Call>, Refusal> {
    let functions = tool_list(tools)?
        .iter()
        .enumerate()
        .map(|(i, t)| function(flavor, i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(c) => c,
    };
    if functions.is_empty() {
        return Err((
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are \
             specified."
                .into(),
            "tool_choice".into(),
            "invalid_value",
        ));
    }
    match tool_choice(flavor, choice)? {
        Choice::Text => Ok(None),
        Choice::First => Ok(functions.into_iter().next()),
        Choice::Named(named) => match functions.into_iter().find(|f| f.name == named) {
            Some(f) => Ok(Some(f)),
            None => Err((
                format!("Invalid value for 'tool_choice': no function named '{named}' in 'tools'."),
                "tool_choice".into(),
                "invalid_value",
            )),
        },
    }
}

/// `tools` as a list (none given is an empty one), refused when it is not an array.
fn tool_list(tools: Option<&Value>) -> Result<&[Value], Refusal> {
    match tools {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(t)) => Ok(t.as_slice()),
        Some(_) => Err((
            "Invalid type for 'tools': expected an array of tools.".into(),
            "tools".into(),
            "invalid_type",
        )),
    }
}

/// Tool number `i` checked as a function tool of `flavor`'s shape, with the schema its
/// arguments are to fit.
fn function(flavor: Flavor, i: usize, t: &Value) -> Result<Call, Refusal> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "function" {
        return Err((
            format!(
                "The mock serves function tools only, not tools[{i}].type '{kind}'. Use \
                 {{\"type\": \"function\", ...}} tools, or test this against the real API."
            ),
            format!("tools[{i}].type"),
            "unsupported_value",
        ));
    }
    let (spec, at) = match flavor {
        Flavor::Chat => (t.get("function"), format!("tools[{i}].function")),
        Flavor::Responses => (Some(t), format!("tools[{i}]")),
    };
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        return Err((
            format!("Missing required parameter: '{at}'."),
            at,
            "missing_required_parameter",
        ));
    };
    let name = function_name(spec, &at)?;
    let parameters = function_parameters(spec, &at, name)?;
    Ok(Call {
        name: name.to_string(),
        parameters,
    })
}

/// The function's `name`, which OpenAI requires and limits to `^[a-zA-Z0-9_-]{1,64}$`; `at`
/// is where the function stands, for the refusal's param.
fn function_name<'a>(spec: &'a Value, at: &str) -> Result<&'a str, Refusal> {
    match spec.get("name").and_then(Value::as_str) {
        Some(n) if crate::engine::schema::valid_name(n) => Ok(n),
        Some(n) => Err((
            format!(
                "Invalid '{at}.name': string does not match pattern. Expected a string \
                 that matches the pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters, \
                 but got '{n}'."
            ),
            format!("{at}.name"),
            "invalid_value",
        )),
        None => Err((
            format!("Missing required parameter: '{at}.name'."),
            format!("{at}.name"),
            "missing_required_parameter",
        )),
    }
}

/// The function's `parameters` schema (an empty object schema when none is given), refused
/// when it is no valid JSON Schema object.
fn function_parameters(spec: &Value, at: &str, name: &str) -> Result<Value, Refusal> {
    match spec.get("parameters") {
        None | Some(Value::Null) => Ok(json!({"type": "object", "properties": {}})),
        Some(p) if p.is_object() && jsonschema::validator_for(p).is_ok() => Ok(p.clone()),
        Some(_) => Err((
            format!(
                "Invalid schema for function '{name}': 'parameters' is not a valid JSON Schema object."
            ),
            format!("{at}.parameters"),
            "invalid_function_parameters",
        )),
    }
}

/// What a `tool_choice` makes the mock answer with.
enum Choice<'a> {
    /// `"none"` or `"auto"`: text.
    Text,
    /// `"required"`: a call of the first function.
    First,
    /// A call of the function of this name.
    Named(&'a str),
}

/// The `tool_choice` given, read in `flavor`'s shape; refused when it is no mode and names no
/// function.
fn tool_choice(flavor: Flavor, choice: &Value) -> Result<Choice<'_>, Refusal> {
    let named = match choice {
        Value::String(mode) => match mode.as_str() {
            "none" | "auto" => return Ok(Choice::Text),
            "required" => return Ok(Choice::First),
            other => {
                return Err((
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'none', 'auto', and \
                         'required'."
                    ),
                    "tool_choice".into(),
                    "invalid_value",
                ));
            }
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match flavor {
                Flavor::Chat => o.get("function").and_then(|f| f.get("name")),
                Flavor::Responses => o.get("name"),
            }
            .and_then(Value::as_str)
        }
        _ => None,
    };
    let Some(named) = named else {
        let shape = match flavor {
            Flavor::Chat => "{\"type\": \"function\", \"function\": {\"name\": ...}}",
            Flavor::Responses => "{\"type\": \"function\", \"name\": ...}",
        };
        return Err((
            format!(
                "Invalid 'tool_choice': expected 'none', 'auto', 'required' or {shape} (the \
                 mock serves function tools only)."
            ),
            "tool_choice".into(),
            "invalid_value",
        ));
    };
    Ok(Choice::Named(named))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_calls_the_first_function_and_a_name_picks_one() {
        let tools = json!([
            {"type": "function", "function": {"name": "a"}},
            {"type": "function", "function": {"name": "b",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
        ]);
        let call = forced(Flavor::Chat, Some(&tools), Some(&json!("required")))
            .unwrap()
            .unwrap();
        assert_eq!(call.name, "a");
        assert_eq!(call.parameters["type"], "object");
        let call = forced(
            Flavor::Chat,
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "b"}})),
        )
        .unwrap()
        .unwrap();
        assert_eq!(call.name, "b");
        assert!(
            forced(Flavor::Chat, Some(&tools), Some(&json!("auto")))
                .unwrap()
                .is_none()
        );
        assert!(forced(Flavor::Chat, Some(&tools), None).unwrap().is_none());
    }

    #[test]
    fn wrong_tools_are_refused_with_the_param_at_fault() {
        let responses_tools = json!([{"type": "function", "name": "f"}]);
        let cases = [
            (
                Flavor::Responses,
                json!([{"type": "web_search"}]),
                json!("auto"),
                "tools[0].type",
            ),
            (
                Flavor::Chat,
                json!([{"type": "function", "function": {"name": "bad name"}}]),
                Value::Null,
                "tools[0].function.name",
            ),
            (Flavor::Chat, json!([]), json!("required"), "tool_choice"),
            (
                Flavor::Responses,
                responses_tools.clone(),
                json!({"type": "function", "name": "g"}),
                "tool_choice",
            ),
            (
                Flavor::Responses,
                responses_tools,
                json!("sometimes"),
                "tool_choice",
            ),
        ];
        for (flavor, tools, choice, param) in cases {
            let e = forced(flavor, Some(&tools), Some(&choice)).err().unwrap();
            assert_eq!(e.1, param, "{}", e.0);
        }
    }
}
