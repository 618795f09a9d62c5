//! The one retry loop of imgbuild: every request that a retry can fix (registry calls, blob
//! uploads and downloads, source downloads) goes through [`run`]. Bounded in attempts; the
//! waits grow exponentially with jitter (so processes that failed together do not come back
//! together), and a server's `Retry-After` is honoured up to [`Policy::longest_wait`].
//! A low module: any stage may use it; it uses only `error`.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How often and how patiently to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Attempts in all (at least one).
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each later one, up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// The longest `Retry-After` honoured: a server asking for more is not waited for.
    pub longest_wait: Duration,
}

impl Policy {
    /// `attempts` with the waits a registry or download server gets: 0.25–0.5 s, 0.5–1 s,
    /// 1–2 s, 2–4 s, then 4–8 s each, and `Retry-After` up to 60 s.
    pub(crate) const fn attempts(attempts: u32) -> Policy {
        Policy {
            attempts,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            longest_wait: Duration::from_secs(60),
        }
    }

    /// The wait before attempt `next` (2, 3, …) without a `Retry-After`: "equal jitter", half
    /// of the exponential step fixed and half random, so the sum of the waits has a floor
    /// (what a restarting server needs) and processes spread out.
    pub(crate) fn backoff(&self, next: u32, random: u64) -> Duration {
        let step = self.base.saturating_mul(1u32 << next.saturating_sub(2).min(16)).min(self.cap);
        let half = step / 2;
        let spread = half.as_millis() as u64;
        half + Duration::from_millis(if spread == 0 { 0 } else { random % (spread + 1) })
    }
}

/// How one attempt failed.
#[derive(Debug, Clone)]
pub(crate) enum Again<E> {
    /// Another attempt may succeed; `after`: how long the server asked to wait (`Retry-After`).
    Retry { error: E, after: Option<Duration> },
    /// No attempt will.
    Stop(E),
}

impl<E> Again<E> {
    pub(crate) fn retry(error: E) -> Self {
        Again::Retry { error, after: None }
    }
}

/// An error of a step that had its own retries, or that no retry fixes, ends the loop (`?`).
impl From<crate::error::Error> for Again<crate::error::Error> {
    fn from(e: crate::error::Error) -> Self {
        Again::Stop(e)
    }
}

/// Why [`run`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GaveUp<E> {
    /// An attempt failed in a way no retry can fix.
    Stopped(E),
    /// Every attempt failed; the last one's error.
    Exhausted { error: E, attempts: u32 },
    /// The server asked to wait longer than the policy allows.
    TooLong { error: E, asked: Duration },
}

impl<E> GaveUp<E> {
    /// The error, with what the retries were when there were any (`(after 5 attempts)`).
    pub(crate) fn describe(self, with: impl FnOnce(E, Option<String>) -> E) -> E {
        match self {
            GaveUp::Stopped(e) => e,
            GaveUp::Exhausted { error, attempts } => with(error, Some(format!("(after {attempts} attempts)"))),
            GaveUp::TooLong { error, asked } => with(
                error,
                Some(format!("(the registry asks to wait {} s before trying again: try later)", asked.as_secs())),
            ),
        }
    }
}

/// Runs `attempt` (given its number, from 1) until it succeeds, fails for good, or the
/// policy's attempts are spent, sleeping between attempts as [`Policy::backoff`] and the
/// server's `Retry-After` say.
pub(crate) fn run<T, E>(policy: &Policy, mut attempt: impl FnMut(u32) -> Result<T, Again<E>>) -> Result<T, GaveUp<E>> {
    run_with(policy, &mut attempt, &mut std::thread::sleep, &mut random)
}

fn run_with<T, E>(
    policy: &Policy,
    attempt: &mut dyn FnMut(u32) -> Result<T, Again<E>>,
    sleep: &mut dyn FnMut(Duration),
    random: &mut dyn FnMut() -> u64,
) -> Result<T, GaveUp<E>> {
    let attempts = policy.attempts.max(1);
    let mut n = 1;
    loop {
        let (error, after) = match attempt(n) {
            Ok(value) => return Ok(value),
            Err(Again::Stop(error)) => return Err(GaveUp::Stopped(error)),
            Err(Again::Retry { error, after }) => (error, after),
        };
        if n >= attempts {
            return Err(GaveUp::Exhausted { error, attempts });
        }
        if let Some(asked) = after.filter(|a| *a > policy.longest_wait) {
            return Err(GaveUp::TooLong { error, asked });
        }
        n += 1;
        sleep(policy.backoff(n, random()).max(after.unwrap_or_default()));
    }
}

/// A random number for jitter: std's per-process random hash keys, mixed with a counter.
fn random() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.finish()
}

/// A `Retry-After` value (RFC 9110): delay-seconds, or an HTTP-date (IMF-fixdate, the form
/// servers send) as the time from now until then (zero when past). Anything else gives `None`:
/// the ordinary backoff applies.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    retry_after_at(value, std::time::SystemTime::now())
}

fn retry_after_at(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let then = std::time::UNIX_EPOCH + Duration::from_secs(imf_fixdate(value)?);
    Some(then.duration_since(now).unwrap_or_default())
}

