//! Rate limits on the unauthenticated account endpoints (login, register, forgot, reset).
//!
//! - Per client address: a GCRA bucket (governor), `ip_per_minute` sustained with `ip_burst`
//!   at once, shared by the four endpoints.
//! - Per account: at most `account_attempts` counted attempts in a sliding `account_window`,
//!   separately per endpoint (keys are `login:<email>`, `register:<email>`, `forgot:<email>`,
//!   `reset:<user id>`). Login counts only failures (a person signing in on many devices is
//!   never slowed); the others count every request (they send mail or try tokens).
//!
//! Both forget idle keys periodically, so memory stays bounded by recent traffic.

use crate::config::RateLimits;
use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Limits {
    per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Arc<SlidingWindow>,
}

impl Limits {
    pub fn new(config: &RateLimits) -> Self {
        let per_minute = NonZeroU32::new(config.ip_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.ip_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            per_ip: Arc::new(RateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            )),
            per_account: Arc::new(SlidingWindow::new(config.account_attempts, config.account_window)),
        }
    }

    /// Spends one request of `ip`'s budget.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.per_ip.check_key(&ip).map_err(|not_until| {
            ApiError::too_many_requests(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Refuses when `account` has used its attempts in the window; spends nothing.
    pub fn check_account(&self, account: &str) -> Result<(), ApiError> {
        self.per_account
            .check(account)
            .map_err(ApiError::too_many_requests)
    }

    /// Counts one attempt against `account`.
    pub fn record_account(&self, account: &str) {
        self.per_account.record(account);
    }

    /// Checks and counts in one step (for endpoints where every request counts).
    pub fn spend_account(&self, account: &str) -> Result<(), ApiError> {
        self.check_account(account)?;
        self.record_account(account);
        Ok(())
    }

    /// Drops state of keys that have been quiet for a full window.
    pub fn forget_idle(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_account.forget_idle();
    }
}

/// Timestamps of recent attempts per key: exact, and tiny for the handful of keys that
/// ever fail.
#[derive(Debug)]
struct SlidingWindow {
    max: usize,
    window: Duration,
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SlidingWindow {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1) as usize,
            window,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = attempts.get_mut(key) else {
            return Ok(());
        };
        while log.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            log.pop_front();
        }
        match log.front() {
            Some(oldest) if log.len() >= self.max => Err(self.window - now.duration_since(*oldest)),
            _ => Ok(()),
        }
    }

    fn record(&self, key: &str) {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let log = attempts.entry(key.to_owned()).or_default();
        log.push_back(Instant::now());
        // Attempts past the limit are refused before recording, but bound it regardless.
        while log.len() > self.max {
            log.pop_front();
        }
    }

    fn forget_idle(&self) {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        attempts.retain(|_, log| log.back().is_some_and(|t| now.duration_since(*t) < self.window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_account_is_blocked_after_its_attempts_until_the_window_moves() {
        let window = SlidingWindow::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(window.check("a").is_ok());
            window.record("a");
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let wait = window.check("a").expect_err("blocked");
        assert_eq!(wait, Duration::from_secs(30));
        assert!(window.check("b").is_ok(), "other accounts are unaffected");
        tokio::time::advance(wait).await;
        assert!(window.check("a").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten() {
        let window = SlidingWindow::new(3, Duration::from_secs(60));
        window.record("a");
        tokio::time::advance(Duration::from_secs(61)).await;
        window.forget_idle();
        assert!(window.attempts.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_address_past_its_burst_gets_a_retry_after() {
        let limits = Limits::new(&RateLimits {
            ip_per_minute: 60,
            ip_burst: 2,
            ..RateLimits::default()
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limits.check_ip(ip).is_ok());
        assert!(limits.check_ip(ip).is_ok());
        let err = limits.check_ip(ip).expect_err("limited");
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(limits.check_ip([10, 0, 0, 2].into()).is_ok());
    }
}
