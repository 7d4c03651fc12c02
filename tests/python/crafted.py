#!/usr/bin/python3
"""Crafted and malformed frames for knock-xdp's adversarial end-to-end test.

Sends, with scapy, layer-2 frames from the client's end of the lab's veth
pair to the server: the same set of cases twice, once to the protected TCP
and UDP ports and once to an unprotected control port (so the test can show
that its observation works). The cases: IPv4 options and bad header lengths,
lying length fields, odd TCP flags and data offsets, tiny and overlapping
fragments, IPv6 extension header chains (within and beyond the program's
walk limit of 8), IPv6 fragments, IPv4-mapped and -compatible sources,
802.1Q and QinQ tags, empty and maximum-size frames. Every frame that has
room for it carries the marker `KXDP[<P|C>:<case>]`.

Usage (root, in the client namespace, with Debian's python3-scapy):
    /usr/bin/python3 crafted.py --iface IF --server-mac MAC \\
        --server-v4 A --server-v6 A --client-v4 A --client-v6 A \\
        --tcp-port P --udp-port P --control-port P

Prints one JSON line: `sent` (frames sent), and what knock-xdp's parser
makes of them: `protected_ports` (a whole TCP/UDP header to a protected
port: dropped), `control_ports` (a whole header to the control port: passed,
so the server sees it), `malformed` (could be TCP/UDP but the header cannot
be read: dropped wherever it goes) and `later` (non-first fragments: passed
by design, they carry no ports).
"""

import argparse
import json
import logging

# scapy warns about routes and interfaces of the namespace it finds itself in.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPOption_NOP,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
    get_if_hwaddr,
    raw,
    sendp,
)

# The IPv6 extension headers the program walks before giving up
# (MAX_IPV6_EXT_HEADERS in knock-ebpf/src/parse.rs).
EXT_LIMIT = 8
ETH_HLEN = 14
IPV6_HLEN = 40
MTU = 1500

PORTS = "ports"
MALFORMED = "malformed"
LATER = "later"

NH_TCP = 6
NH_UDP = 17
NH_DSTOPTS = 60
NH_AH = 51


class Target:
    """Where one set of cases goes: a TCP port, a UDP port, a marker tag."""

    def __init__(self, tag, tcp_port, udp_port):
        self.tag = tag
        self.tcp_port = tcp_port
        self.udp_port = udp_port


