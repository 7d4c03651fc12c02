//! Admitted flows: a connection (or UDP exchange) to a protected port, as
//! its client sends it, followed past the open window for as long as it is
//! active.
//!
//! XDP sees only the client's packets, so those are what keep a flow alive.
//! A blind spoofer can send packets on the flow's 4-tuple too; for TCP only
//! packets whose sequence numbers fit what the client itself has been
//! sending count:
//! - a FIN or RST starts the close grace only when its sequence number is
//!   exactly the client's next one (1 in 2^32 for a blind guess; the kernel
//!   itself asks the same of a RST, RFC 5961 §3);
//! - a packet refreshes the flow only when its sequence number lies within
//!   [`SEQ_BEHIND`] / [`SEQ_AHEAD`] of the client's next one and its
//!   acknowledgement within [`ACK_BEHIND`] / [`ACK_AHEAD`] of the highest seen;
//! - a packet that fails these checks still passes while the flow is live
//!   (the kernel judges it, as it judges every packet of the connection),
//!   but it neither refreshes nor closes the flow, so a spoofer can neither
//!   cut a session nor keep a dead one open.

use bytemuck::{Pod, Zeroable};

use crate::{
    maps::Settings,
    proto::{Proto, tcp_flags},
    source::SourceKey,
};

/// Segments reordered up to this far ahead still refresh a flow (and move
/// the next sequence number on).
pub const SEQ_AHEAD: u32 = 1 << 20;
/// Retransmissions of up to this many bytes behind the client's next
/// sequence number still refresh a flow. It covers the farthest one
/// forged packet can move the number on (ahead, plus the 64 KiB an IP
/// packet holds), so a lucky forgery alone never leaves the client's own
/// packets behind the window.
pub const SEQ_BEHIND: u32 = SEQ_AHEAD + (1 << 16);
/// A client may acknowledge this much new data in one packet: more than
/// any receive window a stock Linux or BSD host advertises.
pub const ACK_AHEAD: u32 = 1 << 24;
/// Acknowledgements may trail the highest one seen by this much: as far
/// as one forged packet can move it on, for the same reason.
pub const ACK_BEHIND: u32 = ACK_AHEAD;

/// [`FlowEntry::tracking`]: `next_seq` and `last_ack` hold the client's values.
pub const TRACKING_SEQ: u32 = 1;

/// One connection (or UDP exchange) to a protected port, as the client sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: SourceKey,
    pub src_port: u16,
    pub dst_port: u16,
    /// [`Proto::number`].
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(src: SourceKey, src_port: u16, dst_port: u16, proto: Proto) -> Self {
        Self { src, src_port, dst_port, proto: proto.number(), _pad: [0; 3] }
    }
}

/// An admitted flow. Its times are on the flow clock
/// ([`Clocks::flow_ns`](crate::decide::Clocks::flow_ns)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    /// When the client's last packet that counted arrived.
    pub last_seen_ns: u64,
    /// Non-zero once the client sent FIN or RST: when the flow stops
    /// admitting anything.
    pub closing_until_ns: u64,
    /// The client whose knock admitted the flow (0: a manual allow or a
    /// connection kept from before protection),
    /// so removing a client ends its sessions.
    pub client: u32,
    /// TCP: the client's next sequence number, as far as seen.
    pub next_seq: u32,
    /// TCP: the highest acknowledgement the client sent.
    pub last_ack: u32,
    /// [`TRACKING_SEQ`] once the two fields above are known. A connection
    /// kept from before protection learns them from its first packet.
    pub tracking: u32,
}

/// What the decision needs of a TCP header to follow a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Sequence space the segment occupies: payload bytes, plus one each
    /// for SYN and FIN.
    pub len: u32,
}

impl Segment {
    /// A segment with `payload` bytes; SYN and FIN add one each.
    pub const fn new(flags: u8, seq: u32, ack: u32, payload: u32) -> Self {
        let syn = (flags & tcp_flags::SYN != 0) as u32;
        let fin = (flags & tcp_flags::FIN != 0) as u32;
        Self { flags, seq, ack, len: payload + syn + fin }
    }
}

/// What one packet does to the live flow it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowUpdate {
    /// The packet is the client's: the flow is refreshed to this entry.
    Counted(FlowEntry),
    /// The flow is live, but this packet proves nothing (a blind guess, or
    /// a retransmission far behind): it passes without touching the flow.
    Uncounted,
    /// A SYN that starts another connection on the 4-tuple of a live one:
    /// judged as a new connection, and it never replaces the live flow.
    Foreign,
    /// The flow is idle or closed: as if there were none.
    Dead,
}

