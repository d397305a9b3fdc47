//! Exists so that `enforcer` can name this crate as a build dependency, which makes cargo rebuild
//! the eBPF object when its sources change. The programs live in `main.rs`.
#![no_std]
