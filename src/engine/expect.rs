//! Verification against trusted answers (`--expect COLUMN`): each row's answer is compared with
//! its expected cell, the verdict goes into the `match` column (and what differs into
//! `match_detail`), and the pass rate into the summary.
//!
//! Rows whose expected cell is empty are not compared (so a partly labelled file works), and
//! neither are rows that failed or were skipped: the pass rate is over answers that could be
//! judged. A pattern that does not compile (`--match regex`) or an expected cell that is not
//! JSON (`--match json`) is an input error found by the pre-flight, with its line, before
//! anything is sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::error::Error;
use crate::engine::input::list_columns;
use crate::engine::schema::OutputSchema;

/// How an answer is compared with the expected cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// The whole answer equals the expected cell.
    #[default]
    Exact,
    /// The answer contains the expected cell.
    Contains,
    /// The expected cell is a regular expression found somewhere in the answer (anchor it with
    /// ^...$ for a whole match).
    Regex,
    /// Both parse as JSON and are equal (objects field by field, numbers by value).
    Json,
}

impl MatchMode {
    pub fn name(self) -> &'static str {
        match self {
            MatchMode::Exact => "exact",
            MatchMode::Contains => "contains",
            MatchMode::Regex => "regex",
            MatchMode::Json => "json",
        }
    }
}

/// The resolved `--expect` settings (kept in a batch job's state file for `batch collect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub column: String,
    pub mode: MatchMode,
    pub ignore_case: bool,
    /// Runs of whitespace count as one space, and leading and trailing whitespace is ignored.
    pub ignore_whitespace: bool,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub matched: bool,
    /// Why it did not match, when that says more than the two cells side by side (which fields
    /// of a JSON answer differ, an answer that is not JSON).
    pub detail: String,
}

/// The pass rate, as the summary reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassRate {
    pub column: String,
    pub mode: MatchMode,
    /// How the comparison was loosened (`--ignore-case`, `--ignore-whitespace`).
    pub ignore_case: bool,
    pub ignore_whitespace: bool,
    /// Answered rows with an expected value.
    pub compared: u64,
    pub matched: u64,
    /// `matched / compared`, `null` when nothing was compared.
    pub rate: Option<f64>,
}

impl PassRate {
    pub fn record(&mut self, v: &Verdict) {
        self.compared += 1;
        self.matched += u64::from(v.matched);
        self.rate = Some(self.matched as f64 / self.compared as f64);
    }

    /// How answers were compared, as the summary names it: `exact`, or `exact, ignoring case
    /// and whitespace`.
    pub fn label(&self) -> String {
        let ignored: Vec<&str> = [
            (self.ignore_case, "case"),
            (self.ignore_whitespace, "whitespace"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, what)| *what)
        .collect();
        if ignored.is_empty() {
            self.mode.name().to_string()
        } else {
            format!("{}, ignoring {}", self.mode.name(), ignored.join(" and "))
        }
    }
}

