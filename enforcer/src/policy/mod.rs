//! Pure policy logic: what the kernel maps should contain. No I/O here.

pub mod allow_spec;
pub mod compile;
pub mod decide;
pub mod rules;
pub mod statics;
pub mod visibility;
