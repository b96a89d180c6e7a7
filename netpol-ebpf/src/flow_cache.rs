//! The flow cache: per CPU, the established TCP, UDP and SCTP flows seen last (each CPU its own
//! region of one array, so no two CPUs ever write one entry), so that the next
//! packets of a flow pass after one array lookup, without the endpoint and conntrack hash
//! lookups (each costs about as much as the rest of the packet path together). An entry holds
//! while the endpoint epoch it was made under is current: the agent bumps the epoch after every
//! endpoint write, so any change of the endpoint's policy generation, addresses or isolation
//! sends every flow through the full path once more, where conntrack checks it again.
//!
//! A packet that misses writes its flow's key into its entry at once, under epoch 0 (which
//! never holds); when the full path lets the flow pass, [`learn`] completes that entry. So the
//! full path needs nothing of the lookup but one number ([`Found`]).

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use netpol_common::{flow_cache_index, FlowCacheEntry, DIR_EGRESS, FLOW_CACHE_SIZE, FLOW_IPV6, FLOW_OWN_IS_A};

use crate::{
    conntrack,
    maps::{EPOCH, FLOW_CACHE, FLOW_FOUND},
    parse::{Fragment, Packet, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

/// Where a packet is judged: its interface, direction, and the endpoint epoch read first.
pub struct Site {
    /// The interface the classifier runs on.
    pub ifindex: u32,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u8,
    /// [`epoch`] when the packet arrived.
    pub epoch: u32,
}

/// The current endpoint epoch (0: the cache is off). Read before the endpoint is: an entry
/// written from an endpoint newer than this epoch is only ever used under this epoch.
#[inline(always)]
pub fn epoch() -> u32 {
    match EPOCH.get_ptr(0) {
        // SAFETY: a valid map value pointer; a volatile read, so that it stays before the
        // endpoint lookup.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// What [`find`] found, as one number: a hit (the endpoint's counter slot, with [`DEFERRED`]
/// for a flow whose egress is judged after NAT), a miss ([`MISSED`] with the index of the entry
/// the flow's key was written to), or [`UNCACHED`].
#[derive(Clone, Copy)]
pub struct Found(u32);

/// [`Found`]: the packet's flow has no place in the cache (not TCP, UDP or SCTP, a fragment,
/// not parsed, or the cache is off).
const UNCACHED: u32 = u32::MAX;
/// [`Found`]: a miss; the entry's index is in the low bits.
const MISSED: u32 = 1 << 31;
/// [`Found`] of a hit: the flow's egress is judged after NAT.
const DEFERRED: u32 = 1 << 30;

impl Found {
    /// A packet that has no place in the cache.
    pub const UNCACHED: Found = Found(UNCACHED);

    /// The endpoint slot of a flow that passes, and whether its egress is judged after NAT.
    #[inline(always)]
    pub fn hit(self) -> Option<(u32, bool)> {
        if self.0 & MISSED != 0 {
            return None;
        }
        Some((self.0 & !DEFERRED, self.0 & DEFERRED != 0))
    }
}

/// Looks the packet's flow up at `site`. Only TCP, UDP and SCTP packets that are not fragments
/// have a place (fragments, ICMP and neighbour discovery always take the full path). The key
/// holds the interface and the flow, and the entry says which end is the pod's, so that a packet
/// from the pod claiming the peer's address never finds the entry of the peer's packets, and the
/// IP version, so that an IPv4-mapped IPv6 packet never finds an IPv4 flow's.
///
/// For the verifier, the lookup is its own BPF function whose answer comes back through
/// [`FLOW_FOUND`]: returned in a register, each way through the lookup would reach the rest of
/// the program with its own known value and be walked on its own (inlined, the program was
/// refused as too large; returned, loading took 0.4 s longer). Read back from the map, the
/// answer is one unknown number. The function takes the parsed packet itself: a `Result` of it
/// would put a union member at a non-zero offset into the object's BTF, which the kernel refuses.
#[inline(always)]
pub fn find(site: &Site, p: &Packet) -> Found {
    look_up(site, p);
    match FLOW_FOUND.get_ptr(0) {
        // SAFETY: a per-CPU slot this CPU wrote just now; volatile, so that the value is read
        // from the map and not carried over from the write.
        Some(v) => Found(unsafe { core::ptr::read_volatile(v) }),
        None => Found(UNCACHED),
    }
}

/// [`find`]'s BPF function: writes what it found to [`FLOW_FOUND`].
#[inline(never)]
fn look_up(site: &Site, p: &Packet) {
    let found = find_entry(site, p);
    if let Some(v) = FLOW_FOUND.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { core::ptr::write_volatile(v, found.0) };
    }
}

/// What the cache holds for the packet's flow; on a miss, its key is written at once.
#[inline(always)]
fn find_entry(site: &Site, p: &Packet) -> Found {
    if site.epoch == 0 || p.fragment != Fragment::None || !matches!(p.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return Found(UNCACHED);
    }
    let (key, src_is_a) = conntrack::flow_key(site.ifindex, p.protocol, &p.src, p.sport_be, &p.dst, p.dport_be);
    let own_is_a = if site.direction == DIR_EGRESS { src_is_a } else { !src_is_a };
    let flags = if own_is_a { FLOW_OWN_IS_A } else { 0 } | if p.ipv6 { FLOW_IPV6 } else { 0 };
    // SAFETY: a helper without arguments; the program cannot move to another CPU while it runs.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu.wrapping_mul(FLOW_CACHE_SIZE).wrapping_add(flow_cache_index(&key));
    // Past the array (a CPU the agent did not count): no place, the full path as ever.
    let Some(entry) = FLOW_CACHE.get_ptr_mut(index) else { return Found(UNCACHED) };
    // SAFETY: this CPU's region, only this CPU writes it while the program runs.
    let entry = unsafe { &mut *entry };
    if entry.epoch == site.epoch && entry.flags == flags && entry.key == key {
        return Found(entry.slot | if entry.deferred != 0 { DEFERRED } else { 0 });
    }
    *entry = FlowCacheEntry { key, epoch: 0, slot: 0, flags, deferred: 0, _pad: 0, _line: 0 };
    Found(MISSED | index)
}

/// After a miss ([`find`]), the full path let the flow pass on the endpoint with counter slot
/// `slot`: its entry holds from now on, under the epoch the packet arrived in.
#[inline(always)]
pub fn learn(found: Found, site: &Site, slot: u32, deferred: bool) {
    if found.0 == UNCACHED || found.0 & MISSED == 0 {
        return;
    }
    let index = found.0 & !MISSED;
    let Some(entry) = FLOW_CACHE.get_ptr_mut(index) else { return };
    // SAFETY: this CPU's region (the program has not left the CPU since `find`), only this CPU
    // writes it while the program runs.
    let entry = unsafe { &mut *entry };
    // The entry still holds this packet's key: programs do not nest on one CPU, and the key was
    // written on this interface.
    if entry.key.endpoint == site.ifindex {
        entry.slot = slot;
        entry.deferred = u8::from(deferred);
        entry.epoch = site.epoch;
    }
}
