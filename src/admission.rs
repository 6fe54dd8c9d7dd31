//! Admission by waiting time: the caller's deadline, carried with its call,
//! and the gate searches pass. A call is admitted only if it can start
//! within the configured wait and before its deadline; otherwise it is
//! refused at once (RESOURCE_EXHAUSTED, OVERLOADED, with RetryInfo) rather
//! than answered too late.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::observed;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with the caller's deadline (if any) visible to [`deadline`].
pub async fn with_deadline<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    match deadline {
        Some(d) => DEADLINE.scope(d, f).await,
        None => f.await,
    }
}

/// The deadline of the call being served, if the caller set one.
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// The longest a call may wait to start: `max_wait`, and no later than its deadline.
pub fn wait_budget(max_wait: Duration) -> Duration {
    match deadline() {
        Some(d) => max_wait.min(d.saturating_duration_since(Instant::now())),
        None => max_wait,
    }
}

/// A `grpc-timeout` header's value (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Searches running at once (the face index and the finger index share
/// the cores): a search waits for a place up to its budget, then is refused.
#[derive(Debug, Clone)]
pub struct SearchGate {
    places: Arc<Semaphore>,
    max_wait: Duration,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl SearchGate {
    /// `places` searches at once (at least one); a search waits at most `max_wait` for one.
    pub fn new(places: usize, max_wait: Duration) -> Self {
        Self { places: Arc::new(Semaphore::new(places.max(1))), max_wait }
    }

    /// A place to search, held until dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        let started = Instant::now();
        let place = match self.places.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let budget = wait_budget(self.max_wait);
                tokio::time::timeout(budget, self.places.clone().acquire_owned()).await.ok().and_then(Result::ok)
            }
        };
        let waited = started.elapsed();
        match place {
            Some(p) => {
                observed().admitted("search", waited);
                Ok(p)
            }
            None => {
                let why = if deadline().is_some_and(|d| d <= Instant::now() + Duration::from_millis(1)) {
                    "deadline"
                } else {
                    "wait"
                };
                observed().refused("search", why);
                Err(Refusal(format!(
                    "no search place freed within {} ms (search.max_wait_ms or the call's deadline); retry later",
                    waited.as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_search_waits_for_a_place_within_its_budget_then_is_refused() {
        let gate = SearchGate::new(1, Duration::from_millis(300));
        let held = gate.enter().await.expect("the first search runs at once");
        // A caller whose deadline is nearer than the gate's wait gives up at its deadline.
        let t = Instant::now();
        let near = with_deadline(Some(Instant::now() + Duration::from_millis(50)), gate.enter()).await;
        assert!(near.is_err());
        assert!(t.elapsed() < Duration::from_millis(250), "refused at the deadline, not at max_wait");
        // Without a deadline it waits max_wait, then is refused.
        let t = Instant::now();
        assert!(gate.enter().await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(290));
        // A place freed while waiting is taken.
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.enter().await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.expect("join"), "admitted once the place is free");
    }
}
