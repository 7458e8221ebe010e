//! `batch mock`: the embedded mock server, in the foreground until Ctrl-C.

use std::time::Duration;

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::MockArgs;
use crate::engine::mock::{self, MockConfig};

/// `batch mock`.
pub async fn run(args: MockArgs) -> Result<ExitStatus, Error> {
    mock::serve_forever(args.into()).await
}

impl From<MockArgs> for MockConfig {
    fn from(a: MockArgs) -> Self {
        MockConfig {
            port: a.port,
            latency: Duration::from_millis(a.latency_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            error_rate: a.error_rate.clamp(0.0, 1.0),
            slow_rate: a.slow_rate.clamp(0.0, 1.0),
            slow: Duration::from_millis(a.slow_ms),
            seed: a.seed,
            rpm: a.rpm,
            tpm: a.tpm,
            quota_exhausted_after: a.quota_exhausted_after,
            capacity: a.capacity,
            faults: a.fault,
            trickle: Duration::from_millis(a.trickle_ms),
            invalid_json_rate: a.invalid_json_rate.clamp(0.0, 1.0),
            batch_latency: Duration::from_millis(a.batch_latency_ms),
            batch_failure_rate: a.batch_failure_rate.clamp(0.0, 1.0),
            batch_expire_rate: a.batch_expire_rate.clamp(0.0, 1.0),
            batch_max_requests: a.batch_max_requests,
        }
    }
}
