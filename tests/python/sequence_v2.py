#!/usr/bin/env python3
"""Reference implementation of the knock-xdp sequence derivation, version 2.

Written from docs/sequence-v2.md (and the parts of docs/sequence-v1.md it
keeps) alone, with the Python standard library only, as an independent check
of the Rust implementation.

Usage:
    python3 tests/python/sequence_v2.py [VECTORS.json]

Recomputes every sequence vector (its slot, its identity from "server" when
given, and its ports) and every identity vector of the file (by default
docs/sequence-v2-vectors.json), prints "ok sequence <i>" / "ok identity <i>"
or "mismatch sequence <i>: ..." / "mismatch identity <i>: ..." for each, and
exits 1 if any does not match, 2 if the file cannot be read or an entry is
malformed.
"""

import hashlib
import hmac
import ipaddress
import json
import os
import re
import struct
import sys

DOMAIN_TAG = b"knock-xdp sequence v2"
MAX_LENGTH = 16
MAX_SLOT_SECS = 86400
MAX_BLOCKS = 4096
MAX_IDENTITY = 255
MAX_NAME = 253
LABEL = re.compile(r"[A-Za-z0-9-]{1,63}")


class SpecError(ValueError):
    """Parameters the spec declares invalid, or no sequence within the limit."""


# Section 2: server identities.


def normalize(text):
    """The identity of a server name or address, as text (spec section 2)."""
    if not text:
        raise SpecError("empty")
    if not text.isascii():
        raise SpecError("not ASCII")
    if text.startswith("["):
        if not text.endswith("]"):
            raise SpecError("unclosed bracket")
        return ipv6_identity(text[1:-1])
    if ":" in text:
        return ipv6_identity(text)
    if any(c.isdigit() for c in text) and all(c.isdigit() or c == "." for c in text):
        return ipv4_identity(text)
    name = text[:-1] if text.endswith(".") else text
    if len(name) > MAX_NAME:
        raise SpecError("name longer than %d bytes" % MAX_NAME)
    for label in name.split("."):
        if not LABEL.fullmatch(label) or label.startswith("-") or label.endswith("-"):
            raise SpecError("bad label %r" % label)
    return name.lower()


def ipv4_identity(text):
    """Four decimal octets 0-255, no leading zeros; written back the same way."""
    parts = text.split(".")
    if len(parts) != 4:
        raise SpecError("not four octets")
    for part in parts:
        if not part or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            raise SpecError("bad octet %r" % part)
        if int(part) > 255:
            raise SpecError("octet above 255")
    return ".".join(parts)


def ipv6_identity(text):
    """RFC 4291 text, no zone; RFC 5952 out; IPv4-mapped is the IPv4 address."""
    if "%" in text:
        raise SpecError("a zone")
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError as e:
        raise SpecError(str(e))
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    # Python's compressed form is RFC 5952's: lowercase, no leading zeros,
    # the first longest run of two or more zero groups as "::".
    return addr.compressed


# Sections 3-6 of v1, unchanged, over the version 2 message.


def slot_of(unix_time, slot_secs):
    if not 1 <= slot_secs <= MAX_SLOT_SECS:
        raise SpecError("slot length out of range: %d" % slot_secs)
    if unix_time < 0:
        raise SpecError("negative UNIX time")
    return unix_time // slot_secs


def candidate_ports(port_lo, port_hi, exclude):
    if not 1 <= port_lo <= port_hi <= 65535:
        raise SpecError("bad port range %d..%d" % (port_lo, port_hi))
    excluded = set(exclude)
    return [p for p in range(port_lo, port_hi + 1) if p not in excluded]


def hmac_message(identity, slot, block):
    """Section 3: tag || u8(len(I)) || I || u64be(slot) || u32be(block)."""
    if not 1 <= len(identity) <= MAX_IDENTITY:
        raise SpecError("identity of %d bytes" % len(identity))
    return DOMAIN_TAG + bytes([len(identity)]) + identity + struct.pack(">QI", slot, block)


def derive(secret, identity, slot, length, port_lo, port_hi, exclude):
    """The knock sequence of `secret` at the server `identity` (bytes) in `slot`."""
    if len(secret) != 32:
        raise SpecError("secret must be 32 bytes")
    if not 1 <= length <= MAX_LENGTH:
        raise SpecError("bad sequence length %d" % length)
    if not 0 <= slot < 2**64:
        raise SpecError("slot does not fit in 64 bits")
    cands = candidate_ports(port_lo, port_hi, exclude)
    n = len(cands)
    if n < length:
        raise SpecError("only %d candidate ports for length %d" % (n, length))

    limit = 65536 - (65536 % n)
    chosen = []
    for block in range(MAX_BLOCKS):
        message = hmac_message(identity, slot, block)
        digest = hmac.new(secret, message, hashlib.sha256).digest()
        for value in struct.unpack(">16H", digest):
            if value >= limit:
                continue
            port = cands[value % n]
            if port in chosen:
                continue
            chosen.append(port)
            if len(chosen) == length:
                return chosen
    raise SpecError("no sequence within %d blocks" % MAX_BLOCKS)


def check_sequence(vector):
    """Differences between a sequence vector and a recomputation."""
    problems = []
    identity = vector["identity"]
    if "server" in vector:
        try:
            normalized = normalize(vector["server"])
        except SpecError as e:
            normalized = "invalid (%s)" % e
        if normalized != identity:
            problems.append("server normalizes to %r, vector says %r" % (normalized, identity))
    slot = slot_of(vector["unix_time"], vector["slot_secs"])
    if slot != vector["slot"]:
        problems.append("slot %d, vector says %d" % (slot, vector["slot"]))
    ports = derive(
        bytes.fromhex(vector["secret"]),
        identity.encode("ascii"),
        slot,
        vector["length"],
        vector["port_lo"],
        vector["port_hi"],
        vector["exclude"],
    )
    if ports != vector["ports"]:
        problems.append("ports %s, vector says %s" % (ports, vector["ports"]))
    return problems


def check_identity(vector):
    """Differences between an identity vector (None: invalid) and normalize()."""
    try:
        got = normalize(vector["input"])
    except SpecError:
        got = None
    if got != vector["identity"]:
        return ["%r normalizes to %r, vector says %r" % (vector["input"], got, vector["identity"])]
    return []


def main(argv):
    if len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if len(argv) == 2:
        path = argv[1]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "docs", "sequence-v2-vectors.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or doc.get("spec") != "knock-xdp sequence v2":
        print("%s: not a knock-xdp sequence v2 vectors file" % path, file=sys.stderr)
        return 2

    failed = 0
    total = 0
    for kind, check in (("sequence", check_sequence), ("identity", check_identity)):
        entries = doc.get("sequences" if kind == "sequence" else "identities")
        if not isinstance(entries, list) or not entries:
            print("%s: no %s vectors" % (path, kind), file=sys.stderr)
            return 2
        for i, vector in enumerate(entries):
            total += 1
            try:
                problems = check(vector)
            except (KeyError, TypeError, ValueError) as e:
                print("error %s %d: malformed vector: %r" % (kind, i, e))
                return 2
            if problems:
                failed += 1
                print("mismatch %s %d: %s" % (kind, i, "; ".join(problems)))
            else:
                print("ok %s %d" % (kind, i))
    if failed:
        print("%d of %d vectors do not match" % (failed, total))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
