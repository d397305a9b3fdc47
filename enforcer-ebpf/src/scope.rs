//! Scoping (docs/architecture.md, "Scoping"): a rule whose `vset` is not everyone's applies
//! only to callers whose policy is in that set. The caller's policy is found once per
//! decision, and only when a matching rule needs it.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
};
use enforcer_common::{MAX_CGROUP_DEPTH, MAX_POLICIES, POLICY_UNMAPPED, POLICY_WORDS};

use crate::maps::{CGROUP_POLICY, VSETS};

/// Who is calling: the policy comes from its cgroup.
pub(crate) struct Caller {
    default: u32,
    /// A packet's socket's cgroup instead of the calling task's (`cgroup_skb` programs, which
    /// may run outside the sender's context). Null for the calling task: a pointer rather
    /// than an Option, whose None LLVM may carry as an undefined register the verifier refuses.
    skb: *mut __sk_buff,
}

impl Caller {
    /// The calling task.
    #[inline(always)]
    pub(crate) fn task(default: u32) -> Self {
        Self {
            default,
            skb: core::ptr::null_mut(),
        }
    }

    /// The socket that sent `skb`.
    #[inline(always)]
    pub(crate) fn packet(default: u32, skb: *mut __sk_buff) -> Self {
        Self { default, skb }
    }

    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: helpers without preconditions; `skb` is the program's context.
        unsafe {
            if self.skb.is_null() {
                bpf_get_current_cgroup_id()
            } else {
                bpf_skb_cgroup_id(self.skb)
            }
        }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe {
            if self.skb.is_null() {
                bpf_get_current_ancestor_cgroup_id(level)
            } else {
                bpf_skb_ancestor_cgroup_id(self.skb, level)
            }
        }
    }

    /// The calling task's cgroup's policy, else its deepest mapped ancestor's, else the
    /// default.
    #[inline(always)]
    pub(crate) fn policy(&self) -> u32 {
        let id = self.cgroup();
        if let Some(p) = CGROUP_POLICY.get_ptr(id) {
            // SAFETY: a map value pointer is valid for the program run.
            return unsafe { *p };
        }
        // Deeper than the walk: the deepest mapped ancestor may be out of its reach, and
        // the default may be wider than it. Such a caller gets no policy (fail closed).
        if self.ancestor(MAX_CGROUP_DEPTH as i32 + 1) != 0 {
            return POLICY_UNMAPPED;
        }
        // From the deepest level up: the first mapped ancestor is the deepest one. Past
        // the cgroup's own level the helper answers 0.
        let mut level = MAX_CGROUP_DEPTH as i32;
        while level > 0 {
            let a = self.ancestor(level);
            if a != 0
                && let Some(v) = CGROUP_POLICY.get_ptr(a)
            {
                // SAFETY: as above.
                return unsafe { *v };
            }
            level -= 1;
        }
        self.default
    }

    /// Whether policy `p` is in set `vset`.
    #[inline(always)]
    pub(crate) fn in_set(vset: u32, p: u32) -> bool {
        if p >= MAX_POLICIES {
            return false;
        }
        let index = vset.wrapping_mul(POLICY_WORDS).wrapping_add(p / 64);
        VSETS
            .get(index)
            .is_some_and(|word| (*word >> (p % 64)) & 1 == 1)
    }
}