class Frames:
    """The frames to send, each with what the program's parser makes of it."""

    def __init__(self, args):
        self.args = args
        self.client_mac = get_if_hwaddr(args.iface)
        self.frames = []
        self.next_sport = 20000
        self.next_id = 0x1000

    # -- building blocks -------------------------------------------------

    def add(self, frame, kind, dport=None):
        """Records a frame; `dport` is the port a PORTS frame carries."""
        assert (kind == PORTS) == (dport is not None)
        self.frames.append((bytes(frame), kind, dport))

    def ports(self, packet, dport):
        """An IP packet whose transport header the program can read whole."""
        self.add(self.ether() / packet, PORTS, dport)

    def malformed(self, packet):
        """An IP packet that may be TCP/UDP, with no header to read."""
        self.add(self.ether() / packet, MALFORMED)

    def later(self, packet):
        """A non-first fragment."""
        self.add(self.ether() / packet, LATER)

    def ether(self, ether_type=None):
        eth = Ether(src=self.client_mac, dst=self.args.server_mac)
        if ether_type is not None:
            eth.type = ether_type
        return eth

    def sport(self):
        """A fresh source port per case, so no case looks like another's flow."""
        self.next_sport += 1
        return self.next_sport

    def ip_id(self):
        """A fresh IPv4 id / IPv6 fragment id per fragmented datagram."""
        self.next_id += 1
        return self.next_id

    def v4(self, **fields):
        return IP(src=self.args.client_v4, dst=self.args.server_v4, **fields)

    def v6(self, **fields):
        return IPv6(src=self.args.client_v6, dst=self.args.server_v6, **fields)

    @staticmethod
    def marker(target, name):
        return f"KXDP[{target.tag}:{name}]".encode()

    def tcp(self, target, name, flags="S", sport=None, **fields):
        """A TCP header to the target's TCP port, then the marker."""
        sport = sport or self.sport()
        seg = TCP(sport=sport, dport=target.tcp_port, flags=flags, **fields)
        return seg / Raw(self.marker(target, name))

    def udp(self, target, name, sport=None, **fields):
        """A UDP header to the target's UDP port, then the marker."""
        sport = sport or self.sport()
        seg = UDP(sport=sport, dport=target.udp_port, **fields)
        return seg / Raw(self.marker(target, name))

    @staticmethod
    def transport_bytes(layer):
        """A transport header and payload as bytes, checksum left zero: for
        splitting into fragments, where no IP header sits right below it."""
        layer = layer.copy()
        layer.chksum = 0
        return raw(layer)

    # -- the cases -------------------------------------------------------

    def all_cases(self, target):
        self.baseline(target)
        self.ipv4_headers(target)
        self.lengths(target)
        self.tcp_flags(target)
        self.ipv4_fragments(target)
        self.ipv6_chains(target)
        self.ipv6_fragments(target)
        self.odd_sources(target)
        self.vlans(target)
        self.sizes(target)

    def baseline(self, t):
        """What any stranger sends: a SYN and a datagram, over IPv4 and IPv6."""
        self.ports(self.v4() / self.tcp(t, "syn4"), t.tcp_port)
        self.ports(self.v4() / self.udp(t, "udp4"), t.udp_port)
        self.ports(self.v6() / self.tcp(t, "syn6"), t.tcp_port)
        self.ports(self.v6() / self.udp(t, "udp6"), t.udp_port)

    def ipv4_headers(self, t):
        # Options push the transport header back: IHL 6..15 with NOPs.
        for ihl in range(6, 16):
            opts = [IPOption_NOP()] * ((ihl - 5) * 4)
            self.ports(self.v4(options=opts) / self.tcp(t, f"nop-ihl{ihl}"), t.tcp_port)
        opts = [IPOption_NOP()] * 40
        self.ports(self.v4(options=opts) / self.udp(t, "nop-ihl15-udp"), t.udp_port)
        # Record route, with room for one and for nine addresses (IHL 7, 15).
        for slots in (1, 9):
            rr = IPOption_RR(routers=["0.0.0.0"] * slots)
            self.ports(self.v4(options=[rr]) / self.tcp(t, f"rr{slots}"), t.tcp_port)
        # An option whose length runs past the header: the stack refuses it,
        # the program still finds the ports by IHL.
        bad = Raw(b"\x07\x30\x04\x00")  # record route, 48 bytes long
        self.ports(self.v4(options=[bad]) / self.tcp(t, "bad-option"), t.tcp_port)
        # IHL below 5: there is no telling where the transport header starts.
        for ihl in range(0, 5):
            frame = bytearray(raw(self.ether() / self.v4() / self.tcp(t, f"ihl{ihl}")))
            frame[ETH_HLEN] = 0x40 | ihl
            self.add(frame, MALFORMED)
        # IHL 15 with no options: the "transport header" lies past the frame.
        self.malformed(self.v4(ihl=15) / TCP(dport=t.tcp_port))
        # A version that is not 4 behind an IPv4 EtherType.
        for version in (0, 6, 15):
            self.malformed(self.v4(version=version) / self.tcp(t, f"v{version}"))
        # And an IPv4 header behind the IPv6 EtherType.
        self.add(self.ether(0x86DD) / self.v4() / self.tcp(t, "v4-as-v6"), MALFORMED)

    def lengths(self, t):
        """Length fields that lie: the program reads the frame, not the fields."""
        lies = (
            ("len-long", 1000),
            ("len-short", 24),
            ("len-below-ihl", 10),
            ("len0", 0),
        )
        for name, length in lies:
            self.ports(self.v4(len=length) / self.tcp(t, name), t.tcp_port)
            self.ports(self.v4(len=length) / self.udp(t, name + "-udp"), t.udp_port)
        for name, length in (("plen-long", 1000), ("plen-short", 4), ("plen0", 0)):
            self.ports(self.v6(plen=length) / self.tcp(t, name), t.tcp_port)
        # UDP length 0 (as in a jumbogram) and shorter than the header.
        for name, length in (("udp-len0", 0), ("udp-len4", 4), ("udp-len-long", 1400)):
            self.ports(self.v4() / self.udp(t, name, len=length), t.udp_port)
            self.ports(self.v6() / self.udp(t, name + "6", len=length), t.udp_port)
        # Junk after the datagram, as Ethernet padding would be.
        self.ports(self.v4() / self.tcp(t, "trailer") / Raw(b"\0" * 30), t.tcp_port)

    def tcp_flags(self, t):
        """Not a SYN, or not only a SYN: still no way in for a stranger."""
        every = "SRAFPUEC"
        for flags in ("SA", "SR", "SF", "FPU", "", "A", "R", "FA", "PA", "SEC", every):
            name = "flags-" + (flags or "null")
            for ip, v in ((self.v4(), "4"), (self.v6(), "6")):
                # A fake established packet: sequence numbers from nowhere.
                seg = self.tcp(t, name + v, flags=flags, seq=0x1234567, ack=0x89ABCDE)
                self.ports(ip / seg, t.tcp_port)
        # A data offset below 5 (the stack refuses it) and past the packet.
        for offset in (0, 2, 4, 15):
            seg = self.tcp(t, f"doff{offset}", dataofs=offset)
            self.ports(self.v4() / seg, t.tcp_port)

    def ipv4_fragments(self, t):
        v4 = self.v4
        # Tiny fragments (RFC 1858): the first holds 8 bytes of the TCP header
        # (the ports, not the flags), the second the rest.
        seg = self.transport_bytes(self.tcp(t, "tiny-tcp"))
        ident = self.ip_id()
        self.malformed(v4(id=ident, proto=NH_TCP, flags="MF") / Raw(seg[:8]))
        self.later(v4(id=ident, proto=NH_TCP, frag=1) / Raw(seg[8:]))
        # Even tinier: 4 bytes (the ports alone) and 3 (a port and a half).
        # The stack discards a non-last fragment under 8 bytes anyway.
        for cut in (4, 3):
            seg = self.transport_bytes(self.tcp(t, f"tiny{cut}"))
            ident = self.ip_id()
            self.malformed(v4(id=ident, proto=NH_TCP, flags="MF") / Raw(seg[:cut]))
            self.later(v4(id=ident, proto=NH_TCP, frag=1) / Raw(seg[8:]))
        # For UDP, 8 bytes are the whole header: judged by its port.
        dgram = self.transport_bytes(self.udp(t, "tiny-udp"))
        ident = self.ip_id()
        self.ports(v4(id=ident, proto=NH_UDP, flags="MF") / Raw(dgram[:8]), t.udp_port)
        self.later(v4(id=ident, proto=NH_UDP, frag=1) / Raw(dgram[8:]))
        # Overlap: a later fragment rewrites the TCP header from byte 8 on
        # (flags, window); it can never reach the ports, at bytes 2..4.
        seg = self.transport_bytes(self.tcp(t, "overlap4") / Raw(b"x" * 8))
        rewrite = self.tcp(t, "overlap4", flags="PA") / Raw(b"y" * 8)
        rewrite = self.transport_bytes(rewrite)
        ident = self.ip_id()
        self.ports(v4(id=ident, proto=NH_TCP, flags="MF") / Raw(seg[:24]), t.tcp_port)
        self.later(v4(id=ident, proto=NH_TCP, frag=1) / Raw(rewrite[8:]))
        # An ordinary fragmented datagram, both orders: last fragment first.
        for name, last_first in (("frag-udp", False), ("frag-udp-rev", True)):
            dgram = self.transport_bytes(self.udp(t, name) / Raw(b"z" * 40))
            ident = self.ip_id()
            first = v4(id=ident, proto=NH_UDP, flags="MF") / Raw(dgram[:24])
            last = v4(id=ident, proto=NH_UDP, frag=3) / Raw(dgram[24:])
            if last_first:
                self.later(last)
            self.ports(first, t.udp_port)
            if not last_first:
                self.later(last)

    def ipv6_chains(self, t):
        hbh, rt, dst = IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt

        def atomic():
            return IPv6ExtHdrFragment(offset=0, m=0, id=self.ip_id())

        chains = {
            "hbh": [hbh],
            "rt": [rt],
            "dst": [dst],
            "atomic": [atomic],
            "hbh-dst": [hbh, dst],
            "hbh-rt-frag-dst": [hbh, rt, atomic, dst],
            f"dst{EXT_LIMIT}": [dst] * EXT_LIMIT,
            f"hbh-rt-dst{EXT_LIMIT - 2}": [hbh, rt] + [dst] * (EXT_LIMIT - 2),
            f"dst{EXT_LIMIT + 1}": [dst] * (EXT_LIMIT + 1),
            f"hbh-dst{EXT_LIMIT}": [hbh] + [dst] * EXT_LIMIT,
            "mixed12": [hbh, rt, dst, atomic] + [dst, rt] * 4,
        }
        for name, headers in chains.items():
            within = len(headers) <= EXT_LIMIT
            for proto in ("tcp", "udp"):
                pkt = self.v6()
                for header in headers:
                    pkt = pkt / header()
                if proto == "tcp":
                    pkt, dport = pkt / self.tcp(t, f"{name}-tcp"), t.tcp_port
                else:
                    pkt, dport = pkt / self.udp(t, f"{name}-udp"), t.udp_port
                if within:
                    self.ports(pkt, dport)
                else:
                    self.malformed(pkt)
        # An authentication header (4-octet length units), 24 bytes long.
        ah = bytes([NH_TCP, 4, 0, 0]) + b"\0\0\x01\x00" + b"\0\0\0\x01" + b"\0" * 12
        seg = self.transport_bytes(self.tcp(t, "ah"))
        self.ports(self.v6(nh=NH_AH) / Raw(ah + seg), t.tcp_port)
        # A destination options header whose length runs past the frame.
        too_long = bytes([NH_TCP, 20]) + b"\x01\x04\0\0\0\0"
        self.malformed(self.v6(nh=NH_DSTOPTS) / Raw(too_long))

    def ipv6_fragments(self, t):
        def frag(offset, m, nh, ident):
            return IPv6ExtHdrFragment(offset=offset, m=m, nh=nh, id=ident)

        def dst8(nh):
            """An 8-byte destination options header, padding only."""
            return bytes([nh, 0, 1, 4, 0, 0, 0, 0])

        # Tiny first fragment: 8 bytes of TCP header, the rest later.
        seg = self.transport_bytes(self.tcp(t, "tiny6"))
        ident = self.ip_id()
        self.malformed(self.v6() / frag(0, 1, NH_TCP, ident) / Raw(seg[:8]))
        self.later(self.v6() / frag(1, 0, NH_TCP, ident) / Raw(seg[8:]))
        # The header chain split across fragments: the first ends after a
        # destination options header, the TCP header comes second (RFC 8200
        # forbids it; the program cannot read the port, so it drops).
        seg = self.transport_bytes(self.tcp(t, "split-chain"))
        ident = self.ip_id()
        self.malformed(self.v6() / frag(0, 1, NH_DSTOPTS, ident) / Raw(dst8(NH_TCP)))
        self.later(self.v6() / frag(1, 0, NH_DSTOPTS, ident) / Raw(seg))
        # Overlap that rewrites the ports: with an 8-byte header in the
        # fragmentable part, the transport header starts at offset 8, so a
        # later fragment (passed by design) can cover it. The first fragment
        # goes to the control port and passes; the stack must refuse the
        # overlap (RFC 5722) rather than let the later fragment win.
        for proto in ("tcp", "udp"):
            if proto == "tcp":
                nh = NH_TCP
                decoy = TCP(sport=40000, dport=self.args.control_port, flags="S")
                real = self.tcp(t, "overlap6-tcp", sport=40000)
            else:
                nh = NH_UDP
                decoy = UDP(sport=40000, dport=self.args.control_port)
                real = self.udp(t, "overlap6-udp", sport=40000)
            # 32 bytes: the options header and 24 bytes of decoy.
            first = dst8(nh) + self.transport_bytes(decoy / Raw(b"d" * 24))[:24]
            # Lengths and checksum right for the datagram the rewrite would
            # make, so only the overlap rule can stop it.
            rewrite = raw(self.v6() / real)[IPV6_HLEN:]
            ident = self.ip_id()
            head = self.v6() / frag(0, 1, NH_DSTOPTS, ident) / Raw(first)
            self.ports(head, self.args.control_port)
            self.later(self.v6() / frag(1, 0, NH_DSTOPTS, ident) / Raw(rewrite))
        # An ordinary fragmented datagram over IPv6.
        dgram = self.transport_bytes(self.udp(t, "frag6-udp") / Raw(b"z" * 40))
        ident = self.ip_id()
        self.ports(self.v6() / frag(0, 1, NH_UDP, ident) / Raw(dgram[:24]), t.udp_port)
        self.later(self.v6() / frag(3, 0, NH_UDP, ident) / Raw(dgram[24:]))
        # A fragment header, then more headers than the walk allows.
        pkt = self.v6() / frag(0, 0, NH_DSTOPTS, self.ip_id())
        for _ in range(EXT_LIMIT):
            pkt = pkt / IPv6ExtHdrDestOpt()
        self.malformed(pkt / self.tcp(t, "atomic-long"))

    def odd_sources(self, t):
        v4 = self.args.client_v4
        for name, src in (("v4-mapped", "::ffff:" + v4), ("v4-compat", "::" + v4)):
            ip = IPv6(src=src, dst=self.args.server_v6)
            self.ports(ip / self.tcp(t, name), t.tcp_port)
            ip = IPv6(src=src, dst=self.args.server_v6)
            self.ports(ip / self.udp(t, name + "-udp"), t.udp_port)
        # The server's IPv4 address as an IPv4-mapped IPv6 destination.
        ip = IPv6(src=self.args.client_v6, dst="::ffff:" + self.args.server_v4)
        self.ports(ip / self.tcp(t, "v4-mapped-dst"), t.tcp_port)

    def vlans(self, t):
        # (outer EtherType, VLAN ids). VID 0 is a priority tag: the stack
        # takes the frame as untagged, stripping any number of such tags.
        stacks = {
            "vlan0": (0x8100, [0]),
            "vlan100": (0x8100, [100]),
            "ad-single": (0x88A8, [7]),
            "qinq0": (0x88A8, [0, 0]),
            "qinq": (0x88A8, [100, 200]),
            "dot1q-dot1q": (0x8100, [0, 0]),
        }
        for name, (outer, vids) in stacks.items():
            for ip, v in ((self.v4(), "4"), (self.v6(), "6")):
                seg = self.tcp(t, f"{name}-{v}")
                self.add(self.tagged(outer, vids) / ip / seg, PORTS, t.tcp_port)
            seg = self.udp(t, f"{name}-udp")
            self.add(self.tagged(outer, vids) / self.v4() / seg, PORTS, t.udp_port)
        # Three tags: deeper than the program follows.
        for vids, name in (([0, 0, 0], "triple0"), ([1, 2, 3], "triple")):
            seg = self.tcp(t, name)
            self.add(self.tagged(0x88A8, vids) / self.v4() / seg, MALFORMED)
        # A tag cut short.
        self.add(self.ether(0x8100) / Raw(b"\x00"), MALFORMED)

    def tagged(self, outer, vids):
        frame = self.ether(outer)
        for vid in vids:
            frame = frame / Dot1Q(vlan=vid)
        return frame

    def sizes(self, t):
        # Empty payloads (the marker cannot ride along).
        self.ports(self.v4() / UDP(sport=self.sport(), dport=t.udp_port), t.udp_port)
        self.ports(self.v6() / UDP(sport=self.sport(), dport=t.udp_port), t.udp_port)
        self.ports(self.v4() / TCP(sport=self.sport(), dport=t.tcp_port), t.tcp_port)
        # Headers cut short: 19 bytes of TCP, 7 of UDP.
        self.malformed(self.v4(proto=NH_TCP) / Raw(raw(TCP(dport=t.tcp_port))[:19]))
        self.malformed(self.v4(proto=NH_UDP) / Raw(raw(UDP(dport=t.udp_port))[:7]))
        self.malformed(self.v6(nh=NH_TCP) / Raw(raw(TCP(dport=t.tcp_port))[:19]))
        # Full-size frames (MTU 1500).
        for name, ip, seg, dport in (
            ("max-tcp4", self.v4(), self.tcp(t, "max-tcp4"), t.tcp_port),
            ("max-udp4", self.v4(), self.udp(t, "max-udp4"), t.udp_port),
            ("max-udp6", self.v6(), self.udp(t, "max-udp6"), t.udp_port),
        ):
            pkt = ip / seg
            pkt = pkt / Raw(b"m" * (MTU - len(pkt)))
            assert len(pkt) == MTU, name
            self.ports(pkt, dport)


