//! Per-row settings: optional input columns `model`, `system`, `temperature` and `max_tokens`
//! that override the flags for their row, so one run can compare models or settings.
//!
//! An empty cell means "use the flag". The cells are checked in the pre-flight like every other
//! part of a row, so a `temperature` of `hot` on line 90,000 fails the run before anything is
//! sent. The columns stay ordinary columns too: templates can still read `{{ model }}`.
//! Everything downstream (request body, request hash for resume and the cache, pricing, the spend
//! cap's reservation, the `model` results column) follows from the row's [`Request`], so nothing
//! else needs to know where a setting came from.

use crate::engine::input::{InputFile, Row};
use crate::engine::provider::Request;

/// Where the setting columns are in the input, if it has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSettings {
    model: Option<usize>,
    system: Option<usize>,
    temperature: Option<usize>,
    max_tokens: Option<usize>,
}

/// One row's overrides; `None` where the flag applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides<'a> {
    pub model: Option<&'a str>,
    /// Sent as the system message as it is (not a template).
    pub system: Option<&'a str>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

impl RowSettings {
    pub fn new(input: &InputFile) -> Self {
        let find = |name: &str| input.headers.iter().position(|h| h == name);
        RowSettings {
            model: find("model"),
            system: find("system"),
            temperature: find("temperature"),
            max_tokens: find("max_tokens"),
        }
    }

    /// Whether the input has a `model` column (the run may use several models).
    pub fn has_model(&self) -> bool {
        self.model.is_some()
    }

    /// The row's overrides, or what is wrong with them: `column "temperature": ...`, which the
    /// caller prefixes with the file and line.
    pub fn read<'a>(&self, row: &'a Row) -> Result<Overrides<'a>, String> {
        let cell = |i: Option<usize>| {
            i.and_then(|i| row.record.get(i))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let temperature = match cell(self.temperature) {
            None => None,
            Some(v) => match v.parse::<f32>() {
                Ok(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => {
                    return Err(format!(
                        "column \"temperature\": {v:?} is not a temperature; use a number from 0 \
                         to 2, or leave the cell empty to use --temperature"
                    ));
                }
            },
        };
        let max_tokens = match cell(self.max_tokens) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(format!(
                        "column \"max_tokens\": {v:?} is not a token count; use a whole number of \
                         1 or more, or leave the cell empty to use --max-tokens"
                    ));
                }
            },
        };
        let model = cell(self.model);
        if let Some(m) = model
            && m.chars().any(char::is_control)
        {
            return Err(format!(
                "column \"model\": {m:?} is not a model name (it contains a control character)"
            ));
        }
        Ok(Overrides {
            model,
            // A system message keeps its own whitespace; only an all-blank cell means "none".
            system: self
                .system
                .and_then(|i| row.record.get(i))
                .filter(|v| !v.trim().is_empty()),
            temperature,
            max_tokens,
        })
    }
}

impl Overrides<'_> {
    /// Puts the row's settings into its request, over the flags'.
    pub fn apply(&self, request: &mut Request) {
        if let Some(m) = self.model {
            request.model = m.to_string();
        }
        if let Some(s) = self.system {
            request.system = Some(s.to_string());
        }
        if self.temperature.is_some() {
            request.temperature = self.temperature;
        }
        if self.max_tokens.is_some() {
            request.max_tokens = self.max_tokens;
        }
    }

    /// The row's model: its own, or `default` (the flag's).
    pub fn model<'m>(&'m self, default: &'m str) -> &'m str {
        self.model.unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::input::fixtures::{input, row};

    fn request() -> Request {
        Request {
            model: "flag-model".into(),
            system: Some("flag system".into()),
            user: "u".into(),
            max_tokens: Some(100),
            temperature: Some(1.0),
            schema: None,
            parts: Vec::new(),
        }
    }

    #[test]
    fn cells_override_flags_and_empty_cells_keep_them() {
        let s = RowSettings::new(&input(&[
            "text",
            "model",
            "system",
            "temperature",
            "max_tokens",
        ]));
        let r = row(&["t", "gpt-4o", "be brief", "0.2", "7"]);
        let mut req = request();
        s.read(&r).unwrap().apply(&mut req);
        assert_eq!(req.model, "gpt-4o");
        assert_eq!(req.system.as_deref(), Some("be brief"));
        assert_eq!((req.temperature, req.max_tokens), (Some(0.2), Some(7)));

        let r = row(&["t", "", " ", "", ""]);
        let mut req = request();
        s.read(&r).unwrap().apply(&mut req);
        assert_eq!(req, request());
    }

    #[test]
    fn input_without_the_columns_changes_nothing() {
        let s = RowSettings::new(&input(&["text"]));
        assert!(!s.has_model());
        let mut req = request();
        s.read(&row(&["t"])).unwrap().apply(&mut req);
        assert_eq!(req, request());
    }

    #[test]
    fn bad_cells_name_their_column() {
        let s = RowSettings::new(&input(&["temperature", "max_tokens"]));
        for (cells, col) in [
            (["hot", ""], "temperature"),
            (["2.5", ""], "temperature"),
            (["-1", ""], "temperature"),
            (["", "0"], "max_tokens"),
            (["", "1.5"], "max_tokens"),
            (["", "-3"], "max_tokens"),
        ] {
            let msg = s.read(&row(&cells)).unwrap_err();
            assert!(
                msg.contains(&format!("column \"{col}\"")),
                "{cells:?}: {msg}"
            );
        }
    }
}