impl Expectation {
    /// The expected column's position in `headers`; a usage error listing the columns if there
    /// is none.
    pub fn column_index(
        &self,
        headers: &[String],
        input: &std::path::Path,
    ) -> Result<usize, Error> {
        headers
            .iter()
            .position(|h| *h == self.column)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--expect {:?}: {} has no such column; its columns are: {}",
                    self.column,
                    input.display(),
                    list_columns(headers)
                ))
            })
    }

    pub fn pass_rate(&self) -> PassRate {
        PassRate {
            column: self.column.clone(),
            mode: self.mode,
            ignore_case: self.ignore_case,
            ignore_whitespace: self.ignore_whitespace,
            compared: 0,
            matched: 0,
            rate: None,
        }
    }

    /// Checks an expected cell before the run: a regex must compile, JSON must parse.
    pub fn check_expected(&self, expected: &str) -> Result<(), String> {
        if expected.is_empty() {
            return Ok(());
        }
        match self.mode {
            MatchMode::Regex => self.regex(expected).map(|_| ()).map_err(|e| {
                // The syntax error's last line says what is wrong ("unclosed group").
                let e = e.to_string();
                let why = e.lines().last().unwrap_or("").trim_start_matches("error: ");
                format!(
                    "--expect column {:?} is not a valid regex: {expected:?}: {why}",
                    self.column
                )
            }),
            MatchMode::Json => serde_json::from_str::<Value>(expected)
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "--expect column {:?} is not JSON (--match json): {e}",
                        self.column
                    )
                }),
            MatchMode::Exact | MatchMode::Contains => Ok(()),
        }
    }

    fn regex(&self, pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(pattern)
            .case_insensitive(self.ignore_case)
            .size_limit(1 << 20)
            .build()
    }

    /// The text as compared: folded as the options say.
    fn fold(&self, s: &str) -> String {
        let s = if self.ignore_whitespace {
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            s.to_string()
        };
        if self.ignore_case {
            s.to_lowercase()
        } else {
            s
        }
    }

    /// Compares an answer with its expected cell; `None` when there is nothing to compare with.
    /// With `schema` (and `--match json`), objects are compared in the schema's field order.
    pub fn compare(
        &self,
        output: &str,
        expected: &str,
        schema: Option<&OutputSchema>,
    ) -> Option<Verdict> {
        if expected.is_empty() {
            return None;
        }
        let plain = |matched: bool| Verdict {
            matched,
            detail: String::new(),
        };
        Some(match self.mode {
            MatchMode::Exact => plain(self.fold(output) == self.fold(expected)),
            MatchMode::Contains => plain(self.fold(output).contains(&self.fold(expected))),
            MatchMode::Regex => match self.regex(expected) {
                Ok(re) => {
                    let text = if self.ignore_whitespace {
                        self.fold(output)
                    } else {
                        output.to_string()
                    };
                    plain(re.is_match(&text))
                }
                Err(e) => Verdict {
                    matched: false,
                    detail: format!("invalid regex: {e}"),
                },
            },
            MatchMode::Json => self.compare_json(output, expected, schema),
        })
    }

    fn compare_json(&self, output: &str, expected: &str, schema: Option<&OutputSchema>) -> Verdict {
        let fail = |detail: String| Verdict {
            matched: false,
            detail,
        };
        let want: Value = match serde_json::from_str(expected) {
            Ok(v) => v,
            Err(e) => return fail(format!("expected value is not JSON: {e}")),
        };
        let got: Value = match serde_json::from_str(output) {
            Ok(v) => v,
            Err(e) => return fail(format!("answer is not JSON: {e}")),
        };
        let differences = match (&want, &got) {
            (Value::Object(w), Value::Object(g)) => {
                // With a schema: its fields, in its order, that the expected object gives (so
                // a label can cover some fields only). Without: every field of either.
                let mut fields: Vec<&str> = match schema {
                    Some(s) => s
                        .properties
                        .iter()
                        .map(String::as_str)
                        .filter(|f| w.contains_key(*f))
                        .collect(),
                    None => Vec::new(),
                };
                let others = w.keys().chain(g.keys().filter(|_| schema.is_none()));
                for k in others {
                    if !fields.contains(&k.as_str()) {
                        fields.push(k);
                    }
                }
                fields
                    .into_iter()
                    .filter_map(|f| match (w.get(f), g.get(f)) {
                        (None, None) => None,
                        (Some(a), Some(b)) if self.same(a, b) => None,
                        (Some(a), Some(b)) => Some(format!("{f}: expected {a}, got {b}")),
                        (Some(a), None) => Some(format!("{f}: expected {a}, got nothing")),
                        (None, Some(b)) => Some(format!("{f}: not expected, got {b}")),
                    })
                    .collect::<Vec<_>>()
            }
            _ if self.same(&want, &got) => Vec::new(),
            _ => vec![format!("expected {want}, got {got}")],
        };
        Verdict {
            matched: differences.is_empty(),
            detail: differences.join("; "),
        }
    }

    /// JSON equality with numbers compared by value and strings folded as the options say.
    fn same(&self, a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::String(x), Value::String(y)) => self.fold(x) == self.fold(y),
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| self.same(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| self.same(v, w)))
            }
            _ => a == b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(mode: MatchMode, ignore_case: bool, ignore_whitespace: bool) -> Expectation {
        Expectation {
            column: "label".into(),
            mode,
            ignore_case,
            ignore_whitespace,
        }
    }

    fn matched(e: &Expectation, output: &str, expected: &str) -> bool {
        e.compare(output, expected, None).unwrap().matched
    }

    fn matched_with(e: &Expectation, output: &str, expected: &str, s: &OutputSchema) -> bool {
        e.compare(output, expected, Some(s)).unwrap().matched
    }

    #[test]
    fn exact_and_contains_with_folding() {
        let e = exp(MatchMode::Exact, false, false);
        assert!(matched(&e, "positive", "positive"));
        assert!(!matched(&e, "Positive", "positive"));
        assert!(!matched(&e, " positive\n", "positive"));
        assert!(e.compare("anything", "", None).is_none());
        let e = exp(MatchMode::Exact, true, true);
        assert!(matched(&e, " Positive\n", "positive"));
        assert!(matched(&e, "very   GOOD\tthing", "very good thing"));
        assert!(!matched(&e, "verygood", "very good"));
        let e = exp(MatchMode::Contains, false, false);
        assert!(matched(&e, "The answer is positive.", "positive"));
        assert!(!matched(&e, "The answer is Positive.", "positive"));
        let e = exp(MatchMode::Contains, true, true);
        assert!(matched(
            &e,
            "The answer is\n  Positive  indeed",
            "positive indeed"
        ));
    }

    #[test]
    fn regex_searches_and_bad_patterns_are_caught_up_front() {
        let e = exp(MatchMode::Regex, false, false);
        assert!(matched(&e, "score: 42", r"\d+"));
        assert!(!matched(&e, "score: 42", r"^\d+$"));
        assert!(matched(&e, "positive", "^(positive|neutral)$"));
        assert!(!matched(&e, "POSITIVE", "^positive$"));
        assert!(matched(
            &exp(MatchMode::Regex, true, false),
            "POSITIVE",
            "^positive$"
        ));
        assert!(matched(
            &exp(MatchMode::Regex, false, true),
            "  a   b ",
            "^a b$"
        ));
        let err = e.check_expected("(unclosed").unwrap_err();
        assert!(
            err.contains("\"label\"") && err.ends_with("unclosed group"),
            "{err}"
        );
        assert!(e.check_expected("ok|fine").is_ok());
        assert!(
            exp(MatchMode::Exact, false, false)
                .check_expected("(")
                .is_ok()
        );
    }

    #[test]
    fn json_compares_values_and_names_the_fields_that_differ() {
        let e = exp(MatchMode::Json, false, false);
        assert!(matched(
            &e,
            r#"{"a": 1, "b": [true]}"#,
            r#"{"b":[true],"a":1.0}"#
        ));
        let v = e
            .compare(
                r#"{"sentiment": "negative", "score": 2, "extra": 1}"#,
                r#"{"sentiment": "positive", "score": 2, "topics": []}"#,
                None,
            )
            .unwrap();
        assert!(!v.matched);
        assert_eq!(
            v.detail,
            r#"sentiment: expected "positive", got "negative"; topics: expected [], got nothing; extra: not expected, got 1"#
        );
        let v = e.compare("not json", "{}", None).unwrap();
        assert!(
            !v.matched && v.detail.starts_with("answer is not JSON"),
            "{v:?}"
        );
        assert!(e.check_expected("{oops").is_err());
        let v = e.compare("3", "4", None).unwrap();
        assert_eq!(v.detail, "expected 4, got 3");
        let folded = exp(MatchMode::Json, true, true);
        assert!(matched(
            &folded,
            r#"{"s": "Very  Good"}"#,
            r#"{"s": "very good"}"#
        ));
    }

    #[test]
    fn json_with_a_schema_lists_fields_in_schema_order() {
        let schema = OutputSchema::new(
            "s".into(),
            serde_json::json!({"type": "object", "properties": {
                "z": {"type": "string"}, "a": {"type": "string"}},
                "required": ["z", "a"], "additionalProperties": false}),
            true,
        )
        .unwrap();
        let e = exp(MatchMode::Json, false, false);
        let v = e
            .compare(
                r#"{"a": "1", "z": "2"}"#,
                r#"{"a": "x", "z": "y"}"#,
                Some(&schema),
            )
            .unwrap();
        assert_eq!(
            v.detail,
            r#"z: expected "y", got "2"; a: expected "x", got "1""#
        );
        // Fields the expected value leaves out are not judged.
        assert!(matched_with(
            &e,
            r#"{"a": "1", "z": "2"}"#,
            r#"{"z": "2"}"#,
            &schema
        ));
        let v = e
            .compare(r#"{"a": "1"}"#, r#"{"z": "2"}"#, Some(&schema))
            .unwrap();
        assert_eq!(v.detail, r#"z: expected "2", got nothing"#);
    }

    #[test]
    fn pass_rate_counts() {
        let mut p = exp(MatchMode::Exact, false, false).pass_rate();
        assert_eq!(p.rate, None);
        for m in [true, false, true, true] {
            p.record(&Verdict {
                matched: m,
                detail: String::new(),
            });
        }
        assert_eq!((p.compared, p.matched, p.rate), (4, 3, Some(0.75)));
    }
}
