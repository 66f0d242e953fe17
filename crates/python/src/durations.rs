//! Seconds from Python as `Duration`s. Every timeout, grace period and age limit crosses here,
//! so no float can reach a panicking conversion: infinity means "no limit", NaN and negative
//! values are refused with `InvalidParameterError`, and values too large for a `Duration` (or
//! for a deadline) count as no limit.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::errors::invalid_parameter;

/// `seconds` as a limit: `None` for no limit (`None` or infinity); `name` is the parameter's
/// name for the error message.
pub fn limit(seconds: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    seconds.map_or(Ok(None), |seconds| {
        parse(seconds).map_err(|()| {
            invalid_parameter(format!(
                "{name}={seconds} is not a duration: use a number of seconds >= 0 (or None / \
                 float('inf') for no limit)"
            ))
        })
    })
}

fn parse(seconds: f64) -> Result<Option<Duration>, ()> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(());
    }
    // Infinity and values past Duration::MAX both mean: never.
    Ok(Duration::try_from_secs_f64(seconds).ok())
}

/// The instant `limit` from now; `None` when it lies beyond what an `Instant` can express.
pub fn deadline(limit: Option<Duration>) -> Option<Instant> {
    limit.and_then(|limit| Instant::now().checked_add(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinity_and_huge_values_mean_no_limit() {
        assert_eq!(parse(f64::INFINITY), Ok(None));
        assert_eq!(parse(1e300), Ok(None));
        assert_eq!(parse(1.5), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(parse(0.0), Ok(Some(Duration::ZERO)));
        assert_eq!(deadline(Some(Duration::MAX)), None);
    }

    #[test]
    fn nan_and_negative_values_are_refused() {
        assert_eq!(parse(f64::NAN), Err(()));
        assert_eq!(parse(-1.0), Err(()));
        assert_eq!(parse(f64::NEG_INFINITY), Err(()));
    }
}
