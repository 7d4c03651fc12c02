#!/usr/bin/env python3
"""Reference implementation of knock-xdp secrets, version 1.

Written from docs/secrets-v1.md alone, with the Python standard library only
(the knock sequences come from sequence_v1.py next to this file), as an
independent check of the Rust implementation.

Usage:
    python3 tests/python/secrets_v1.py [VECTORS.json]
    python3 tests/python/secrets_v1.py --fill VECTORS.json

The first form recomputes every output of every test vector in the file (by
default docs/secrets-v1-vectors.json of this repository), prints
"ok <section> <i>" or "mismatch <section> <i>: ..." for each vector, and exits
1 if any vector does not match, 2 if the file cannot be read or a vector is
malformed. The second form rewrites the outputs of every vector from this
implementation, leaving the inputs as they are.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sequence_v1  # noqa: E402  (the sequence derivation, docs/sequence-v1.md)

PASSPHRASE_SALT_PREFIX = b"knock-xdp passphrase v1"
PIN_SALT_PREFIX = b"knock-xdp totp pin v1"
TOTP_TAG = b"knock-xdp totp v1"
SALT_LEN = 16
TOTP_STEP_SECS = 30
DIGITS = 6


class SpecError(ValueError):
    """Inputs the spec declares invalid."""


def pbkdf2_sha256(password, salt, iterations):
    """PBKDF2-HMAC-SHA256, RFC 8018, 32 bytes of output."""
    if iterations < 1:
        raise SpecError("PBKDF2 needs at least one iteration")
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)


def check_salt(salt):
    if len(salt) != SALT_LEN:
        raise SpecError("salt must be %d bytes" % SALT_LEN)
    return salt


def passphrase_secret(passphrase, salt, cost):
    return pbkdf2_sha256(passphrase, PASSPHRASE_SALT_PREFIX + check_salt(salt), cost)


def pin_key(pin, salt, cost):
    return pbkdf2_sha256(pin, PIN_SALT_PREFIX + check_salt(salt), cost)


def totp_slot_secret(key, code):
    """HMAC-SHA256(pin key, tag || the code as 6 ASCII digits)."""
    if len(key) != 32:
        raise SpecError("PIN key must be 32 bytes")
    if not 0 <= code < 10**DIGITS:
        raise SpecError("code out of range: %d" % code)
    message = TOTP_TAG + ("%06d" % code).encode("ascii")
    return hmac.new(key, message, hashlib.sha256).digest()


def totp_code(totp_secret, step):
    """RFC 6238 / RFC 4226: HOTP-SHA1 of counter `step`, 6 digits."""
    digest = hmac.new(totp_secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[19] & 0x0F
    (value,) = struct.unpack(">I", digest[offset : offset + 4])
    return (value & 0x7FFFFFFF) % 10**DIGITS


def base32(data):
    """RFC 4648 base32, upper case, padding removed."""
    return base64.b32encode(data).decode("ascii").rstrip("=")


def unbase32(text):
    """Inverse of base32(), for canonical upper case text."""
    return base64.b32decode(text + "=" * (-len(text) % 8))


def code_text(code):
    return "%06d" % code


def code_of(text):
    if len(text) != DIGITS or not text.isdigit():
        raise SpecError("a code is %d decimal digits: %r" % (DIGITS, text))
    return int(text)


def text_bytes(text):
    """Passphrases and PINs: the UTF-8 bytes of the JSON string."""
    return text.encode("utf-8")


def ports_of(v, secret, slot):
    return sequence_v1.derive(
        secret, slot, v["length"], v["port_lo"], v["port_hi"], v["exclude"]
    )


# For each section: a function computing the outputs of a vector from its
# inputs, and the order of all the members of its vectors.


def compute_pbkdf2(v):
    out = pbkdf2_sha256(
        text_bytes(v["password"]), bytes.fromhex(v["salt_hex"]), v["iterations"]
    )
    return {"output": out.hex()}


def compute_base32(v):
    data = bytes.fromhex(v["data_hex"])
    text = base32(data)
    if unbase32(text) != data:
        raise SpecError("base32 does not round-trip")
    return {"text": text}


def compute_passphrase(v):
    secret = passphrase_secret(
        text_bytes(v["passphrase"]), bytes.fromhex(v["salt"]), v["cost"]
    )
    return {"secret": secret.hex()}


def compute_pin_key(v):
    key = pin_key(text_bytes(v["pin"]), bytes.fromhex(v["salt"]), v["cost"])
    return {"pin_key": key.hex()}


def compute_slot_secret(v):
    secret = totp_slot_secret(bytes.fromhex(v["pin_key"]), code_of(v["code"]))
    return {"secret": secret.hex()}


def compute_totp_code(v):
    totp_secret = bytes.fromhex(v["totp_secret"])
    step = v["unix_time"] // TOTP_STEP_SECS
    return {
        "totp_secret_base32": base32(totp_secret),
        "step": step,
        "code": code_text(totp_code(totp_secret, step)),
    }


def compute_totp_end_to_end(v):
    out = compute_totp_code(v)
    key = pin_key(text_bytes(v["pin"]), bytes.fromhex(v["salt"]), v["cost"])
    secret = totp_slot_secret(key, code_of(out["code"]))
    out["pin_key"] = key.hex()
    out["slot_secret"] = secret.hex()
    out["ports"] = ports_of(v, secret, out["step"])
    return out


def compute_passphrase_end_to_end(v):
    slot = sequence_v1.slot_of(v["unix_time"], v["slot_secs"])
    secret = passphrase_secret(
        text_bytes(v["passphrase"]), bytes.fromhex(v["salt"]), v["cost"]
    )
    return {"slot": slot, "secret": secret.hex(), "ports": ports_of(v, secret, slot)}


PROFILE = ["length", "port_lo", "port_hi", "exclude"]

SECTIONS = {
    "pbkdf2_sha256": (
        compute_pbkdf2,
        ["name", "password", "salt_hex", "iterations", "output"],
    ),
    "base32": (compute_base32, ["name", "data_hex", "text"]),
    "passphrase_secret": (
        compute_passphrase,
        ["name", "passphrase", "salt", "cost", "secret"],
    ),
    "pin_key": (compute_pin_key, ["name", "pin", "salt", "cost", "pin_key"]),
    "totp_slot_secret": (compute_slot_secret, ["name", "pin_key", "code", "secret"]),
    "totp_code": (
        compute_totp_code,
        ["name", "totp_secret", "totp_secret_base32", "unix_time", "step", "code"],
    ),
    "totp_end_to_end": (
        compute_totp_end_to_end,
        ["name", "totp_secret", "totp_secret_base32", "salt", "pin", "cost"]
        + ["unix_time", "step", "code", "pin_key", "slot_secret"]
        + PROFILE
        + ["ports"],
    ),
    "passphrase_end_to_end": (
        compute_passphrase_end_to_end,
        ["name", "passphrase", "salt", "cost", "slot_secs", "unix_time", "slot"]
        + ["secret"]
        + PROFILE
        + ["ports"],
    ),
}


def check(doc):
    """Prints a line per vector; returns the number of mismatches."""
    failed = 0
    for section, (compute, _) in SECTIONS.items():
        for i, vector in enumerate(doc[section]):
            expected = compute(vector)
            problems = [
                "%s is %s, vector says %s"
                % (key, json.dumps(value), json.dumps(vector.get(key)))
                for key, value in expected.items()
                if vector.get(key) != value
            ]
            if problems:
                failed += 1
                print("mismatch %s %d: %s" % (section, i, "; ".join(problems)))
            else:
                print("ok %s %d" % (section, i))
    return failed


def fill(doc):
    """Recomputes every output, keeping the members in a fixed order."""
    for section, (compute, order) in SECTIONS.items():
        filled = []
        for vector in doc[section]:
            vector = dict(vector, **compute(vector))
            unknown = set(vector) - set(order)
            if unknown:
                raise SpecError("unknown members %s" % sorted(unknown))
            filled.append({k: vector[k] for k in order if k in vector})
        doc[section] = filled


def dump(doc):
    """JSON with one member per line and every value on one line."""
    lines = ["{"]
    sections = list(doc.items())
    for s, (section, vectors) in enumerate(sections):
        if not isinstance(vectors, list):
            lines.append("  %s: %s," % (json.dumps(section), json.dumps(vectors)))
            continue
        lines.append("  %s: [" % json.dumps(section))
        for i, vector in enumerate(vectors):
            lines.append("    {")
            members = [
                "      %s: %s" % (json.dumps(k), json.dumps(v, ensure_ascii=False))
                for k, v in vector.items()
            ]
            lines.append(",\n".join(members))
            lines.append("    }" + ("," if i + 1 < len(vectors) else ""))
        lines.append("  ]" + ("," if s + 1 < len(sections) else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv):
    args = argv[1:]
    filling = bool(args) and args[0] == "--fill"
    if filling:
        args = args[1:]
    if len(args) > 1 or (filling and not args):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if args:
        path = args[0]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "docs", "secrets-v1-vectors.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or any(
        not isinstance(doc.get(s), list) or not doc[s] for s in SECTIONS
    ):
        print(
            "%s: expected an object with a non-empty array for each of %s"
            % (path, ", ".join(SECTIONS)),
            file=sys.stderr,
        )
        return 2

    try:
        if filling:
            fill(doc)
            with open(path, "w", encoding="utf-8") as f:
                f.write(dump(doc))
            return 0
        failed = check(doc)
    except (KeyError, TypeError, ValueError, sequence_v1.SpecError) as e:
        print("error: malformed vector: %r" % (e,))
        return 2
    total = sum(len(doc[s]) for s in SECTIONS)
    if failed:
        print("%d of %d vectors do not match" % (failed, total))
        return 1
    print("all %d vectors match" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
