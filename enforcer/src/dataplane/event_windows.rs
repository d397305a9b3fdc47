//! The kernel's repeat windows of deny/audit events (docs/architecture.md, "Events"): the
//! generation the daemon advances, and each window's count.

use aya::maps::{Array, MapData, PerCpuArray};
use enforcer_common::{EventWindow, map_names};

use super::maps::take;

pub struct EventWindows {
    windows: PerCpuArray<MapData, EventWindow>,
    generation: Array<MapData, u32>,
    current: u32,
}

impl EventWindows {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let generation: Array<MapData, u32> = take(
            ebpf.take_map(map_names::EVENT_GENERATION),
            map_names::EVENT_GENERATION,
        )?;
        let current = generation.get(&0, 0)?;
        Ok(Self {
            windows: take(
                ebpf.take_map(map_names::EVENT_WINDOWS),
                map_names::EVENT_WINDOWS,
            )?,
            generation,
            current,
        })
    }

    /// The generation windows open in now.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Ends the current generation: the next deny/audit of each call opens a new window.
    pub fn advance(&mut self) -> anyhow::Result<u32> {
        let next = self.current.wrapping_add(1);
        self.generation.set(0, next, 0)?;
        self.current = next;
        Ok(next)
    }

    /// Slot `slot` of CPU `cpu`.
    pub fn read(&self, cpu: u16, slot: u16) -> anyhow::Result<EventWindow> {
        let per_cpu = self.windows.get(&u32::from(slot), 0)?;
        per_cpu
            .get(usize::from(cpu))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no CPU {cpu} in EVENT_WINDOWS"))
    }
}
