//! Results columns computed from a row's answer after the standard ones: one `out.<name>` per
//! top-level property of `--schema`, then `match` and `match_detail` for `--expect`. They are
//! computed when the results are written (from the journal), so a resumed run gets them for
//! every row, whichever run answered it.

use std::sync::Arc;

use csv::StringRecord;

use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::engine::expect::{Expectation, PassRate};
use crate::engine::schema::OutputSchema;

pub struct DerivedColumns {
    schema: Option<Arc<OutputSchema>>,
    /// The expectation, the expected column's index in the input, and the tally so far.
    expect: Option<(Expectation, usize, PassRate)>,
}

impl DerivedColumns {
    /// `None` when there is nothing to add.
    pub fn new(
        schema: Option<Arc<OutputSchema>>,
        expect: Option<(Expectation, usize)>,
    ) -> Option<Self> {
        if schema.is_none() && expect.is_none() {
            return None;
        }
        Some(DerivedColumns {
            schema,
            expect: expect.map(|(e, i)| {
                let rate = e.pass_rate();
                (e, i, rate)
            }),
        })
    }

    pub fn names(&self) -> Vec<String> {
        let mut names = self
            .schema
            .as_ref()
            .map(|s| s.columns())
            .unwrap_or_default();
        if self.expect.is_some() {
            names.push("match".into());
            names.push("match_detail".into());
        }
        names
    }

    /// The cells of one row, in [`DerivedColumns::names`] order; empty for a row that has no
    /// answer. Counts the row in the pass rate.
    pub fn cells(&mut self, input: &StringRecord, r: &RowResult) -> Vec<String> {
        let answered = r.status == RowStatus::Ok;
        let mut cells = match &self.schema {
            Some(s) if answered => s.cells(&r.output),
            Some(s) => vec![String::new(); s.properties.len()],
            None => Vec::new(),
        };
        if let Some((e, index, rate)) = &mut self.expect {
            let expected = input.get(*index).unwrap_or("");
            let verdict = answered
                .then(|| e.compare(&r.output, expected, self.schema.as_deref()))
                .flatten();
            match verdict {
                Some(v) => {
                    rate.record(&v);
                    cells.push(v.matched.to_string());
                    cells.push(v.detail);
                }
                None => cells.extend([String::new(), String::new()]),
            }
        }
        cells
    }

    /// The pass rate over the rows written so far, with `--expect`.
    pub fn pass_rate(&self) -> Option<PassRate> {
        self.expect.as_ref().map(|(_, _, rate)| rate.clone())
    }
}
