//! Addresses as the maps hold them, and the numeric identities peers are known by.


/// An IP address as 16 network-order bytes; IPv4 is `::ffff:a.b.c.d`. Key of [`MAP_IPCACHE`](crate::MAP_IPCACHE),
/// data of the [`MAP_CIDRS`](crate::MAP_CIDRS) LPM key (`prefix_len: u32` then the data, as the kernel lays it
/// out; prefix lengths of IPv4 regions are `96 + len`), and both ends of conntrack keys.
///
/// Held as four native words whose memory is the 16 address bytes in network order: the same
/// bytes in the maps as a byte array, but 4-byte aligned, so the BPF compiler copies and
/// compares it in 4 word operations instead of 16 byte operations (the BPF target has no
/// unaligned loads and splits every access to a byte array into single bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpKey {
    /// Address words; word `i` holds bytes `4i..4i+4` in network order (`u32::from_ne_bytes`).
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl IpKey {
    /// An address from its 16 network-order bytes.
    #[inline(always)]
    pub const fn from_octets(b: [u8; 16]) -> Self {
        Self {
            addr: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// The 16 network-order bytes of the address.
    #[inline(always)]
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.addr;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// The IPv4-mapped form of an IPv4 address given as network-order bytes.
    #[inline(always)]
    pub const fn from_v4(b: [u8; 4]) -> Self {
        Self::from_v4_word(u32::from_ne_bytes(b))
    }

    /// The IPv4-mapped form of an IPv4 address given as its network-order bytes read as one
    /// native word.
    #[inline(always)]
    pub const fn from_v4_word(w: u32) -> Self {
        Self {
            addr: [0, 0, V4_MAPPED_WORD, w],
        }
    }

    /// Whether this is an IPv4-mapped address (`::ffff:0:0/96`): the form of every IPv4 key, and
    /// never a valid address on an IPv6 wire (RFC 4291 2.5.5.2).
    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.addr[2] == V4_MAPPED_WORD && self.addr[1] == 0 && self.addr[0] == 0
    }

    /// Whether this is the IPv4-mapped form of the IPv4 address `w` (as in [`Self::from_v4_word`]).
    #[inline(always)]
    pub const fn is_v4_word(&self, w: u32) -> bool {
        self.addr[3] == w
            && self.addr[2] == V4_MAPPED_WORD
            && self.addr[1] == 0
            && self.addr[0] == 0
    }
}

/// Value of [`MAP_IPCACHE`](crate::MAP_IPCACHE) and [`MAP_CIDRS`](crate::MAP_CIDRS): a numeric identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IdentityValue {
    /// The identity (see the `IDENTITY_*` reserved values).
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<IdentityValue>() == 4);

/// Reserved identity: matches every peer (a rule with no `from` / `to`). Never stored in the
/// ipcache; the classifier always asks the policy map for it.
pub const IDENTITY_ANY: u32 = 1;
/// Reserved identity of the node's own addresses (kubelet probes come from there).
pub const IDENTITY_HOST: u32 = 2;
/// First identity given to a (namespace labels, pod labels, named ports) set.
pub const IDENTITY_FIRST_POD: u32 = 256;
/// First identity given to an ipBlock region; pod identities stay below it.
pub const IDENTITY_FIRST_CIDR: u32 = 1 << 24;
