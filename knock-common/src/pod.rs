//! `aya::Pod` for every map key and value, so userspace can read and write them.

// SAFETY: all are `#[repr(C)]`, `Copy`, and `bytemuck::Pod` (which proves
// they have no padding bytes), so any bit pattern is valid.
unsafe impl aya::Pod for crate::source::SourceKey {}
unsafe impl aya::Pod for crate::source::PrefixKey {}
unsafe impl aya::Pod for crate::source::NetKey {}
unsafe impl aya::Pod for crate::allow::AllowEntry {}
unsafe impl aya::Pod for crate::flow::FlowKey {}
unsafe impl aya::Pod for crate::flow::FlowEntry {}
unsafe impl aya::Pod for crate::trie::EdgeKey {}
unsafe impl aya::Pod for crate::trie::Edge {}
unsafe impl aya::Pod for crate::trie::SequenceInfo {}
unsafe impl aya::Pod for crate::trie::KnockState {}
unsafe impl aya::Pod for crate::trie::UsedKey {}
unsafe impl aya::Pod for crate::maps::Settings {}
unsafe impl aya::Pod for crate::spa::SpaKey {}
unsafe impl aya::Pod for crate::spa::NonceKey {}
unsafe impl aya::Pod for crate::spa::Scratch {}
