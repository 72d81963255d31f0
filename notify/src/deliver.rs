//! The one retrier every channel goes through (after Prometheus Alertmanager):
//! a timeout per attempt; what an answer means is the integration's to say
//! ([`crate::channels`]: delivered, worth another try, or permanent); retries
//! back off exponentially inside a deadline, and a server's `retry_after` is
//! honoured. `deliver_all` runs the channels concurrently, bounded by it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gates_core::config::EnvConfig;

use crate::channels::{self, Channel, Rendered, Target};

/// At most this many attempts per channel, whatever the deadline leaves.
pub const MAX_ATTEMPTS: u32 = 5;
/// First backoff; doubled after each failed attempt, capped at [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The longest one attempt may take (further bounded by the deadline).
pub const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Below this much time left, no new attempt is started.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
/// Extra time the caller waits, past the deadline, for channels to report.
const GRACE: Duration = Duration::from_millis(300);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        status: Option<u16>,
    },
    /// Worth another try; `after` is the server's `retry_after`, if it gave one.
    Retry {
        reason: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
    Permanent {
        reason: String,
        status: Option<u16>,
    },
}

/// The end of one channel's delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub delivered: bool,
    pub attempts: u32,
    pub status: Option<u16>,
    /// Why it was not delivered (empty when delivered).
    pub reason: String,
}

impl Outcome {
    pub fn failed(attempts: u32, status: Option<u16>, reason: String) -> Outcome {
        Outcome {
            delivered: false,
            attempts,
            status,
            reason,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub deadline: Instant,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
}

impl Policy {
    /// The per-attempt timeout for a total budget: half of it (so one hung
    /// attempt leaves room for a retry), between 1 s and 10 s.
    pub fn for_budget(total: Duration) -> Policy {
        let attempt = (total / 2).clamp(Duration::from_secs(1), MAX_ATTEMPT_TIMEOUT);
        Policy {
            deadline: Instant::now() + total,
            attempt_timeout: attempt,
            max_attempts: MAX_ATTEMPTS,
        }
    }
}

/// Exponential backoff with a little jitter (up to +20 %).
pub fn backoff(failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(16);
    let base = BASE_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 5000.0)
}

/// Runs `attempt` until it delivers, fails permanently, runs out of attempts
/// or the deadline would pass. `attempts` is updated as it goes, so a caller
/// that stops waiting still knows how many were made; `cancel` stops retries.
pub fn run(
    policy: &Policy,
    cancel: &AtomicBool,
    attempts: &AtomicU32,
    mut attempt: impl FnMut(Duration) -> Attempt,
) -> Outcome {
    let mut last_status = None;
    let mut last_reason = String::from("no attempt was made");
    loop {
        let left = policy.deadline.saturating_duration_since(Instant::now());
        if cancel.load(Ordering::SeqCst) || left < MIN_ATTEMPT {
            let n = attempts.load(Ordering::SeqCst);
            return Outcome::failed(
                n,
                last_status,
                format!(
                    "gave up after {n} attempt(s): notification timeout reached; last: {last_reason}"
                ),
            );
        }
        let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let after = match attempt(policy.attempt_timeout.min(left)) {
            Attempt::Delivered { status } => {
                return Outcome {
                    delivered: true,
                    attempts: n,
                    status,
                    reason: String::new(),
                }
            }
            Attempt::Permanent { reason, status } => {
                return Outcome::failed(n, status, format!("{reason} (permanent, not retried)"))
            }
            Attempt::Retry {
                reason,
                status,
                after,
            } => {
                (last_status, last_reason) = (status, reason);
                after
            }
        };
        if n >= policy.max_attempts {
            let reason = format!("gave up after {n} attempts; last: {last_reason}");
            return Outcome::failed(n, last_status, reason);
        }
        let wait = after.unwrap_or_else(|| backoff(n));
        if let Some(reason) = no_time_to_wait(policy, wait, after, n, &last_reason) {
            return Outcome::failed(n, last_status, reason);
        }
        sleep_unless_cancelled(wait, cancel);
    }
}

/// Why no further attempt fits before the deadline after waiting `wait`
/// (`None`: it fits).
fn no_time_to_wait(
    policy: &Policy,
    wait: Duration,
    server_wait: Option<Duration>,
    n: u32,
    last_reason: &str,
) -> Option<String> {
    let left = policy.deadline.saturating_duration_since(Instant::now());
    if wait + MIN_ATTEMPT <= left {
        return None;
    }
    Some(match server_wait {
        Some(a) => format!(
            "the server's retry_after ({:.1}s) is beyond the notification timeout ({:.1}s left); \
             gave up after {n} attempt(s); last: {last_reason}",
            a.as_secs_f64(),
            left.as_secs_f64()
        ),
        None => format!(
            "gave up after {n} attempt(s): no time left for another within the notification \
             timeout; last: {last_reason}"
        ),
    })
}

fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) {
    let end = Instant::now() + d;
    while !cancel.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A configured channel to deliver to.
pub(crate) struct Job {
    pub channel: Channel,
    pub target: Target,
}

/// Sends to every configured channel concurrently, bounded by the deadline.
pub(crate) fn deliver_all(
    env: &EnvConfig,
    r: &Rendered,
    key: Option<&str>,
    jobs: Vec<Job>,
) -> Vec<(Channel, Outcome)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    let threads = Threads {
        policy: Policy::for_budget(env.notify.timeout),
        cancel: Arc::new(AtomicBool::new(false)),
        tx,
    };
    let mut counters = Vec::new();
    let mut results: Vec<Option<Outcome>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let attempts = Arc::new(AtomicU32::new(0));
        counters.push(Arc::clone(&attempts));
        results.push(threads.start(i, job, r, key, attempts).err());
    }
    let Threads { policy, cancel, tx } = threads;
    drop(tx);
    let hard_stop = policy.deadline + GRACE;
    while results.iter().any(Option::is_none) {
        let wait = hard_stop.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((i, o)) => results[i] = Some(o),
            Err(_) => break,
        }
    }
    // Threads still running are abandoned; they start no new attempt.
    cancel.store(true, Ordering::SeqCst);
    jobs.iter()
        .zip(results)
        .zip(counters)
        .map(|((job, res), attempts)| {
            let o = res.unwrap_or_else(|| unanswered(env, attempts.load(Ordering::SeqCst)));
            (job.channel, o)
        })
        .collect()
}

