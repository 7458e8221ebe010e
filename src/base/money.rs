//! Money as people read it.

/// Dollars with enough digits for a single cheap request, without trailing zeros.
pub fn format_cost(usd: f64) -> String {
    let s = format!("{usd:.10}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
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
}
