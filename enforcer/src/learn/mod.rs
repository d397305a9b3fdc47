//! Learn mode (docs/architecture.md, "Learn mode"): what enforced workloads reached or
//! tried to reach, kept as bounded observations, turned into ServiceEntries that would
//! allow exactly that. Pure: the daemon (`daemon/observe`) records and saves, the CLI
//! (`suggest`) reads and writes files.

pub mod exclude;
pub mod lru;
pub mod names;
pub mod render;
pub mod store;
pub mod suggest;
pub mod time;
