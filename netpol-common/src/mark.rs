//! The packet mark of a flow whose egress is judged after the node's NAT.


/// The packet-mark bits ([`MARK_DEFER_MASK`]) that say "this packet left a local pod whose
/// egress is judged where it leaves the node, after NAT": the magic value [`MARK_DEFER_MAGIC`] in
/// bits 25-27 and the pod's endpoint slot in bits 16-24. Set by the classifier on a pod's veth for
/// new flows to addresses that are neither pods nor the node (a Service's ClusterIP, which
/// kube-proxy rewrites to a backend in the node's namespace after that hook, or an outside
/// address); read and cleared where the packet leaves the node: by the classifier into a pod (through
/// [`JUMP_DEFERRED`](crate::JUMP_DEFERRED)) or on one of the node's other interfaces. Bits 0-15 (kube-proxy's 0x4000 and 0x8000)
/// and 28-31 are left alone.
pub const MARK_DEFER_MASK: u32 = 0x0fff_0000;
/// See [`MARK_DEFER_MASK`].
pub const MARK_DEFER_MAGIC: u32 = 0x0a00_0000;
const MARK_DEFER_MAGIC_MASK: u32 = 0x0e00_0000;
const MARK_SLOT_SHIFT: u32 = 16;
const MARK_SLOT_MASK: u32 = 0x01ff;

/// `mark` with the deferral bits of endpoint slot `slot` (below [`COUNTER_SLOTS`](crate::COUNTER_SLOTS)) set.
#[inline(always)]
pub const fn defer_mark(mark: u32, slot: u32) -> u32 {
    (mark & !MARK_DEFER_MASK) | MARK_DEFER_MAGIC | ((slot & MARK_SLOT_MASK) << MARK_SLOT_SHIFT)
}

/// The endpoint slot a packet's egress judgement was deferred for, if `mark` says so.
#[inline(always)]
pub const fn deferred_slot(mark: u32) -> Option<u32> {
    if mark & MARK_DEFER_MAGIC_MASK == MARK_DEFER_MAGIC {
        Some((mark >> MARK_SLOT_SHIFT) & MARK_SLOT_MASK)
    } else {
        None
    }
}
