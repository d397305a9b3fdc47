//! At most [`PER_WINDOW`] reports of unregistered names per second: a workload that floods
//! queries must not flood the log. What is held back is counted and said once the window ends.
//! Pure: the caller passes the clock.

use std::time::{Duration, Instant};

pub const PER_WINDOW: u64 = 100;
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ReportLimit {
    start: Option<Instant>,
    logged: u64,
    held: u64,
}

/// What to do with one report.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    /// Log this report.
    pub log: bool,
    /// Reports held back in the window that just ended, to say so first.
    pub held_before: u64,
}

impl ReportLimit {
    pub fn offer(&mut self, now: Instant) -> Decision {
        let mut held_before = 0;
        if self.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            held_before = self.held;
            *self = Self {
                start: Some(now),
                ..Self::default()
            };
        }
        let log = self.logged < PER_WINDOW;
        if log {
            self.logged += 1;
        } else {
            self.held += 1;
        }
        Decision { log, held_before }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_counted() {
        let mut l = ReportLimit::default();
        let t0 = Instant::now();
        let logged = (0..250).filter(|_| l.offer(t0).log).count();
        assert_eq!(logged, 100);
        let next = l.offer(t0 + WINDOW);
        assert_eq!(
            next,
            Decision {
                log: true,
                held_before: 150
            }
        );
        assert_eq!(l.offer(t0 + WINDOW).held_before, 0);
    }
}
