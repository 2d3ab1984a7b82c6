#!/usr/bin/env python3
"""Independent check of an mpc-custody demo report, sharing no code with it.

From the report alone (signed_tx_hex, and per input the prevout's script and
amount) it recomputes each input's BIP-143 sighash, parses the witness's
strict-DER low-S signature and key, checks that HASH160(key) is the P2WPKH
program being spent, and verifies the ECDSA signature on secp256k1. Pure
Python standard library; usage: verify_report.py demo-out/report.json
"""
import hashlib
import json
import struct
import sys

P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
     0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)


def dsha256(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def ripemd160(data):
    """RIPEMD-160, written out: OpenSSL 3 often lacks it in hashlib."""
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:
        pass
    rl = lambda x, n: ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF
    f = [lambda x, y, z: x ^ y ^ z, lambda x, y, z: (x & y) | (~x & z), lambda x, y, z: (x | ~y) ^ z,
         lambda x, y, z: (x & z) | (y & ~z), lambda x, y, z: x ^ (y | ~z)]
    kl = [0, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E]
    kr = [0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0]
    zl = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8,
          3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12, 1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2,
          4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13]
    zr = [5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12, 6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2,
          15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13, 8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14,
          12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11]
    sl = [11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8, 7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12,
          11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5, 11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12,
          9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6]
    sr = [8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6, 9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11,
          9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5, 15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8,
          8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11]
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    msg = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", 8 * len(data))
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        al, bl, cl, dl, el = h
        ar, br, cr, dr, er = h
        for j in range(80):
            r = j // 16
            t = (rl((al + f[r](bl, cl, dl) + x[zl[j]] + kl[r]) & 0xFFFFFFFF, sl[j]) + el) & 0xFFFFFFFF
            al, el, dl, cl, bl = el, dl, rl(cl, 10), bl, t
            t = (rl((ar + f[4 - r](br, cr, dr) + x[zr[j]] + kr[r]) & 0xFFFFFFFF, sr[j]) + er) & 0xFFFFFFFF
            ar, er, dr, cr, br = er, dr, rl(cr, 10), br, t
        t = (h[1] + cl + dr) & 0xFFFFFFFF
        h[1] = (h[2] + dl + er) & 0xFFFFFFFF
        h[2] = (h[3] + el + ar) & 0xFFFFFFFF
        h[3] = (h[4] + al + br) & 0xFFFFFFFF
        h[4] = (h[0] + bl + cr) & 0xFFFFFFFF
        h[0] = t
    return struct.pack("<5I", *h)


def point_add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        lam = 3 * a[0] * a[0] * pow(2 * a[1], -1, P) % P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (lam * lam - a[0] - b[0]) % P
    return (x, (lam * (a[0] - x) - a[1]) % P)


def point_mul(k, pt):
    out = None
    while k:
        if k & 1:
            out = point_add(out, pt)
        pt = point_add(pt, pt)
        k >>= 1
    return out


