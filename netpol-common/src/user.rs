//! `aya::Pod` for the map types, so the agent can read and write them.
use crate::{
    CtKey, CtValue, DatapathConfig, EndpointInfo, EventBudget, FlowCacheEntry, FragKey, FragValue, IdentityValue, IpKey, PeerKey,
    PeerRules, PolicyKey, PolicyValue, VerdictEvent,
};

// SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays, with every
// padding byte an explicit field, so any bit pattern is valid and there are no hidden bytes.
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for IpKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IdentityValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerRules {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtValue {}
// SAFETY: as above.
unsafe impl aya::Pod for FragKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FragValue {}
// SAFETY: as above.
unsafe impl aya::Pod for DatapathConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowCacheEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for EventBudget {}
// SAFETY: as above.
unsafe impl aya::Pod for VerdictEvent {}