impl FlowEntry {
    /// A flow opened now by an admitted packet.
    #[inline(always)]
    pub fn opened(now_ns: u64, client: u32, tcp: Option<Segment>, settings: &Settings) -> Self {
        let mut entry = FlowEntry { last_seen_ns: now_ns, client, ..FlowEntry::default() };
        if let Some(seg) = tcp {
            entry.learn(&seg);
            if seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                entry.closing_until_ns = now_ns.saturating_add(settings.close_grace_ns);
            }
        }
        entry
    }

    /// Idle for the idle timeout, or past the close grace: admits nothing.
    #[inline(always)]
    pub fn is_dead(&self, now_ns: u64, settings: &Settings) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) >= settings.idle_timeout_ns
            || (self.closing_until_ns != 0 && now_ns >= self.closing_until_ns)
    }

    /// What a packet of the flow's 4-tuple does to it; `tcp` is `None` for UDP.
    #[inline(always)]
    pub fn on_packet(&self, tcp: Option<Segment>, now_ns: u64, settings: &Settings) -> FlowUpdate {
        if self.is_dead(now_ns, settings) {
            return FlowUpdate::Dead;
        }
        let Some(seg) = tcp else {
            // UDP has no sequence numbers: any datagram of the exchange counts.
            return FlowUpdate::Counted(FlowEntry { last_seen_ns: now_ns, ..*self });
        };
        let mut next = FlowEntry { last_seen_ns: now_ns, ..*self };
        if self.tracking & TRACKING_SEQ == 0 {
            // Kept from before protection: the first packet teaches the numbers.
            next.learn(&seg);
            return FlowUpdate::Counted(next);
        }
        let bare_syn = seg.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        if bare_syn {
            // Only a retransmission of the flow's own SYN belongs to it.
            return if seg.seq.wrapping_add(1) == self.next_seq {
                FlowUpdate::Counted(next)
            } else {
                FlowUpdate::Foreign
            };
        }
        let exact = seg.seq == self.next_seq;
        if !exact && !self.in_window(&seg) {
            return FlowUpdate::Uncounted;
        }
        next.advance(&seg);
        if exact && seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 && self.closing_until_ns == 0
        {
            next.closing_until_ns = now_ns.saturating_add(settings.close_grace_ns);
        }
        FlowUpdate::Counted(next)
    }

    /// Every segment of an established connection carries an ACK; one
    /// without it (a bare RST, a null scan) must be exact to count.
    #[inline(always)]
    fn in_window(&self, seg: &Segment) -> bool {
        seg.flags & tcp_flags::ACK != 0
            && within(seg.seq.wrapping_sub(self.next_seq), SEQ_BEHIND, SEQ_AHEAD)
            && within(seg.ack.wrapping_sub(self.last_ack), ACK_BEHIND, ACK_AHEAD)
    }

    #[inline(always)]
    fn learn(&mut self, seg: &Segment) {
        self.next_seq = seg.seq.wrapping_add(seg.len);
        self.last_ack = seg.ack;
        self.tracking |= TRACKING_SEQ;
    }

    /// Moves the next sequence number and the highest acknowledgement on,
    /// never back (in sequence-space arithmetic, RFC 1982).
    #[inline(always)]
    fn advance(&mut self, seg: &Segment) {
        let end = seg.seq.wrapping_add(seg.len);
        if (end.wrapping_sub(self.next_seq) as i32) > 0 {
            self.next_seq = end;
        }
        // Never further than one packet may acknowledge: a packet at the
        // exact sequence number skips the window check.
        let acked = seg.ack.wrapping_sub(self.last_ack);
        if seg.flags & tcp_flags::ACK != 0 && acked > 0 && acked <= ACK_AHEAD {
            self.last_ack = seg.ack;
        }
    }
}