def decompress(key):
    if len(key) != 33 or key[0] not in (2, 3):
        raise ValueError("not a compressed public key")
    x = int.from_bytes(key[1:], "big")
    y = pow((x * x * x + 7) % P, (P + 1) // 4, P)
    if (y * y - (x * x * x + 7)) % P:
        raise ValueError("public key is not on secp256k1")
    if y % 2 != key[0] % 2:
        y = P - y
    return (x, y)


def parse_der(sig):
    """Strict DER (BIP-66) r and s."""
    if len(sig) < 8 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        raise ValueError("signature is not a DER sequence")
    out = []
    pos = 2
    for _ in range(2):
        if sig[pos] != 0x02:
            raise ValueError("DER integer expected")
        n = sig[pos + 1]
        v = sig[pos + 2:pos + 2 + n]
        if n == 0 or v[0] & 0x80 or (n > 1 and v[0] == 0 and not v[1] & 0x80):
            raise ValueError("non-canonical DER integer")
        out.append(int.from_bytes(v, "big"))
        pos += 2 + n
    if pos != len(sig):
        raise ValueError("trailing bytes in DER signature")
    return out


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        if self.i + n > len(self.b):
            raise ValueError("transaction is truncated")
        v = self.b[self.i:self.i + n]
        self.i += n
        return v

    def varint(self):
        n = self.take(1)[0]
        if n < 0xFD:
            return n
        return int.from_bytes(self.take({0xFD: 2, 0xFE: 4, 0xFF: 8}[n]), "little")


def varint(n):
    return bytes([n]) if n < 0xFD else b"\xfd" + struct.pack("<H", n)


def parse_tx(raw):
    r = Reader(raw)
    version = r.take(4)
    if r.take(2) != b"\x00\x01":
        raise ValueError("not a segwit transaction")
    ins = [(r.take(36), r.take(r.varint()), r.take(4)) for _ in range(r.varint())]
    outs = []
    for _ in range(r.varint()):
        value = r.take(8)
        script = r.take(r.varint())
        outs.append(value + varint(len(script)) + script)
    witnesses = [[r.take(r.varint()) for _ in range(r.varint())] for _ in ins]
    locktime = r.take(4)
    if r.i != len(raw):
        raise ValueError("trailing bytes after the transaction")
    legacy = version + varint(len(ins)) + b"".join(o + varint(len(s)) + s + q for o, s, q in ins)
    legacy += varint(len(outs)) + b"".join(outs) + locktime
    return version, ins, outs, witnesses, locktime, dsha256(legacy)[::-1].hex()


def verify(report):
    version, ins, outs, witnesses, locktime, txid = parse_tx(bytes.fromhex(report["signed_tx_hex"]))
    if txid != report["txid"]:
        raise ValueError(f"txid {report['txid']} does not match the transaction ({txid})")
    prevouts = report["prevouts"]
    if len(prevouts) != len(ins):
        raise ValueError("one prevout per input expected")
    hash_prevouts = dsha256(b"".join(o for o, _, _ in ins))
    hash_sequence = dsha256(b"".join(q for _, _, q in ins))
    hash_outputs = dsha256(b"".join(outs))
    for i, ((outpoint, script_sig, sequence), witness, prevout) in enumerate(zip(ins, witnesses, prevouts)):
        if outpoint != bytes.fromhex(prevout["txid"])[::-1] + struct.pack("<I", prevout["vout"]):
            raise ValueError(f"input {i} does not spend the listed prevout")
        spk = bytes.fromhex(prevout["script_pubkey_hex"])
        if len(spk) != 22 or spk[:2] != b"\x00\x14":
            raise ValueError(f"input {i}: prevout is not P2WPKH")
        if script_sig or len(witness) != 2:
            raise ValueError(f"input {i}: P2WPKH needs an empty scriptSig and two witness items")
        sig, key = witness
        if ripemd160(hashlib.sha256(key).digest()) != spk[2:]:
            raise ValueError(f"input {i}: witness key does not match the spent program")
        if sig[-1] != 0x01:
            raise ValueError(f"input {i}: sighash type is not SIGHASH_ALL")
        r, s = parse_der(sig[:-1])
        if not (0 < r < N and 0 < s <= N // 2):
            raise ValueError(f"input {i}: signature out of range or not low-S")
        script_code = b"\x19\x76\xa9\x14" + spk[2:] + b"\x88\xac"
        preimage = (version + hash_prevouts + hash_sequence + outpoint + script_code
                    + struct.pack("<Q", prevout["value_sat"]) + sequence + hash_outputs + locktime
                    + struct.pack("<I", 1))
        z = int.from_bytes(dsha256(preimage), "big")
        w = pow(s, -1, N)
        pt = point_add(point_mul(z * w % N, G), point_mul(r * w % N, decompress(key)))
        if pt is None or pt[0] % N != r:
            raise ValueError(f"input {i}: ECDSA signature does not verify")
        if key.hex() != report["public_key_hex"]:
            raise ValueError(f"input {i}: not signed by the reported cluster key")
    return len(ins)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: verify_report.py REPORT.json")
    with open(sys.argv[1]) as fh:
        rep = json.load(fh)
    try:
        n = verify(rep)
    except (ValueError, KeyError) as e:
        sys.exit(f"FAILED: {e}")
    print(f"ok: {n} inputs of {rep['txid']} verified (BIP-143 + secp256k1 ECDSA, pure Python)")
