#!/usr/bin/env python3
"""Reference implementation of the knock-xdp sequence derivation, version 1.

Written from docs/sequence-v1.md alone, with the Python standard library only,
as an independent check of the Rust implementation.

Usage:
    python3 tests/python/sequence_v1.py [VECTORS.json]

Recomputes the slot and the ports of every test vector in the file (by default
docs/sequence-v1-vectors.json next to this repository's tests/), prints
"ok <i>" or "mismatch <i>: ..." for each, and exits 1 if any vector does not
match, 2 if the file cannot be read or a vector is malformed.
"""

import hashlib
import hmac
import json
import os
import struct
import sys

DOMAIN_TAG = b"knock-xdp sequence v1"
MAX_LENGTH = 16
MAX_SLOT_SECS = 86400
MAX_BLOCKS = 4096


class SpecError(ValueError):
    """Parameters the spec declares invalid, or no sequence within the limit."""


def slot_of(unix_time, slot_secs):
    """Spec section "Time slot": s = floor(t / L), L in 1..=86400."""
    if not 1 <= slot_secs <= MAX_SLOT_SECS:
        raise SpecError("slot length out of range: %d" % slot_secs)
    if unix_time < 0:
        raise SpecError("negative UNIX time")
    return unix_time // slot_secs


def candidate_ports(port_lo, port_hi, exclude):
    """Spec section "Candidate ports": the ascending list C."""
    if not 1 <= port_lo <= port_hi <= 65535:
        raise SpecError("bad port range %d..%d" % (port_lo, port_hi))
    excluded = set(exclude)
    return [p for p in range(port_lo, port_hi + 1) if p not in excluded]


def hmac_message(slot, block):
    """Spec section "HMAC blocks": tag || u64be(slot) || u32be(block)."""
    return DOMAIN_TAG + struct.pack(">QI", slot, block)


def derive(secret, slot, length, port_lo, port_hi, exclude):
    """The knock sequence of `secret` (32 bytes) for time slot `slot`."""
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
        digest = hmac.new(secret, hmac_message(slot, block), hashlib.sha256).digest()
        for value in struct.unpack(">16H", digest):
            if value >= limit:
                continue  # rejection keeps value % n uniform
            port = cands[value % n]
            if port in chosen:
                continue
            chosen.append(port)
            if len(chosen) == length:
                return chosen
    raise SpecError("no sequence within %d blocks" % MAX_BLOCKS)


def check_vector(vector):
    """Returns a list of differences between `vector` and a recomputation."""
    secret = bytes.fromhex(vector["secret"])
    slot = slot_of(vector["unix_time"], vector["slot_secs"])
    problems = []
    if slot != vector["slot"]:
        problems.append("slot %d, vector says %d" % (slot, vector["slot"]))
    ports = derive(
        secret,
        slot,
        vector["length"],
        vector["port_lo"],
        vector["port_hi"],
        vector["exclude"],
    )
    if ports != vector["ports"]:
        problems.append("ports %s, vector says %s" % (ports, vector["ports"]))
    return problems


def main(argv):
    if len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if len(argv) == 2:
        path = argv[1]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "docs", "sequence-v1-vectors.json")
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
            print("ok %d" % i)
    if failed:
        print("%d of %d vectors do not match" % (failed, len(vectors)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
