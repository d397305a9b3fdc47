//! What the daemon knows of the kernel's repeat windows (docs/architecture.md, "Events"): each
//! slot's window as the event that opened it said, and how many of its repeats have been
//! reported. A window's count reaches the daemon once, either with the event that replaces
//! it or read from the kernel after its generation is over, never both.

use std::collections::HashMap;

use enforcer_common::EventWindow;

use crate::dataplane::events::EventRecord;

/// (CPU, slot) of a window in `EVENT_WINDOWS`.
pub type At = (u16, u16);

#[derive(Default)]
pub struct Windows {
    open: HashMap<At, Open>,
}

struct Open {
    record: EventRecord,
    generation: u32,
}

/// Repeats of the call `record` describes.
pub type Repeats = (EventRecord, u64);

impl Windows {
    /// An event from the ring buffer; the repeats of the window it replaced, if any. A window
    /// this daemon did not see open (programs of an earlier run) is not known and its count
    /// is left out.
    pub fn opened(&mut self, ev: &EventRecord) -> Option<Repeats> {
        let w = ev.window?;
        let replaced = self.open.insert(
            (w.cpu, w.slot),
            Open {
                record: ev.clone(),
                generation: w.generation,
            },
        )?;
        (w.replaced_repeats > 0).then(|| (replaced.record, u64::from(w.replaced_repeats)))
    }

    /// Windows that can no longer count: opened two generations or more before `current`
    /// (a program that read the generation just before it advanced has finished long since).
    pub fn over(&self, current: u32) -> Vec<At> {
        self.open
            .iter()
            .filter(|(_, o)| current.wrapping_sub(o.generation) >= 2)
            .map(|(at, _)| *at)
            .collect()
    }

    /// The kernel's slot `at`, read after its window was over: that window's repeats, and it
    /// is forgotten (a later event replacing it then reports nothing twice). A slot already
    /// holding a newer window is left alone: the event that opened it, still to be read,
    /// carries the count.
    pub fn settle(&mut self, at: At, kernel: &EventWindow) -> Option<Repeats> {
        let o = self.open.get(&at)?;
        if kernel.generation != o.generation {
            return None;
        }
        let o = self.open.remove(&at)?;
        (kernel.repeats > 0).then(|| (o.record, u64::from(kernel.repeats)))
    }

    /// Windows being followed (bounded by the slots: CPUs × `EVENT_WINDOW_SLOTS`).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::events::WindowRef;

    fn ev(port: u16, slot: u16, generation: u32, replaced_repeats: u32) -> EventRecord {
        EventRecord {
            ts_ns: 0,
            pid: 1,
            tid: 1,
            comm: "curl".into(),
            cgroup_id: 7,
            hook: "connect4",
            proto: "tcp".into(),
            addr: "192.0.2.1".parse().unwrap(),
            port,
            verdict: "deny",
            socket: None,
            window: Some(WindowRef {
                cpu: 0,
                slot,
                generation,
                replaced_repeats,
            }),
        }
    }

    fn kernel(generation: u32, repeats: u32) -> EventWindow {
        EventWindow {
            generation,
            repeats,
            ..EventWindow::default()
        }
    }

    #[test]
    fn a_replaced_window_reports_its_repeats_with_the_event_that_replaced_it() {
        let mut w = Windows::default();
        assert_eq!(w.opened(&ev(443, 3, 1, 0)), None);
        let (rec, n) = w.opened(&ev(80, 3, 1, 41)).unwrap();
        assert_eq!((rec.port, n), (443, 41));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_window_is_read_once_its_generation_is_over_and_only_once() {
        let mut w = Windows::default();
        w.opened(&ev(443, 3, 5, 0));
        assert!(w.over(5).is_empty());
        assert!(w.over(6).is_empty());
        assert_eq!(w.over(7), vec![(0, 3)]);
        let (rec, n) = w.settle((0, 3), &kernel(5, 9)).unwrap();
        assert_eq!((rec.port, n), (443, 9));
        // The count it had goes nowhere again when the slot is taken later.
        assert_eq!(w.opened(&ev(80, 3, 8, 9)), None);
    }

    #[test]
    fn a_slot_taken_again_before_the_read_waits_for_its_event() {
        let mut w = Windows::default();
        w.opened(&ev(443, 3, 5, 0));
        // The kernel already holds a newer window (its event not read yet).
        assert_eq!(w.settle((0, 3), &kernel(6, 2)), None);
        let (rec, n) = w.opened(&ev(80, 3, 6, 12)).unwrap();
        assert_eq!((rec.port, n), (443, 12));
    }

    #[test]
    fn windows_of_an_earlier_run_and_quiet_ones_report_nothing() {
        let mut w = Windows::default();
        assert_eq!(w.opened(&ev(443, 1, 5, 30)), None);
        assert_eq!(w.settle((0, 1), &kernel(5, 0)), None);
        assert_eq!(w.len(), 0);
        let mut plain = ev(443, 2, 5, 0);
        plain.window = None;
        assert_eq!(w.opened(&plain), None);
        assert_eq!(w.len(), 0);
    }
}
