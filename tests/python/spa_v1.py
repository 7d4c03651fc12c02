#!/usr/bin/env python3
"""Reference implementation of knock-xdp single-packet authorization, version 1.

Written from docs/spa-v1.md alone, with the Python standard library only,
as an independent check of the Rust implementation.

Usage:
    python3 tests/python/spa_v1.py [VECTORS.json]

For every test vector in the file (by default docs/spa-v1-vectors.json next
to this repository's tests/), derives the SPA key, builds the datagram,
computes the full HMAC and checks that the datagram's MAC is its first 16
bytes. Then verifies the vector's datagram as a server would (spec section
6): it must open the door once, for the address it names or else its
source, and be refused when sent again, when sent to another server
address, outside the skew, and with any single byte changed (each of its
bits alone, and the whole byte).

Prints "ok <i> <name>" or "mismatch <i>: ..." for each vector, and exits 1
if any vector does not match, 2 if the file cannot be read or a vector is
malformed.
"""

import hashlib
import hmac
import ipaddress
import json
import os
import sys

VERSION = 1
DATAGRAM_LEN = 52
SIGNED_LEN = 36
MAC_LEN = 16
NONCE_LEN = 12
KEY_LABEL = b"knock-xdp spa v1 key"
FLAG_ADMIT = 0x01
FLAG_ADMIT_V6 = 0x02
FLAGS_KNOWN = FLAG_ADMIT | FLAG_ADMIT_V6
DEFAULT_SKEW = 30
# How a byte is changed to check that the MAC covers it.
FLIPS = [1 << bit for bit in range(8)] + [0xFF]

# What a datagram came to at the server (spec section 6).
NOT_SPA = "not spa"
REJECTED = "rejected"
BAD_MAC = "bad mac"
REPLAY = "replay"
OPENED = "opened"


def address(text):
    """An address as the spec encodes it: (family byte, 16 bytes)."""
    ip = ipaddress.ip_address(text)
    return ip.version, ip.packed.ljust(16, b"\0")


def spa_key(secret):
    """Spec section 2: KS = HMAC-SHA256(S, "knock-xdp spa v1 key")."""
    if len(secret) != 32:
        raise ValueError("secret must be 32 bytes")
    return hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()


def mac_message(datagram, server):
    """Spec section 4: bytes 0..36 of the datagram, the server's family, its 16 bytes."""
    family, addr = address(server)
    return datagram[:SIGNED_LEN] + bytes([family]) + addr


def full_hmac(key, datagram, server):
    return hmac.new(key, mac_message(datagram, server), hashlib.sha256).digest()


def build(key, index, unix_time, nonce, admit, server):
    """Spec section 3: the 52-byte datagram, and the untruncated HMAC."""
    if not 0 <= index <= 0xFFFF:
        raise ValueError("index out of range: %d" % index)
    if not 0 <= unix_time <= 0xFFFFFFFF:
        raise ValueError("time out of range: %d" % unix_time)
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be %d bytes" % NONCE_LEN)
    if admit is None:
        flags, admit_field = 0, bytes(16)
    else:
        family, admit_field = address(admit)
        flags = FLAG_ADMIT | (FLAG_ADMIT_V6 if family == 6 else 0)
    signed = (
        bytes([VERSION, flags])
        + index.to_bytes(2, "big")
        + unix_time.to_bytes(4, "big")
        + nonce
        + admit_field
    )
    assert len(signed) == SIGNED_LEN
    full = full_hmac(key, signed, server)
    return signed + full[:MAC_LEN], full


class Server:
    """A server at address `address`, verifying datagrams as spec section 6 says."""

    def __init__(self, address, skew=DEFAULT_SKEW):
        self.address = address
        self.skew = skew
        self.clients = {}  # index -> (key, may name an address)
        self.nonces = set()  # (index, nonce) of verified datagrams

    def add_client(self, index, key, may_name_address):
        self.clients[index] = (key, may_name_address)

    def receive(self, payload, source, now, not_before=0):
        """What a UDP payload from `source` at UNIX time `now` comes to,
        and the address it admitted (or None). Datagrams sent before
        `not_before` (when the server's nonce cache began) are refused."""
        if len(payload) != DATAGRAM_LEN:
            return NOT_SPA, None
        # Cheap checks first: version, flags, padding, client, time.
        if payload[0] != VERSION or not self.well_formed(payload):
            return REJECTED, None
        flags = payload[1]
        index = int.from_bytes(payload[2:4], "big")
        if index not in self.clients:
            return REJECTED, None
        key, may_name_address = self.clients[index]
        sent = int.from_bytes(payload[4:8], "big")
        if abs(sent - now) > self.skew or sent < not_before:
            return REJECTED, None
        # The MAC, compared in constant time.
        expected = full_hmac(key, payload, self.address)[:MAC_LEN]
        if not hmac.compare_digest(expected, payload[SIGNED_LEN:]):
            return BAD_MAC, None
        # The address to admit: a named one other than the source needs the
        # client's permission; the refusal spends no nonce.
        admit = source
        if flags & FLAG_ADMIT:
            admit = self.named(payload, flags)
            if admit != source and not may_name_address:
                return REJECTED, None
        # The nonce, remembered once verified.
        seen = (index, bytes(payload[8 : 8 + NONCE_LEN]))
        if seen in self.nonces:
            return REPLAY, None
        self.nonces.add(seen)
        return OPENED, admit

    @staticmethod
    def well_formed(payload):
        flags = payload[1]
        if flags & ~FLAGS_KNOWN or flags == FLAG_ADMIT_V6:
            return False
        zero_from = {0: 20, FLAG_ADMIT: 24}.get(flags, 36)
        return payload[zero_from:36] == bytes(36 - zero_from)

    @staticmethod
    def named(payload, flags):
        field = payload[20:36]
        if flags & FLAG_ADMIT_V6:
            return str(ipaddress.IPv6Address(field))
        return str(ipaddress.IPv4Address(field[:4]))


