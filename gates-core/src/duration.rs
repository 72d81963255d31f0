//! Durations as operators write them: plain seconds (`600`, as seed 004 does)
//! or humantime (`45m`, `"5m 30s"`, `90s`).

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{t:?} is not a duration ≥ 0"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{t:?} is not a duration ({e}); write seconds (600) or e.g. 10m, 90s, \"5m 30s\"")
    })
}

/// For clap's `value_parser`.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
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
}
