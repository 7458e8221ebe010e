//! What happened to one row: the record every layer above passes around, written to the
//! journal, the results file and the summary.

use std::time::Duration;

use serde::Serialize;

use crate::base::usage::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    Ok,
    Failed,
    /// Never answered because the run stopped first (Ctrl-C, quota, ...); a later run picks it up.
    Skipped,
    /// Not reached yet by a run that is still going, or was killed (`batch export` only).
    Pending,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::Failed => "failed",
            RowStatus::Skipped => "skipped",
            RowStatus::Pending => "pending",
        }
    }
}

/// What happened to one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    pub seq: u64,
    pub id: String,
    pub status: RowStatus,
    pub output: String,
    pub error: String,
    pub attempts: u32,
    /// Attempts answered with a 429 rate limit.
    pub throttled: u32,
    /// Latency of the last attempt.
    pub latency: Option<Duration>,
    pub usage: Option<Usage>,
    /// `None` when the model has no known price (or nothing was paid for).
    pub cost: Option<f64>,
    pub model: String,
    pub finish_reason: String,
    /// The answer came from the cache or from an identical request of this run: nothing was
    /// paid for it (`cost` is zero), and `saved_usd` is what it cost the first time.
    pub cached: bool,
    pub saved_usd: Option<f64>,
}

impl RowResult {
    /// A row that was never sent.
    pub fn skipped(seq: u64, id: String, model: &str, reason: &str) -> Self {
        RowResult {
            seq,
            id,
            status: RowStatus::Skipped,
            output: String::new(),
            error: reason.to_string(),
            attempts: 0,
            throttled: 0,
            latency: None,
            usage: None,
            cost: None,
            model: model.to_string(),
            finish_reason: String::new(),
            cached: false,
            saved_usd: None,
        }
    }

    /// The result of a row whose answer is reused from `original` (another row's, or the
    /// cache's), at no cost. A row that waited for an identical request that failed or was
    /// skipped shares its outcome, but not its attempts or spend: it sent nothing itself.
    pub fn reused(seq: u64, id: String, original: &RowResult) -> Self {
        let mut r = original.clone();
        r.seq = seq;
        r.id = id;
        r.cost = original.cost.map(|_| 0.0);
        r.attempts = 0;
        r.throttled = 0;
        r.latency = None;
        match r.status {
            RowStatus::Ok => {
                r.cached = true;
                r.saved_usd = original.saved_usd.or(original.cost);
            }
            RowStatus::Failed => {
                r.usage = None;
                r.error = format!(
                    "not sent: the identical request of row {} failed: {}",
                    original.id, original.error
                );
            }
            RowStatus::Skipped | RowStatus::Pending => r.usage = None,
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_row_shares_the_outcome_but_not_the_spend() {
        let mut leader = RowResult::skipped(3, "lead".into(), "m", "");
        leader.attempts = 4;
        leader.throttled = 2;
        leader.latency = Some(Duration::from_millis(80));
        leader.cost = Some(0.25);
        leader.usage = Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Default::default()
        });
        leader.status = RowStatus::Ok;
        leader.output = "yes".into();
        let ok = RowResult::reused(9, "follow".into(), &leader);
        assert_eq!(
            (ok.seq, ok.id.as_str(), ok.output.as_str()),
            (9, "follow", "yes")
        );
        assert_eq!((ok.attempts, ok.throttled, ok.latency), (0, 0, None));
        assert_eq!(
            (ok.cost, ok.saved_usd, ok.cached),
            (Some(0.0), Some(0.25), true)
        );
        assert_eq!(
            ok.usage, leader.usage,
            "the answer's tokens are still shown"
        );

        leader.status = RowStatus::Failed;
        leader.error = "server error: 503".into();
        let failed = RowResult::reused(9, "follow".into(), &leader);
        assert_eq!(failed.status, RowStatus::Failed);
        assert_eq!(
            (failed.attempts, failed.cost, failed.usage),
            (0, Some(0.0), None)
        );
        assert_eq!(
            failed.error,
            "not sent: the identical request of row lead failed: server error: 503"
        );
    }
}
