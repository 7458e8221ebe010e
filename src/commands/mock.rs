//! `batch mock`: the embedded mock server, in the foreground until Ctrl-C.

use std::time::Duration;

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::MockArgs;
use crate::engine::mock::{self, MockConfig, ServerOptions};

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
            server: Box::new(ServerOptions {
                rpd: a.rpd,
                rate_window: a.rate_window,
                retry_after: a.retry_after,
                require_key: a.require_key,
                not_found: a.not_found,
                no_limit_headers: a.no_limit_headers,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mock::RetryAfter;

    #[test]
    fn the_option_list_takes_the_new_flags_and_checks_them() {
        let m = MockArgs::from_option_list(
            "rpm=3000,rpd=14400,rate-window=1s,retry-after=litellm,require-key,\
             not-found=/v1/responses,not-found=/v1/batches",
        )
        .unwrap();
        let cfg = MockConfig::from(m).server;
        assert_eq!(cfg.rpd, Some(14_400));
        assert_eq!(cfg.rate_window, Some(Duration::from_secs(1)));
        assert_eq!(cfg.retry_after, RetryAfter::Litellm);
        assert!(cfg.require_key);
        assert_eq!(cfg.not_found, ["/v1/responses", "/v1/batches"]);
        let defaults = MockConfig::from(MockArgs::from_option_list("").unwrap()).server;
        assert_eq!(defaults.retry_after, RetryAfter::Standard);
        assert!(!defaults.require_key);
        for bad in [
            "rate-window=1s",
            "rpm=60,rate-window=0s",
            "rpd=0",
            "retry-after=sometimes",
            "not-found=v1/responses",
        ] {
            assert!(MockArgs::from_option_list(bad).is_err(), "{bad}");
        }
    }
}