/// Seconds since the epoch of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(text: &str) -> Option<u64> {
    let (_weekday, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == month)? as u64 + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else { return None };
    if !(1..=31).contains(&day) || year < 1970 || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    // Days from the epoch to the date (Howard Hinnant's days_from_civil, years from March).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Runs `outcomes` (one per attempt; past the end, success) and returns the result and
    /// the sleeps it made.
    fn simulate(
        policy: &Policy,
        outcomes: &[Option<Again<u32>>],
        seed: u64,
    ) -> (Result<u32, GaveUp<u32>>, Vec<Duration>) {
        let mut sleeps = Vec::new();
        let mut calls = 0usize;
        let mut state = seed;
        let result = run_with(
            policy,
            &mut |n| {
                calls += 1;
                assert_eq!(n as usize, calls, "attempts are numbered from 1");
                match outcomes.get(calls - 1) {
                    Some(Some(Again::Retry { error, after })) => Err(Again::Retry { error: *error, after: *after }),
                    Some(Some(Again::Stop(e))) => Err(Again::Stop(*e)),
                    _ => Ok(n),
                }
            },
            &mut |d| sleeps.push(d),
            &mut || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                state >> 11
            },
        );
        (result, sleeps)
    }

    fn outcome() -> impl Strategy<Value = Option<Again<u32>>> {
        prop_oneof![
            4 => (0u32..100, proptest::option::of(0u64..90)).prop_map(|(e, after)| Some(Again::Retry {
                error: e,
                after: after.map(Duration::from_secs)
            })),
            1 => (0u32..100).prop_map(|e| Some(Again::Stop(e))),
            1 => Just(None),
        ]
    }

    proptest! {
        /// Whatever the attempts answer: never more attempts than the policy allows, never a
        /// wait past `max(cap, longest_wait)`, a `Retry-After` within bounds always honoured,
        /// one beyond them never waited for, and a stop or success ends the loop at once.
        #[test]
        fn the_loop_is_bounded_and_honours_retry_after(
            attempts in 1u32..8,
            outcomes in proptest::collection::vec(outcome(), 0..10),
            seed: u64,
        ) {
            let policy = Policy::attempts(attempts);
            let (result, sleeps) = simulate(&policy, &outcomes, seed);
            prop_assert!(sleeps.len() < attempts as usize);
            for (i, d) in sleeps.iter().enumerate() {
                prop_assert!(*d <= policy.cap.max(policy.longest_wait));
                prop_assert!(*d >= policy.backoff(i as u32 + 2, 0), "the floor of the jitter");
                if let Some(Some(Again::Retry { after: Some(after), .. })) = outcomes.get(i) {
                    prop_assert!(d >= after, "Retry-After {after:?} honoured: slept {d:?}");
                }
            }
            let tried = sleeps.len() + 1;
            match (&result, outcomes.get(tried - 1)) {
                (Ok(n), None | Some(None)) => prop_assert_eq!(*n as usize, tried),
                (Err(GaveUp::Stopped(e)), Some(Some(Again::Stop(s)))) => prop_assert_eq!(e, s),
                (Err(GaveUp::Exhausted { attempts: a, .. }), Some(Some(Again::Retry { .. }))) => {
                    prop_assert_eq!(*a as usize, tried);
                    prop_assert_eq!(tried, attempts as usize);
                }
                (Err(GaveUp::TooLong { asked, .. }), Some(Some(Again::Retry { after: Some(after), .. }))) => {
                    prop_assert_eq!(asked, after);
                    prop_assert!(*asked > policy.longest_wait);
                }
                other => prop_assert!(false, "unexpected end {:?}", other),
            }
        }

        /// The date arithmetic agrees with counting the days one year and month at a time.
        #[test]
        fn http_dates_count_the_days_as_the_calendar_does(
            year in 1970u64..2400, month in 1u64..=12, day in 1u64..=28, h in 0u64..24, m in 0u64..60, s in 0u64..60,
        ) {
            let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
            let month_days = |y: u64, mo: u64| match mo { 2 if leap(y) => 29, 2 => 28, 4 | 6 | 9 | 11 => 30, _ => 31 };
            let days: u64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum::<u64>()
                + (1..month).map(|mo| month_days(year, mo)).sum::<u64>()
                + day - 1;
            const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
            let text = format!("Mon, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT", MONTHS[month as usize - 1]);
            prop_assert_eq!(imf_fixdate(&text), Some(days * 86_400 + h * 3600 + m * 60 + s), "{}", text);
        }

        #[test]
        fn backoff_grows_to_its_cap_with_jitter_in_the_upper_half(next in 2u32..40, random: u64) {
            let policy = Policy::attempts(5);
            let d = policy.backoff(next, random);
            let step = policy.base.saturating_mul(1 << (next - 2).min(16)).min(policy.cap);
            prop_assert!(d >= step / 2 && d <= step, "{d:?} for step {step:?}");
        }
    }

    #[test]
    fn five_attempts_wait_long_enough_for_a_restart_and_not_too_long() {
        let policy = Policy::attempts(5);
        let least: Duration = (2..=5).map(|n| policy.backoff(n, 0)).sum();
        assert_eq!(least, Duration::from_millis(250 + 500 + 1000 + 2000));
        // Each wait is at most its step (the property above): 0.5 + 1 + 2 + 4 s.
        let most: Duration = (2..=5).map(|n| policy.base * (1 << (n - 2))).sum();
        assert_eq!(most, Duration::from_millis(7500));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
        // RFC 9110's example date, and the epoch.
        assert_eq!(imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(imf_fixdate("Tue, 29 Feb 2028 23:59:59 GMT"), Some(1_835_481_599));
        for bad in ["Sun, 06 Nov 1994 08:49:37 CET", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun, 32 Nov 1994 08:49:37 GMT"]
        {
            assert_eq!(imf_fixdate(bad), None, "{bad}");
        }
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        assert_eq!(retry_after_at("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(30)));
        let later = now + Duration::from_secs(3600);
        assert_eq!(retry_after_at("Sun, 06 Nov 1994 08:49:37 GMT", later), Some(Duration::ZERO), "a date past");
    }
}
