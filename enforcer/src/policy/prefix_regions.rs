//! Which address regions no prefix rule reaches: `NO_PREFIX` (docs/architecture.md, "The
//! denied path"). A lookup for a destination in such a region skips both trie walks, which are most
//! of what a denied call costs. A region is an IPv4 /16 or an IPv6 /16
//! ([`enforcer_common::prefix_region`]).

use enforcer_common::{NO_PREFIX_WORDS, PREFIX_REGIONS, RULE_KEY_FIXED_BITS, RuleKey};

use super::allow_spec::{V4_MAPPED, mask128};

/// `NO_PREFIX`'s words for these prefix rules (LPM length over the whole key, key): a bit is
/// set for a region that none of them reaches, whatever their ports, protocols or policies.
pub fn no_prefix_words<'a>(rules: impl IntoIterator<Item = &'a (u32, RuleKey)>) -> Vec<u64> {
    let mut words = vec![u64::MAX; NO_PREFIX_WORDS as usize];
    for (len, key) in rules {
        // A length within the fixed bits reaches every address.
        let bits = len.saturating_sub(RULE_KEY_FIXED_BITS).min(128);
        let addr = u128::from_be_bytes(key.addr);
        if bits >= 96 && mask128(addr ^ V4_MAPPED, 96) == 0 {
            // Inside ::ffff:0:0/96: IPv4 only, by the mapped form's bits 96..112.
            reached(&mut words, 0, (addr >> 16) as u32 & 0xffff, bits - 96);
            continue;
        }
        reached(&mut words, PREFIX_REGIONS / 2, (addr >> 112) as u32, bits);
        if bits < 96 && mask128(addr ^ V4_MAPPED, bits) == 0 {
            // Wider than ::ffff:0:0/96: every IPv4 address too.
            reached(&mut words, 0, 0, 0);
        }
    }
    words
}

