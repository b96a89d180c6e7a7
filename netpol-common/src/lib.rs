//! Types shared by the netpol data path (`netpol-ebpf`) and the agent (`netpol-agent`).
//!
//! Every map the classifier uses is declared here by name, with its key and value layout, who
//! writes it and who reads it. All types are `#[repr(C)]`, `Copy`, have explicit `_pad` fields and
//! a size assertion, so the kernel and user space agree byte for byte.
//!
//! Byte order: addresses are stored as 16 network-order bytes (IPv4 as the IPv4-mapped IPv6
//! address `::ffff:a.b.c.d`); ports are stored big-endian (`*_be` fields), because the policy
//! LPM trie matches port prefixes bit by bit from the most significant bit. Endpoint ids and
//! identities are exact in every key, so their byte order does not matter; they are native.
#![no_std]

mod addr;
mod endpoint;
mod events;
mod flows;
mod maps;
mod mark;
mod policy;
mod reason;
#[cfg(feature = "user")]
mod user;

pub use addr::*;
pub use endpoint::*;
pub use events::*;
pub use flows::*;
pub use maps::*;
pub use mark::*;
pub use policy::*;
pub use reason::*;

#[cfg(test)]
mod tests {
    use super::{flow_cache_index, CtKey, IpKey, FLOW_CACHE_SIZE};

    #[test]
    fn flow_cache_indexes_stay_in_the_cache_and_spread_the_flows_of_one_pair_of_hosts() {
        let key = |port: u16| CtKey {
            endpoint: 7,
            protocol: 6,
            _pad: 0,
            _pad2: 0,
            addr_a: IpKey::from_v4([198, 18, 0, 10]),
            addr_b: IpKey::from_v4([198, 18, 1, 11]),
            port_a_be: 80u16.to_be(),
            port_b_be: port.to_be(),
        };
        let mut used = [false; FLOW_CACHE_SIZE as usize];
        for port in 40000..40256 {
            let i = flow_cache_index(&key(port));
            assert!(i < FLOW_CACHE_SIZE);
            used[i as usize] = true;
        }
        // 256 client ports of one connection pair: a direct-mapped cache keeps most of them.
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct >= 200, "256 flows took only {distinct} entries");
    }

    #[test]
    fn ip_key_words_hold_network_order_bytes() {
        let b: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let k = IpKey::from_octets(b);
        assert_eq!(k.octets(), b);
        // SAFETY: IpKey is 16 plain bytes (repr(C), four u32s).
        let raw: [u8; 16] = unsafe { core::mem::transmute(k) };
        assert_eq!(raw, b, "the map sees the address bytes in network order");
        let v4 = IpKey::from_v4([198, 18, 0, 10]);
        assert_eq!(
            v4.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 10]
        );
        assert!(v4.is_v4_word(u32::from_ne_bytes([198, 18, 0, 10])));
        assert!(!v4.is_v4_word(u32::from_ne_bytes([198, 18, 0, 11])));
        assert!(!IpKey::from_octets([0; 16]).is_v4_word(0));
        assert!(v4.is_v4_mapped() && !k.is_v4_mapped());
    }
}

