//! Whether the policy in force already covers an observation (`suggest --exclude`): the
//! compiled policy asked the way the kernel and the DNS proxy would decide for the
//! observing workload. Names are asked by name (a registered name on that port allows the
//! answers a workload gets for it), addresses by address. Pure.

use std::{collections::HashMap, net::IpAddr};

use super::{
    store::{Observation, Transport},
    suggest::Policy,
};
use crate::{
    dnsproxy::names::{Class, NameTable},
    policy::{
        allow_spec::{Net, Proto},
        compile::{CompiledPolicy, Target},
        visibility::Visibility,
    },
};

/// Whose rules a workload may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No scoping: every rule is everyone's.
    Unscoped,
    /// Scoping: this policy id.
    Policy(u32),
    /// Scoping, and the workload has no policy (the default is `deny`): only everyone's rules.
    Nobody,
}

fn sees(vis: &Visibility, caller: Caller) -> bool {
    match (vis, caller) {
        (Visibility::Everyone, _) | (Visibility::Only(_), Caller::Unscoped) => true,
        (Visibility::Only(ids), Caller::Policy(p)) => ids.contains(&p),
        (Visibility::Only(_), Caller::Nobody) => false,
    }
}

fn proto(t: Transport) -> Proto {
    match t {
        Transport::Tcp => Proto::Tcp,
        Transport::Udp => Proto::Udp,
    }
}

fn on(target: &Target, o: &Observation) -> bool {
    (target.0 == o.port || target.0 == 0) && target.1 == proto(o.proto)
}

type Who<'a> = Box<dyn Fn(&Observation) -> Caller + 'a>;

pub struct PolicyView<'a> {
    names: NameTable,
    hosts: HashMap<IpAddr, Vec<(Target, Visibility)>>,
    nets: Vec<(Net, Target, Visibility)>,
    caller: Who<'a>,
}

impl<'a> PolicyView<'a> {
    pub fn new(
        compiled: &CompiledPolicy,
        passthrough: &[String],
        caller: impl Fn(&Observation) -> Caller + 'a,
    ) -> Self {
        let mut hosts: HashMap<IpAddr, Vec<(Target, Visibility)>> = HashMap::new();
        let mut nets = Vec::new();
        for (spec, ids) in compiled.statics.iter() {
            let vis = compiled.usable_by(ids.iter());
            let target = (spec.port, spec.proto);
            if spec.net.is_host() {
                hosts.entry(spec.net.addr).or_default().push((target, vis));
            } else {
                nets.push((spec.net, target, vis));
            }
        }
        Self {
            names: NameTable::build(compiled, passthrough),
            hosts,
            nets,
            caller: Box::new(caller),
        }
    }

    /// Every static rule for the address: (target, who may use it).
    fn statics(&self, addr: IpAddr) -> impl Iterator<Item = (&Target, &Visibility)> {
        let addr = addr.to_canonical();
        let exact = self
            .hosts
            .get(&addr)
            .into_iter()
            .flatten()
            .map(|(t, v)| (t, v));
        let nets = self
            .nets
            .iter()
            .filter(move |(n, _, _)| n.contains(addr))
            .map(|(_, t, v)| (t, v));
        exact.chain(nets)
    }

    /// Every name of `o` the policy registers, with what its answers allow.
    fn registered(&self, o: &Observation) -> Vec<crate::dnsproxy::names::Targets> {
        o.hosts
            .iter()
            .filter_map(|h| match self.names.classify(h) {
                Class::Registered(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

impl Policy for PolicyView<'_> {
    fn allows(&self, o: &Observation) -> bool {
        let who = (self.caller)(o);
        self.statics(o.addr).any(|(t, v)| on(t, o) && sees(v, who))
            || self
                .registered(o)
                .iter()
                .flatten()
                .any(|(t, g)| on(t, o) && sees(&g.vis, who))
    }

    fn registers(&self, o: &Observation) -> bool {
        let who = (self.caller)(o);
        self.statics(o.addr).any(|(_, v)| sees(v, who))
            || self
                .registered(o)
                .iter()
                .any(|t| t.is_empty() || t.values().any(|g| sees(&g.vis, who)))
    }
}

#[cfg(test)]
#[path = "exclude_tests.rs"]
mod tests;
