//! Durations as operators write them: plain seconds (`600`, as seed 004 does)
//! or humantime (`45m`, `"5m 30s"`, `90s`). Never panics: a figure too large
//! for a `Duration` (`1e300`) is an error value like any other bad input.

use std::time::Duration;

/// The longest duration a command-line flag takes (30 days): larger values are
/// typing mistakes, and a deadline that far away would overflow a clock.
pub const MAX_ARG_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `secs` seconds as a duration, or why not (negative, NaN, infinite, too large).
pub fn from_secs_checked(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{secs:?} is not a duration ≥ 0"));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{secs:?} seconds is too long a duration"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return from_secs_checked(secs).map_err(|_| format!("{t:?} is too long a duration"));
        }
        return Err(format!("{t:?} is not a duration ≥ 0"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{t:?} is not a duration ({e}); write seconds (600) or e.g. 10m, 90s, \"5m 30s\"")
    })
}

/// For clap's `value_parser`: a duration from 0 to [`MAX_ARG_DURATION`].
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d > MAX_ARG_DURATION {
        return Err(format!(
            "{:?} is longer than the {} a flag allows",
            text.trim(),
            human(MAX_ARG_DURATION)
        ));
    }
    Ok(d)
}

pub fn human(d: Duration) -> String {
    // Whole seconds keep messages short; sub-second only when under a second.
    if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_humantime() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(parse_duration("5m 30s"), Ok(Duration::from_secs(330)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").expect_err("bad").contains("600"));
        assert_eq!(human(Duration::from_secs(330)), "5m 30s");
    }

    #[test]
    fn absurd_figures_are_errors_not_panics() {
        for bad in [
            "1e300",
            "NaN",
            "inf",
            "-inf",
            "-0.5",
            "1e20",
            "18446744073709551616",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} must be refused");
        }
        // humantime's own overflow is an error too.
        assert!(parse_duration("99999999999999999999999y").is_err());
        let e = duration_arg("400d").expect_err("over the flag cap");
        assert!(e.contains("30days"), "{e}");
        assert_eq!(duration_arg("30days"), Ok(MAX_ARG_DURATION));
        assert_eq!(from_secs_checked(1.5), Ok(Duration::from_millis(1500)));
        assert!(from_secs_checked(f64::MAX).is_err());
    }
}