def summary(frames, args):
    protected = {args.tcp_port, args.udp_port}
    count = lambda test: sum(1 for f in frames if test(f))  # noqa: E731
    return {
        "sent": len(frames),
        "protected_ports": count(lambda f: f[1] == PORTS and f[2] in protected),
        "control_ports": count(lambda f: f[1] == PORTS and f[2] == args.control_port),
        "malformed": count(lambda f: f[1] == MALFORMED),
        "later": count(lambda f: f[1] == LATER),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True, help="the client's veth")
    parser.add_argument("--server-mac", required=True)
    parser.add_argument("--server-v4", required=True)
    parser.add_argument("--server-v6", required=True)
    parser.add_argument("--client-v4", required=True)
    parser.add_argument("--client-v6", required=True)
    parser.add_argument("--tcp-port", type=int, required=True, help="protected")
    parser.add_argument("--udp-port", type=int, required=True, help="protected")
    parser.add_argument("--control-port", type=int, required=True, help="unprotected")
    args = parser.parse_args()
    assert args.control_port not in (args.tcp_port, args.udp_port)

    frames = Frames(args)
    frames.all_cases(Target("P", args.tcp_port, args.udp_port))
    frames.all_cases(Target("C", args.control_port, args.control_port))
    for frame, _, _ in frames.frames:
        assert len(frame) <= ETH_HLEN + 8 + MTU, len(frame)
    # Raw: send the bytes as built, without scapy filling anything in.
    sendp([Raw(f) for f, _, _ in frames.frames], iface=args.iface, verbose=False)
    print(json.dumps(summary(frames.frames, args)))


if __name__ == "__main__":
    main()
