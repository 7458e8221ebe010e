//! Numbers for people: the one place that decides how rates, durations, money and counts are
//! printed, so the summary, the progress line, `bench`, `status`/`collect` and `watch` agree
//! ("64.4/s", "1.2 s", "356 ms", "$0.0123", "1 row", "2 rows").
//!
//! Machine output (results files, `--summary-json`, exports) keeps full numbers; money written
//! to JSON goes through [`crate::base::money::round_usd`] instead.

use std::time::Duration;

use crate::base::money::format_cost;

/// A count with its noun, singular for exactly one: `count(1, "row")` is "1 row",
/// `count(2, "row")` is "2 rows". Nouns whose plural is not `+s` go through [`count_as`].
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A count with an irregular plural: `count_as(2, "entry", "entries")`.
pub fn count_as(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A rate with three significant digits, as `bench` has always printed them: "0.25", "5.65",
/// "64.4", "1950". Nothing measured (not a number) prints as "-".
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 0.0 {
        "-".into()
    } else if per_sec == 0.0 {
        "0".into()
    } else if per_sec >= 100.0 {
        format!("{per_sec:.0}")
    } else if per_sec >= 10.0 {
        format!("{per_sec:.1}")
    } else {
        format!("{per_sec:.2}")
    }
}

/// A rate per second with its unit: "64.4/s".
pub fn per_sec(per_sec: f64) -> String {
    format!("{}/s", rate(per_sec))
}

/// A duration as people say it: "356 ms", "1.2 s", "4 min 05 s", "2 h 03 min". Sub-millisecond
/// noise (`356.878849ms`) is never shown.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = d.as_secs();
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// Milliseconds (a latency percentile) as a duration: `millis(356.9)` is "357 ms".
pub fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        duration(Duration::from_secs_f64(ms / 1000.0))
    }
}

/// Dollars: "$0.0123", "$0" (as many digits as a cheap request needs, no trailing zeros).
pub fn usd(v: f64) -> String {
    format!("${}", format_cost(v))
}

/// Dollars to the nearest millionth, for estimates and sums in messages ("$0.004909").
pub fn usd_micro(v: f64) -> String {
    usd((v * 1e6).round() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "row"), "1 row");
        assert_eq!(count(0, "row"), "0 rows");
        assert_eq!(count(2, "field"), "2 fields");
        assert_eq!(count_as(1, "entry", "entries"), "1 entry");
        assert_eq!(count_as(3, "entry", "entries"), "3 entries");
    }

    #[test]
    fn rates_have_at_most_one_decimal_above_one() {
        assert_eq!(per_sec(64.3984), "64.4/s");
        assert_eq!(per_sec(1950.4), "1950/s");
        assert_eq!(per_sec(0.25), "0.25/s");
        assert_eq!(per_sec(5.6489), "5.65/s");
        assert_eq!(per_sec(0.0), "0/s");
        assert_eq!(per_sec(f64::NAN), "-/s");
    }

    #[test]
    fn durations_drop_sub_millisecond_noise() {
        assert_eq!(duration(Duration::from_nanos(356_878_849)), "356 ms");
        assert_eq!(duration(Duration::from_millis(1234)), "1.2 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(duration(Duration::from_secs(7380)), "2 h 03 min");
        assert_eq!(millis(102.4), "102 ms");
        assert_eq!(millis(30_000.0), "30.0 s");
    }

    #[test]
    fn money_is_dollars_without_trailing_zeros() {
        assert_eq!(usd(0.019082), "$0.019082");
        assert_eq!(usd(0.0), "$0");
    }
}
