//! Istio `ServiceEntry`: the model, YAML decoding, and validation equal to Istio's own.
//! Pure logic except for reading the files it is pointed at.

pub mod cache;
pub mod decode;
pub mod issue;
pub mod model;
pub mod names;
pub mod source;
pub mod validate;

pub use cache::load_paths;
pub use issue::{Issue, Severity};
pub use model::ServiceEntry;
pub use source::{LoadReport, Loaded, Origin};
