//! Scoping (docs/kubernetes.md): which ServiceEntry hosts a workload may use, as Istio
//! decides it with `exportTo` and the `Sidecar` resource, and the policies that group
//! workloads with the same view. Pure: no I/O.

pub mod export;
pub mod kubelet;
pub mod policy;
pub mod select;
pub mod sidecar;
pub mod table;