def other_address(text):
    """`text` with the low bit of its last byte changed."""
    ip = ipaddress.ip_address(text)
    return str(ipaddress.ip_address(int(ip) ^ 1))


def server_problems(key, index, unix_time, admit, server, datagram):
    """Verifies `datagram` as the server at `server` would."""
    problems = []
    source = "198.51.100.7" if address(server)[0] == 4 else "2001:db8:5::7"
    expected = source if admit is None else str(ipaddress.ip_address(admit))

    def fresh(at=server):
        s = Server(at)
        s.add_client(index, key, may_name_address=True)
        return s

    s = fresh()
    got = s.receive(datagram, source, unix_time)
    if got != (OPENED, expected):
        problems.append("server: %s, not opened for %s" % (got, expected))
    got = s.receive(datagram, "203.0.113.9", unix_time + 1)
    if got != (REPLAY, None):
        problems.append("server: sent again: %s, not a replay" % (got,))
    if admit is not None:
        # Without the permission, only the named address itself may send it.
        s = Server(server)
        s.add_client(index, key, may_name_address=False)
        got = s.receive(datagram, source, unix_time)
        if got != (REJECTED, None):
            problems.append("server: named address without permission: %s" % (got,))
        got = s.receive(datagram, expected, unix_time)
        if got != (OPENED, expected):
            problems.append("server: sent from the named address: %s" % (got,))
    if unix_time > 0:
        got = fresh().receive(datagram, source, unix_time, not_before=unix_time + 1)
        if got[0] == OPENED:
            problems.append("server: opened although sent before the nonce cache began")
    got = fresh(other_address(server)).receive(datagram, source, unix_time)
    if got[0] == OPENED:
        problems.append("server: opened at another server address")
    for late in (unix_time + DEFAULT_SKEW + 1, unix_time - DEFAULT_SKEW - 1):
        if late >= 0 and fresh().receive(datagram, source, late)[0] == OPENED:
            problems.append("server: opened at time %d, out of the skew" % late)
    # Any single byte changed (each of its bits alone, and all of them): never opened.
    for position in range(DATAGRAM_LEN):
        for flip in FLIPS:
            changed = bytearray(datagram)
            changed[position] ^= flip
            got = fresh().receive(bytes(changed), source, unix_time)
            if got[0] == OPENED:
                problems.append("server: byte %d ^ %02x opened" % (position, flip))
    return problems


def check_vector(vector):
    """Returns a list of differences between `vector` and a recomputation."""
    secret = bytes.fromhex(vector["secret"])
    index = vector["index"]
    unix_time = vector["unix_time"]
    nonce = bytes.fromhex(vector["nonce"])
    admit = vector["admit"]
    server = vector["server"]
    want_key = bytes.fromhex(vector["key"])
    want_hmac = bytes.fromhex(vector["hmac"])
    want_datagram = bytes.fromhex(vector["datagram"])

    problems = []
    key = spa_key(secret)
    if key != want_key:
        problems.append("key %s, vector says %s" % (key.hex(), want_key.hex()))
    datagram, full = build(key, index, unix_time, nonce, admit, server)
    if full != want_hmac:
        problems.append("hmac %s, vector says %s" % (full.hex(), want_hmac.hex()))
    if datagram != want_datagram:
        problems.append("datagram %s, vector says %s" % (datagram.hex(), want_datagram.hex()))
    # The truncation: the datagram's MAC is the first 16 bytes of the HMAC.
    if want_datagram[SIGNED_LEN:] != want_hmac[:MAC_LEN]:
        problems.append("the datagram's MAC is not the first %d bytes of the hmac" % MAC_LEN)
    if len(want_datagram) != DATAGRAM_LEN:
        problems.append("datagram of %d bytes" % len(want_datagram))
    else:
        problems += server_problems(key, index, unix_time, admit, server, want_datagram)
    return problems


def main(argv):
    if len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if len(argv) == 2:
        path = argv[1]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "docs", "spa-v1-vectors.json")
    try:
        with open(path, encoding="utf-8") as f:
            vectors = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 2
    if not isinstance(vectors, list) or not vectors:
        print("%s: expected a non-empty JSON array" % path, file=sys.stderr)
        return 2

    failed = 0
    for i, vector in enumerate(vectors):
        try:
            problems = check_vector(vector)
        except (KeyError, TypeError, ValueError) as e:
            print("error %d: malformed vector: %r" % (i, e))
            return 2
        if problems:
            failed += 1
            print("mismatch %d: %s" % (i, "; ".join(problems)))
        else:
            print("ok %d %s" % (i, vector.get("name", "")))
    if failed:
        print("%d of %d vectors do not match" % (failed, len(vectors)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
