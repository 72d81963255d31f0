//! The allowed range of every number in the two config files, in one place,
//! so that a flag taking the same figure (`backup_dhash --keep`) checks the
//! same range and an error can name it.

use std::ops::RangeInclusive;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// An inclusive range of durations a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    pub const fn new(min: Duration, max: Duration) -> Self {
        DurationRange { min, max }
    }
    pub fn contains(&self, d: Duration) -> bool {
        d >= self.min && d <= self.max
    }
    /// "from 100ms to 1h", as errors say it.
    pub fn describe(&self) -> String {
        format!(
            "from {} to {}",
            crate::duration::human(self.min),
            crate::duration::human(self.max)
        )
    }
}

/// `retention.backups` in environments.json and `backup_dhash --keep`: at least
/// one backup is kept (the one just made), at most 10000.
pub const RETENTION_BACKUPS: RangeInclusive<u64> = 1..=10_000;
/// `retention.releases`: the serving release and one to roll back to, at least.
pub const RETENTION_RELEASES: RangeInclusive<u64> = 2..=1_000;
/// `health.checks_required`: OK answers in a row after a change.
pub const HEALTH_CHECKS_REQUIRED: RangeInclusive<u64> = 1..=100;
/// `errors_to_violate` / `no_data_to_violate` of a gate (0 = never).
pub const GATE_RUN_LENGTH: RangeInclusive<u64> = 0..=10_000;
/// A TCP port in `service.bind` or in a URL.
pub const PORT: RangeInclusive<u64> = 1..=65_535;

/// A gate threshold of a percent figure (rates, memory/cpu/disk).
pub const THRESHOLD_PERCENT: (f64, f64) = (0.0, 100.0);
/// A consecutive gate: failed checks in a row.
pub const THRESHOLD_CHECKS: (f64, f64) = (0.0, 10_000.0);
/// A percentile gate, in milliseconds (1 hour at most).
pub const THRESHOLD_MS: (f64, f64) = (0.0, 3_600_000.0);
/// Any other gate figure (queue lengths, counts).
pub const THRESHOLD_OTHER: (f64, f64) = (0.0, 1e12);

/// A gate's `window_minutes`: 0 (instant) to 7 days.
pub const GATE_WINDOW: DurationRange = DurationRange::new(Duration::ZERO, WEEK);
/// A post-deploy watch (`monitor.duration`, `monitoring.duration`): 1 s to 7 days.
pub const MONITOR_DURATION: DurationRange = DurationRange::new(SEC, WEEK);
/// One poll interval (`cadence[i].every`): 100 ms to 1 hour.
pub const CADENCE_EVERY: DurationRange = DurationRange::new(Duration::from_millis(100), HOUR);
/// A cadence phase's length (`for`) or end (`until`): 100 ms to 7 days.
pub const CADENCE_SPAN: DurationRange = DurationRange::new(Duration::from_millis(100), WEEK);
/// One probe's timeout (`monitor.probe_timeout`): 100 ms to 5 minutes.
pub const PROBE_TIMEOUT: DurationRange =
    DurationRange::new(Duration::from_millis(100), Duration::from_secs(5 * 60));
/// Service start/stop timeouts: 100 ms to 1 hour.
pub const SERVICE_TIMEOUT: DurationRange = DurationRange::new(Duration::from_millis(100), HOUR);
/// `health.interval`: 0 to 5 minutes.
pub const HEALTH_INTERVAL: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(5 * 60));
/// `health.timeout`: 100 ms to 1 hour.
pub const HEALTH_TIMEOUT: DurationRange = DurationRange::new(Duration::from_millis(100), HOUR);
/// `notifications.quiet_period`: 0 (never deduplicate) to 7 days.
pub const QUIET_PERIOD: DurationRange = DurationRange::new(Duration::ZERO, WEEK);
/// `notifications.timeout` (a whole notify call): 100 ms to 10 minutes.
pub const NOTIFY_TIMEOUT: DurationRange =
    DurationRange::new(Duration::from_millis(100), Duration::from_secs(10 * 60));

/// Checks a backup count the way the config does, for `backup_dhash --keep`:
/// `Ok(n)` within [`RETENTION_BACKUPS`], else the message naming the range.
pub fn check_backups_keep(n: u64) -> Result<usize, String> {
    if RETENTION_BACKUPS.contains(&n) {
        usize::try_from(n).map_err(|_| range_msg_u64(&RETENTION_BACKUPS, n))
    } else {
        Err(range_msg_u64(&RETENTION_BACKUPS, n))
    }
}

fn range_msg_u64(r: &RangeInclusive<u64>, n: u64) -> String {
    format!(
        "expected a whole number from {} to {}, found {n}",
        r.start(),
        r.end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line backup_dhash's `--keep` can use, so the flag and
    /// `retention.backups` accept exactly the same counts.
    #[test]
    fn keep_flag_and_config_share_the_range() {
        let cmd = || {
            clap::Command::new("backup_dhash").arg(
                clap::Arg::new("keep")
                    .long("keep")
                    .value_parser(clap::value_parser!(u64).range(RETENTION_BACKUPS)),
            )
        };
        for bad in ["0", "10001"] {
            let e = cmd()
                .try_get_matches_from(["backup_dhash", "--keep", bad])
                .expect_err(bad);
            assert!(e.to_string().contains("1..=10000"), "{e}");
            assert!(check_backups_keep(bad.parse().expect("n")).is_err());
        }
        let m = cmd()
            .try_get_matches_from(["backup_dhash", "--keep", "10000"])
            .expect("in range");
        assert_eq!(m.get_one::<u64>("keep"), Some(&10_000));
        assert_eq!(check_backups_keep(10_000), Ok(10_000));
        assert_eq!(
            check_backups_keep(0),
            Err("expected a whole number from 1 to 10000, found 0".to_string())
        );
    }

    #[test]
    fn ranges_describe_themselves_as_errors_say_them() {
        assert_eq!(GATE_WINDOW.describe(), "from 0ms to 7days");
        assert_eq!(CADENCE_EVERY.describe(), "from 100ms to 1h");
        assert!(MONITOR_DURATION.contains(Duration::from_secs(240 * 60)));
        assert!(!MONITOR_DURATION.contains(Duration::ZERO));
    }
}
