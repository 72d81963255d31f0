//! The time escalation reasons with. `DHASH_NOW` (RFC 3339, or Unix seconds)
//! sets it, so tests and drills can play out 15 minutes of warnings or a
//! 5-minute ack deadline with real processes and files in a second. Only
//! notify's escalation reads it: events, the quiet period and every other
//! tool keep the real time.

/// The variable that sets escalation's clock.
pub const NOW_VAR: &str = "DHASH_NOW";

/// Now, in Unix seconds: `DHASH_NOW` when set and readable, else the real clock.
pub fn now_secs() -> f64 {
    match std::env::var(NOW_VAR) {
        Ok(v) if !v.trim().is_empty() => parse(&v).unwrap_or_else(real_now),
        _ => real_now(),
    }
}

/// `Err` (naming the variable and its value) when `DHASH_NOW` is set but is
/// neither RFC 3339 nor Unix seconds. `notify ack` and `notify escalate`
/// refuse to run on it (a drill that silently ran on the real clock would
/// escalate, or not, at the wrong minute); an alert is still sent, with a
/// warning, on the real clock.
pub fn check() -> Result<(), String> {
    match std::env::var(NOW_VAR) {
        Ok(v) if !v.trim().is_empty() && parse(&v).is_none() => Err(format!(
            "{NOW_VAR}={v:?} is not a time: write RFC 3339 (2027-01-15T08:00:00Z) or Unix seconds, \
             or unset it for the real clock"
        )),
        _ => Ok(()),
    }
}

fn real_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// RFC 3339 or Unix seconds.
pub fn parse(text: &str) -> Option<f64> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return secs.is_finite().then_some(secs);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis() as f64 / 1000.0)
}

/// Unix seconds as RFC 3339 UTC (milliseconds).
pub fn rfc3339(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as i64;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_forms() {
        assert_eq!(parse("1700000000"), Some(1_700_000_000.0));
        assert_eq!(parse("2023-11-14T22:13:20Z"), Some(1_700_000_000.0));
        assert_eq!(rfc3339(1_700_000_000.0), "2023-11-14T22:13:20.000Z");
        assert_eq!(parse("soon"), None);
    }
}