/// `distance` (a wrapped difference) lies within `behind` below and `ahead` above zero.
#[inline(always)]
const fn within(distance: u32, behind: u32, ahead: u32) -> bool {
    distance <= ahead || distance >= 0u32.wrapping_sub(behind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SEC;

    fn settings() -> Settings {
        Settings { idle_timeout_ns: 900 * SEC, close_grace_ns: 10 * SEC, ..Settings::default() }
    }

    fn seg(flags: u8, seq: u32, ack: u32, payload: u32) -> Segment {
        Segment::new(flags, seq, ack, payload)
    }

    const ACK: u8 = tcp_flags::ACK;

    /// A flow opened by a SYN with ISN 1000 at t=1 s, then one data packet.
    fn flow() -> FlowEntry {
        let opened = FlowEntry::opened(SEC, 7, Some(seg(tcp_flags::SYN, 1000, 0, 0)), &settings());
        assert_eq!((opened.next_seq, opened.client), (1001, 7));
        match opened.on_packet(Some(seg(ACK, 1001, 5000, 100)), 2 * SEC, &settings()) {
            FlowUpdate::Counted(entry) => entry,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_clients_own_packets_refresh_and_advance() {
        let f = flow();
        assert_eq!((f.next_seq, f.last_ack, f.last_seen_ns), (1101, 5000, 2 * SEC));
        // A retransmission behind, and a segment reordered ahead, both count.
        for (seq, ack) in [(1001, 5000), (1101 + 1448, 6448), (1101, 4000)] {
            let update = f.on_packet(Some(seg(ACK, seq, ack, 1448)), 3 * SEC, &settings());
            assert!(matches!(update, FlowUpdate::Counted(_)), "{seq} {ack}: {update:?}");
        }
    }

    #[test]
    fn guesses_neither_refresh_nor_close() {
        let f = flow();
        for (flags, seq, ack) in [
            (ACK, 1101 + SEQ_AHEAD + 1, 5000),
            (ACK, 1101u32.wrapping_sub(SEQ_BEHIND + 1), 5000),
            (ACK, 1102, 5000 + ACK_AHEAD + 1),
            (ACK, 1106, 5000u32.wrapping_sub(ACK_BEHIND + 1)),
        ] {
            let update = f.on_packet(Some(seg(flags, seq, ack, 0)), 3 * SEC, &settings());
            assert_eq!(update, FlowUpdate::Uncounted, "{seq} {ack}");
        }
        // Without an ACK only the exact sequence number counts.
        for flags in [tcp_flags::RST, 0, tcp_flags::FIN] {
            let update = f.on_packet(Some(seg(flags, 1102, 0, 0)), 3 * SEC, &settings());
            assert_eq!(update, FlowUpdate::Uncounted, "flags {flags:#x}");
        }
        // In the window but not exact: refreshes, never closes.
        for end in [tcp_flags::FIN | ACK, tcp_flags::RST | ACK] {
            let FlowUpdate::Counted(next) =
                f.on_packet(Some(seg(end, 1102, 5000, 0)), 3 * SEC, &settings())
            else {
                panic!("in-window packet not counted");
            };
            assert_eq!(next.closing_until_ns, 0, "flags {end:#x}");
        }
    }

    #[test]
    fn one_lucky_forgery_leaves_the_clients_packets_counting() {
        // The farthest a forged packet inside both windows moves the
        // numbers on: a whole IP packet's payload at the far edge.
        let f = flow();
        let forged = seg(ACK, 1101 + SEQ_AHEAD, 5000 + ACK_AHEAD, 65_535 - 40);
        let FlowUpdate::Counted(pushed) = f.on_packet(Some(forged), 3 * SEC, &settings()) else {
            panic!("the forgery lies inside both windows");
        };
        // The client's own next packet, acknowledging a little more.
        let own = seg(ACK, 1101, 5100, 100);
        assert!(matches!(
            pushed.on_packet(Some(own), 4 * SEC, &settings()),
            FlowUpdate::Counted(_)
        ));
        // A forgery at the exact sequence number skips the window check;
        // its acknowledgement still moves no further than the window.
        let exact = seg(ACK, 1101, 5000 + (1 << 30), 0);
        let FlowUpdate::Counted(next) = f.on_packet(Some(exact), 3 * SEC, &settings()) else {
            panic!("an exact packet counts");
        };
        assert_eq!(next.last_ack, 5000);
    }

    #[test]
    fn an_exact_fin_or_rst_starts_the_grace() {
        for end in [tcp_flags::RST, tcp_flags::FIN | ACK, tcp_flags::RST | ACK] {
            let FlowUpdate::Counted(next) =
                flow().on_packet(Some(seg(end, 1101, 5000, 0)), 3 * SEC, &settings())
            else {
                panic!("exact packet not counted");
            };
            assert_eq!(next.closing_until_ns, 13 * SEC, "flags {end:#x}");
            assert!(next.is_dead(13 * SEC, &settings()));
            assert!(!next.is_dead(12 * SEC, &settings()));
        }
    }

    #[test]
    fn a_new_syn_on_a_live_tuple_is_foreign_but_its_retransmission_is_not() {
        let opened = FlowEntry::opened(SEC, 7, Some(seg(tcp_flags::SYN, 1000, 0, 0)), &settings());
        let syn =
            |seq| opened.on_packet(Some(seg(tcp_flags::SYN, seq, 0, 0)), 2 * SEC, &settings());
        assert!(matches!(syn(1000), FlowUpdate::Counted(_)));
        assert_eq!(syn(77_777), FlowUpdate::Foreign);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let opened =
            FlowEntry::opened(SEC, 0, Some(seg(tcp_flags::SYN, u32::MAX - 10, 0, 0)), &settings());
        let FlowUpdate::Counted(next) =
            opened.on_packet(Some(seg(ACK, u32::MAX - 9, 1, 100)), 2 * SEC, &settings())
        else {
            panic!("not counted across the wrap");
        };
        assert_eq!(next.next_seq, 90);
    }

    #[test]
    fn kept_connections_learn_from_their_first_packet_and_udp_always_counts() {
        let kept = FlowEntry { last_seen_ns: SEC, ..FlowEntry::default() };
        let FlowUpdate::Counted(next) =
            kept.on_packet(Some(seg(ACK, 42, 43, 10)), 2 * SEC, &settings())
        else {
            panic!("first packet not learnt");
        };
        assert_eq!((next.next_seq, next.last_ack, next.tracking), (52, 43, TRACKING_SEQ));
        assert!(matches!(kept.on_packet(None, 2 * SEC, &settings()), FlowUpdate::Counted(_)));
    }

    #[test]
    fn idle_and_closed_flows_are_dead() {
        let f = flow();
        let idle = 2 * SEC + settings().idle_timeout_ns;
        assert_eq!(f.on_packet(Some(seg(ACK, 1101, 5000, 0)), idle, &settings()), FlowUpdate::Dead);
        assert_eq!(f.on_packet(None, idle, &settings()), FlowUpdate::Dead);
    }
}
