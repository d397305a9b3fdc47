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
use enforcer_common::{MAX_CGROUP_DEPTH, MAX_POLICIES, POLICY_WORDS, VSET_EVERYONE};

use crate::maps::{CGROUP_POLICY, VSETS};

/// The caller's policy, looked up on first use.
pub(crate) struct Caller {
    policy: Option<u32>,
    default: u32,
    /// A packet's socket's cgroup instead of the calling task's (`cgroup_skb` programs, which
    /// may run outside the sender's context).
    skb: Option<*mut __sk_buff>,
}

impl Caller {
    /// The calling task.
    #[inline(always)]
    pub(crate) fn task(default: u32) -> Self {
        Self {
            policy: None,
            default,
            skb: None,
        }
    }

    /// The socket that sent `skb`.
    #[inline(always)]
    pub(crate) fn packet(default: u32, skb: *mut __sk_buff) -> Self {
        Self {
            policy: None,
            default,
            skb: Some(skb),
        }
    }

    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: helpers without preconditions; `skb` is the program's context.
        unsafe {
            match self.skb {
                Some(skb) => bpf_skb_cgroup_id(skb),
                None => bpf_get_current_cgroup_id(),
            }
        }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe {
            match self.skb {
                Some(skb) => bpf_skb_ancestor_cgroup_id(skb, level),
                None => bpf_get_current_ancestor_cgroup_id(level),
            }
        }
    }

    /// The calling task's cgroup's policy, else its deepest mapped ancestor's, else the
    /// default.
    #[inline(always)]
    fn policy(&mut self) -> u32 {
        if let Some(p) = self.policy {
            return p;
        }
        let id = self.cgroup();
        // SAFETY: a map value pointer is valid for the program run.
        let mut found = CGROUP_POLICY.get_ptr(id).map(|p| unsafe { *p });
        if found.is_none() {
            // The walk must reach the caller's own level: a mapped ancestor found below a
            // cut-short walk may not be the deepest one, so such a caller gets the default.
            let mut reached = false;
            for level in 1..=MAX_CGROUP_DEPTH {
                // 0 past the cgroup's own level.
                let a = self.ancestor(level as i32);
                if a == 0 || a == id {
                    reached = true;
                    break;
                }
                if let Some(p) = CGROUP_POLICY.get_ptr(a) {
                    // SAFETY: as above.
                    found = Some(unsafe { *p });
                }
            }
            if !reached {
                found = None;
            }
        }
        let p = found.unwrap_or(self.default);
        self.policy = Some(p);
        p
    }

    /// Whether the caller may use a rule naming `vset`.
    #[inline(always)]
    pub(crate) fn sees(&mut self, vset: u32) -> bool {
        if vset == VSET_EVERYONE {
            return true;
        }
        let p = self.policy();
        if p >= MAX_POLICIES {
            return false;
        }
        let index = vset.wrapping_mul(POLICY_WORDS).wrapping_add(p / 64);
        VSETS
            .get(index)
            .is_some_and(|word| (*word >> (p % 64)) & 1 == 1)
    }
}
