//! Port ranges as prefixes of a 16-bit big-endian port, for the policy LPM trie.

/// The aligned blocks that cover `lo..=hi` exactly: `(base, fixed_bits)`, where the block is
/// every port whose first `fixed_bits` bits equal `base`'s. At most 30 blocks for any range.
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest power-of-two block that starts at lo and ends within hi.
        let mut k = if lo == 0 { 16 } else { lo.trailing_zeros().min(16) };
        while lo + (1 << k) - 1 > hi {
            k -= 1;
        }
        // k <= 16, so 16 - k fits a u8, and lo <= hi <= 65535 fits a u16.
        out.push((lo as u16, (16 - k) as u8));
        lo += 1 << k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..=u16::MAX)
            .filter(|p| {
                prefixes.iter().any(|(base, bits)| {
                    let mask: u16 = if *bits == 0 { 0 } else { u16::MAX << (16 - bits) };
                    p & mask == *base
                })
            })
            .collect();
        ports.dedup();
        ports
    }

    #[test]
    fn a_single_port_is_one_full_prefix() {
        assert_eq!(range_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn an_aligned_range_is_one_prefix() {
        assert_eq!(range_prefixes(32768, 65535), vec![(32768, 1)]);
        assert_eq!(range_prefixes(8000, 8007), vec![(8000, 13)]);
    }

    #[test]
    fn every_range_is_covered_exactly() {
        for (lo, hi) in [(1, 65535), (80, 81), (1000, 2000), (32000, 32768), (65535, 65535), (1, 1), (3, 1025)] {
            let p = range_prefixes(lo, hi);
            assert!(p.len() <= 30, "{lo}-{hi}: {} prefixes", p.len());
            assert_eq!(covered(&p), (lo..=hi).collect::<Vec<_>>(), "{lo}-{hi}");
        }
    }
}