/// Clears the bits of regions `base + r` for every 16-bit `r` whose first `bits` bits are
/// those of `first16`.
fn reached(words: &mut [u64], base: u32, first16: u32, bits: u32) {
    let span = 1u32 << (16 - bits.min(16));
    let first = base + (first16 & !(span - 1));
    let word = (first / 64) as usize;
    if span >= 64 {
        let end = ((first + span) / 64) as usize;
        if let Some(ws) = words.get_mut(word..end) {
            ws.fill(0);
        }
    } else if let Some(w) = words.get_mut(word) {
        *w &= !(((1u64 << span) - 1) << (first % 64));
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{RULE_KEY_FIXED_BITS, RuleKey, prefix_region};

    use crate::policy::{allow_spec::AllowSpec, rules::DesiredRules};

    fn words(specs: &[&str]) -> Vec<u64> {
        let specs: Vec<AllowSpec> = specs.iter().map(|s| s.parse().expect("spec")).collect();
        DesiredRules::from_specs(&specs).no_prefix_words()
    }

    /// The region of an address in the mapped form, as the programs compute it.
    fn region(addr: &[u8; 16]) -> u32 {
        let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        prefix_region(&[word(0), word(4), word(8), word(12)])
    }

    fn skipped(words: &[u64], addr: &str) -> bool {
        let ip: std::net::IpAddr = addr.parse().expect("address");
        let v6 = match ip {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            std::net::IpAddr::V6(a) => a,
        };
        let r = region(&v6.octets());
        words[(r / 64) as usize] >> (r % 64) & 1 == 1
    }

    /// The branch-free region is the /16 of either family: IPv4 by its first two bytes,
    /// IPv6 by its first two bytes after all of IPv4's.
    #[test]
    fn regions_are_the_first_sixteen_bits_of_either_family() {
        let at = |a: &str| {
            let ip: std::net::IpAddr = a.parse().expect("address");
            match ip {
                std::net::IpAddr::V4(a) => region(&a.to_ipv6_mapped().octets()),
                std::net::IpAddr::V6(a) => region(&a.octets()),
            }
        };
        assert_eq!(at("0.0.0.0"), 0);
        assert_eq!(at("198.18.7.1"), 198 << 8 | 18);
        assert_eq!(at("255.255.255.255"), 0xffff);
        assert_eq!(at("::"), 1 << 16);
        assert_eq!(at("fd01::7"), 1 << 16 | 0xfd01);
        assert_eq!(at("ffff::1"), 1 << 16 | 0xffff);
        // Next to the mapped range, but not in it: IPv6.
        assert_eq!(at("::fffe:c612:701"), 1 << 16);
        assert_eq!(at("::1:ffff:c612:701"), 1 << 16);
        assert_eq!(at("1::ffff:c612:701"), 1 << 16 | 1);
    }

    /// Every address a prefix rule matches is in a region not skipped; others mostly are.
    #[test]
    fn regions_reached_by_prefixes_are_never_skipped() {
        let w = words(&[
            "198.18.1.0/24:443/tcp",
            "10.0.0.0/8:*/udp",
            "[fd00:1::/64]:*/udp",
            "[2001:db8::/8]:53/udp",
        ]);
        for reached in [
            "198.18.1.7",
            "10.0.0.1",
            "10.255.255.255",
            "fd00:1::5",
            "2001:db8::1",
            "20ff::1",
        ] {
            assert!(!skipped(&w, reached), "{reached}");
        }
        for far in [
            "198.19.1.7",
            "11.0.0.1",
            "9.255.0.1",
            "fd01::1",
            "2100::1",
            "::1",
        ] {
            assert!(skipped(&w, far), "{far}");
        }
    }

    #[test]
    fn the_widest_prefixes_reach_their_whole_family_only() {
        let w = words(&["0.0.0.0/0:9090/udp"]);
        assert!(!skipped(&w, "1.2.3.4") && !skipped(&w, "255.0.0.1"));
        assert!(skipped(&w, "fd00::1"), "IPv4's /0 reaches no IPv6 address");
        let w = words(&["[::/0]:8080/tcp"]);
        assert!(!skipped(&w, "fd00::1") && !skipped(&w, "::1"));
        // Its kernel prefixes leave the mapped range out: IPv4 is never reached.
        assert!(skipped(&w, "1.2.3.4"));
        let none = words(&[]);
        assert!(
            none.iter().all(|w| *w == u64::MAX),
            "no prefix: every region skipped"
        );
    }

    /// Oracle: for random kernel prefixes (any length, near the mapped range or not) and
    /// random addresses, an address a prefix covers is never in a skipped region.
    #[test]
    fn no_covered_address_is_ever_skipped() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mapped = |a: u128| super::V4_MAPPED | (a & 0xffff_ffff);
        for _ in 0..200 {
            let wide = u128::from(next()) << 64 | u128::from(next());
            let addr = match next() % 3 {
                0 => mapped(wide),
                1 => wide & !(u128::MAX >> 16),
                _ => wide,
            };
            let bits = (next() % 129) as u32;
            let key = RuleKey {
                addr: addr.to_be_bytes(),
                ..RuleKey::default()
            };
            let words = super::no_prefix_words(&[(RULE_KEY_FIXED_BITS + bits, key)]);
            for _ in 0..50 {
                let tail = u128::from(next()) << 64 | u128::from(next());
                let low = if bits == 128 { 0 } else { u128::MAX >> bits };
                let inside = (addr & !low) | (tail & low);
                let r = region(&inside.to_be_bytes());
                assert_eq!(
                    words[(r / 64) as usize] >> (r % 64) & 1,
                    0,
                    "{addr:x}/{bits} covers {inside:x}"
                );
            }
        }
    }

    #[test]
    fn exact_rules_reach_no_region() {
        assert!(
            words(&["198.18.0.1:80/tcp", "[fd00::1]:53/udp"])
                .iter()
                .all(|w| *w == u64::MAX)
        );
    }
}
