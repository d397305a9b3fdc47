//! Pure policy logic: what the kernel maps should contain. No I/O here.

pub mod allow_spec;
pub mod compile;
pub mod decide;
mod fold;
pub mod prefix_regions;
pub mod rules;
mod sorting;
pub mod statics;
pub mod visibility;