/// What the delivery threads of one notification share.
struct Threads {
    policy: Policy,
    cancel: Arc<AtomicBool>,
    tx: mpsc::Sender<(usize, Outcome)>,
}

impl Threads {
    /// Starts job `i`'s delivery thread; `Err` is its outcome when it cannot
    /// start (its request cannot be built, or no thread).
    fn start(
        &self,
        i: usize,
        job: &Job,
        r: &Rendered,
        key: Option<&str>,
        attempts: Arc<AtomicU32>,
    ) -> Result<(), Outcome> {
        let request = channels::prepare(job.channel, &job.target, r, key)
            .map_err(|reason| Outcome::failed(0, None, reason))?;
        let (policy, tx, cancel) = (self.policy, self.tx.clone(), Arc::clone(&self.cancel));
        std::thread::Builder::new()
            .name(format!("notify-{}", job.channel))
            .spawn(move || {
                let outcome = run(&policy, &cancel, &attempts, |t| request.attempt(t));
                let _ = tx.send((i, outcome));
            })
            .map(drop)
            .map_err(|e| Outcome::failed(0, None, format!("cannot start a delivery thread: {e}")))
    }
}

/// A channel still trying when the caller stopped waiting.
fn unanswered(env: &EnvConfig, attempts: u32) -> Outcome {
    Outcome::failed(
        attempts,
        None,
        format!(
            "no answer within the notification timeout of {} ({attempts} attempt(s))",
            gates_core::duration::human(env.notify.timeout)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(total_ms: u64) -> Policy {
        Policy {
            deadline: Instant::now() + Duration::from_millis(total_ms),
            attempt_timeout: Duration::from_millis(500),
            max_attempts: MAX_ATTEMPTS,
        }
    }

    #[test]
    fn retries_then_delivers() {
        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let mut n = 0;
        let o = run(&policy(5000), &c, &a, |_| {
            n += 1;
            if n < 3 {
                Attempt::Retry {
                    reason: "HTTP 500".into(),
                    status: Some(500),
                    after: None,
                }
            } else {
                Attempt::Delivered { status: Some(200) }
            }
        });
        assert!(o.delivered);
        assert_eq!(o.attempts, 3);
    }

    #[test]
    fn permanent_is_not_retried_and_deadline_bounds() {
        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let o = run(&policy(5000), &c, &a, |_| Attempt::Permanent {
            reason: "HTTP 404".into(),
            status: Some(404),
        });
        assert_eq!((o.delivered, o.attempts), (false, 1));

        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let start = Instant::now();
        let o = run(&policy(600), &c, &a, |t| {
            std::thread::sleep(t);
            Attempt::Retry {
                reason: "timed out".into(),
                status: None,
                after: None,
            }
        });
        assert!(!o.delivered);
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );

        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let o = run(&policy(1000), &c, &a, |_| Attempt::Retry {
            reason: "429".into(),
            status: Some(429),
            after: Some(Duration::from_secs(30)),
        });
        assert_eq!(o.attempts, 1);
        assert!(o.reason.contains("retry_after"), "{}", o.reason);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= BASE_BACKOFF && backoff(1) < BASE_BACKOFF * 2);
        assert!(backoff(2) >= BASE_BACKOFF * 2);
        assert!(backoff(30) <= MAX_BACKOFF + MAX_BACKOFF / 5);
    }
}
