//! Money as people read it, and as JSON writes it.

use serde::Serializer;

/// Dollars with enough digits for a single cheap request, without trailing zeros.
pub fn format_cost(usd: f64) -> String {
    let s = format!("{usd:.10}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// Decimal places of a cost: list prices are given to a thousandth of a dollar per million
/// tokens, and the cached and cache-write rates (0.1x, 1.25x) add one more digit, so no cost
/// is finer than 1e-10 dollars. Anything below is float noise from summing.
pub const USD_DECIMALS: i32 = 10;

/// A sum of costs rounded to the precision prices have, so `0.10939599999999988` becomes
/// `0.109396` in JSON (which prints the shortest form of the rounded value).
pub fn round_usd(usd: f64) -> f64 {
    let scale = 10f64.powi(USD_DECIMALS);
    (usd * scale).round() / scale
}

/// `#[serde(serialize_with = "round_usd_json")]` for a dollar amount.
pub fn round_usd_json<S: Serializer>(usd: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_usd(*usd))
}

/// `#[serde(serialize_with = "round_opt_usd_json")]` for a dollar amount that may be unknown.
pub fn round_opt_usd_json<S: Serializer>(usd: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match usd {
        Some(v) => s.serialize_some(&round_usd(*v)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_format_keeps_small_values() {
        assert_eq!(format_cost(0.0000005), "0.0000005");
        assert_eq!(format_cost(1.5), "1.5");
        assert_eq!(format_cost(0.0), "0");
    }

    #[test]
    fn sums_of_costs_lose_their_float_noise_in_json() {
        let sum: f64 = std::iter::repeat_n(0.0000556, 1967).sum();
        assert_ne!(sum.to_string(), "0.1093652", "the sum carries noise: {sum}");
        assert_eq!(serde_json::json!(round_usd(sum)).to_string(), "0.1093652");
        assert_eq!(round_usd(0.10939599999999988), 0.109396);
        assert_eq!(round_usd(3.125e-10), 3e-10);
    }
}
