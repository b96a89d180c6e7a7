//! ipBlock regions: every `cidr` and `except` prefix of every policy becomes a region, and an
//! address belongs to the most specific region that contains it (what the CIDR LPM trie returns).
//! Because prefixes that contain one address form a chain, whether an address matches an
//! ipBlock depends only on its region: it does iff the region lies inside `cidr` and inside none
//! of the `except` prefixes.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net};

/// The regions for a set of ipBlock prefixes. IPv4 space always gets its own region
/// (`0.0.0.0/0`) so that an IPv6 block like `::/0` never covers IPv4 (stored IPv4-mapped).
pub fn regions<'a>(prefixes: impl IntoIterator<Item = &'a IpNet>) -> BTreeSet<IpNet> {
    let mut set: BTreeSet<IpNet> = prefixes.into_iter().copied().collect();
    if !set.is_empty() {
        set.insert(IpNet::V4(Ipv4Net::default()));
    }
    set
}

/// Whether addresses of `region` match an ipBlock `cidr` with holes `except`.
pub fn region_in_block(region: &IpNet, cidr: &IpNet, except: &[IpNet]) -> bool {
    same_family(region, cidr) && cidr.contains(region) && !except.iter().any(|e| same_family(region, e) && e.contains(region))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!((a, b), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)))
}

/// The region an address falls in: the most specific region containing it.
pub fn region_of<'a>(regions: &'a BTreeSet<IpNet>, addr: &std::net::IpAddr) -> Option<&'a IpNet> {
    regions.iter().filter(|r| r.contains(addr)).max_by_key(|r| r.prefix_len())
}

/// Whether `addr` matches an ipBlock (the plain definition, for checking the regions).
pub fn addr_in_block(addr: &std::net::IpAddr, cidr: &IpNet, except: &[IpNet]) -> bool {
    cidr.contains(addr) && !except.iter().any(|e| e.contains(addr))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    /// For every address sampled, matching through regions equals matching by definition.
    fn check(blocks: &[(&str, &[&str])], addrs: &[&str]) {
        let blocks: Vec<(IpNet, Vec<IpNet>)> =
            blocks.iter().map(|(c, e)| (net(c), e.iter().map(|x| net(x)).collect())).collect();
        let all: Vec<IpNet> = blocks.iter().flat_map(|(c, e)| std::iter::once(*c).chain(e.iter().copied())).collect();
        let regions = regions(&all);
        for a in addrs {
            let addr: IpAddr = a.parse().expect("test address");
            for (cidr, except) in &blocks {
                let by_region = region_of(&regions, &addr).is_some_and(|r| region_in_block(r, cidr, except));
                assert_eq!(by_region, addr_in_block(&addr, cidr, except), "{addr} in {cidr} except {except:?}");
            }
        }
    }

    #[test]
    fn except_holes_are_excluded_and_the_rest_of_the_block_is_kept() {
        check(
            &[("198.18.0.0/16", &["198.18.1.0/24", "198.18.2.128/25"])],
            &["198.18.0.1", "198.18.1.7", "198.18.2.1", "198.18.2.200", "198.19.0.1", "203.0.113.9"],
        );
    }

    #[test]
    fn overlapping_blocks_of_several_policies_stay_exact() {
        check(
            &[
                ("0.0.0.0/0", &["198.18.0.0/15"]),
                ("198.18.0.0/15", &["198.18.5.0/24"]),
                ("198.18.5.0/24", &[]),
                ("198.18.5.7/32", &[]),
            ],
            &["198.18.5.7", "198.18.5.8", "198.18.9.9", "198.19.255.255", "1.2.3.4"],
        );
    }

    #[test]
    fn ipv6_blocks_never_match_ipv4_addresses() {
        let blocks: &[(&str, &[&str])] = &[("::/0", &[]), ("fd00:198:18::/48", &["fd00:198:18:1::/64"])];
        check(blocks, &["fd00:198:18::1", "fd00:198:18:1::1", "2001:db8::1", "198.18.0.1"]);
        let all = [net("::/0")];
        let regions = regions(&all);
        let r = region_of(&regions, &"198.18.0.1".parse().expect("addr")).expect("a region");
        assert!(!region_in_block(r, &net("::/0"), &[]));
    }
}
