//! Verdict counters: the per-CPU array summed over CPUs and labelled.

use enforcer_common::{
    COUNTER_EVENTS_DROPPED, NUM_HOOKS, NUM_PROTO_CLASSES, NUM_VERDICTS, counter_index,
};
use serde::Serialize;

use super::verdicts::{PROTO_CLASS_NAMES, hook_name, verdict_name};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub hook: &'static str,
    pub proto: &'static str,
    pub verdict: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Stats {
    /// Only non-zero counters, in hook/protocol/verdict order.
    pub counters: Vec<Counter>,
    pub events_dropped: u64,
}

impl Stats {
    /// `totals[i]` is counter `i` summed over CPUs.
    pub fn from_totals(totals: &[u64]) -> Self {
        let mut counters = Vec::new();
        for h in 0..NUM_HOOKS {
            for p in 0..NUM_PROTO_CLASSES {
                for v in 0..NUM_VERDICTS {
                    let count = totals
                        .get(counter_index(h, p, v) as usize)
                        .copied()
                        .unwrap_or(0);
                    if count > 0 {
                        counters.push(Counter {
                            hook: hook_name(h),
                            proto: PROTO_CLASS_NAMES[p as usize],
                            verdict: verdict_name(v as u8),
                            count,
                        });
                    }
                }
            }
        }
        Self {
            counters,
            events_dropped: totals
                .get(COUNTER_EVENTS_DROPPED as usize)
                .copied()
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::{NUM_COUNTERS, PROTO_CLASS_UDP, VERDICT_DENY};

    #[test]
    fn labels_nonzero_counters() {
        let mut totals = vec![0u64; NUM_COUNTERS as usize];
        totals[counter_index(2, PROTO_CLASS_UDP, u32::from(VERDICT_DENY)) as usize] = 3;
        totals[counter_index(0, 0, 0) as usize] = 5;
        totals[COUNTER_EVENTS_DROPPED as usize] = 7;
        let s = Stats::from_totals(&totals);
        assert_eq!(s.counters.len(), 2);
        assert_eq!(
            s.counters[1],
            Counter {
                hook: "sendmsg4",
                proto: "udp",
                verdict: "deny",
                count: 3
            }
        );
        assert_eq!(s.events_dropped, 7);
    }
}
