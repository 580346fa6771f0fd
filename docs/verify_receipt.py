#!/usr/bin/env python3
"""Independent check of an observation's receipt (docs/event-log.md).

    python3 docs/verify_receipt.py '<verifier key>' < receipt.json

A receipt (GET /v1/audit/observations/{id}/receipt) proves an observation's
history offline: each event's hash is recomputed from its contents, each
event's inclusion in the log's Merkle tree (RFC 9162) is proven against a
checkpoint, and the checkpoint (a C2SP signed note) is verified with the
log's verifier key, obtained beforehand. Standard library only; Ed25519
verification follows the reference code of RFC 8032, section 6. Prints what
was proven, or the first thing that does not verify and exits 1.
"""
import base64
import hashlib
import json
import struct
import sys

# --- Ed25519 verification (RFC 8032 §5.1.7, after its §6 reference code) ---
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _decompress(b):
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, p):
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p, s = _add(p, p), s >> 1
    return q


def _equal(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


_GY = 4 * pow(5, P - 2, P) % P
BASE = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % P)


def ed25519_verify(public, message, signature):
    a, r = _decompress(public), _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(h, a)))


# --- The checkpoint: a C2SP signed note -----------------------------------
def open_checkpoint(note, key):
    name, key_id, key_b64 = key.strip().split("+", 2)
    raw = base64.b64decode(key_b64)
    if len(raw) != 33 or raw[0] != 1:
        fail("the verifier key is not an Ed25519 signed-note key")
    public = raw[1:]
    if hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4] != bytes.fromhex(key_id):
        fail("the verifier key's id does not match its name and key")
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        if line.startswith("\u2014 " + name + " "):
            sig = base64.b64decode(line.rsplit(" ", 1)[1])
            if sig[:4] == bytes.fromhex(key_id) and ed25519_verify(public, text.encode(), sig[4:]):
                origin, size, root = text.split("\n")[:3]
                if origin != name:
                    fail(f"the checkpoint is of another log ({origin})")
                return int(size), base64.b64decode(root)
    fail("no signature of the verifier key verifies the checkpoint")


# --- Events and the hash chain (as docs/verify_event.py) -------------------
def canonical(event, data_bytes):
    fields = [
        str(event["position"]), event["id"], event["type"].split(".")[1], event["streamid"],
        str(event["streamversion"]), event["source"].split("/")[2], event["type"],
        event["type"].rsplit(".", 1)[1].lstrip("v"), event["time"], event["actor"],
        event["reason"] or "", event["correlationid"], event["causationid"],
    ]
    out = bytearray(b"research-event/v1")
    for field in [f.encode("utf-8") for f in fields] + [data_bytes]:
        out += struct.pack(">I", len(field)) + field
    return bytes(out)


def raw_events(text):
    """Each event's exact text: the receipt holds them as they were hashed."""
    decoder, i = json.JSONDecoder(), text.index('"events":[') + len('"events":[')
    while text[i] != "]":
        event, end = decoder.raw_decode(text, i)
        yield event, text[i:end]
        i = end + (text[end] == ",")


# --- Inclusion proofs (RFC 9162 §2.1.3.2) ----------------------------------
def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index, size, leaf, proof):
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    text = sys.stdin.read()
    receipt = json.loads(text)
    size, root = open_checkpoint(receipt["checkpoint"], sys.argv[1])
    events = list(raw_events(text))
    if not events or len(events) != len(receipt["proofs"]):
        fail("the receipt needs one proof per event, and at least one event")
    for version, ((event, raw), proof) in enumerate(zip(events, receipt["proofs"]), 1):
        position = event["position"]
        if event["streamid"] != receipt["observation_id"] or event["streamversion"] != version:
            fail(f"position {position}: not version {version} of observation {receipt['observation_id']}")
        data_bytes = raw[raw.index('"data":') + len('"data":'):-1].encode("utf-8")
        digest = hashlib.sha256(bytes.fromhex(event["prevhash"]) + canonical(event, data_bytes)).digest()
        if digest.hex() != event["hash"]:
            fail(f"position {position}: the hash does not match the event's contents")
        leaf = hashlib.sha256(b"\x00" + digest).digest()
        if (proof["position"], proof["tree_size"], proof["leaf_hash"]) != (position, size, leaf.hex()):
            fail(f"position {position}: the proof is not for this event in the checkpoint's tree")
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]
        if root_from_inclusion(position - 1, size, leaf, hashes) != root:
            fail(f"position {position}: the event is not in the signed tree of {size} events")
    positions = ", ".join(str(e["position"]) for e, _ in events)
    print(f"receipt verified: observation {receipt['observation_id']}, events at positions "
          f"{positions}, in the signed tree of {size} events")


if __name__ == "__main__":
    main()
