#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ from protocol.md's hex examples.

Every ```hex device / ```hex provider block becomes a decoder seed; the client-to-gateway
frames (types whose section 4 heading says C→G) become session seeds, in document order;
PROXY headers are written by hand below. Rerun after protocol.md changes:

    python3 fuzz/seed.py
"""

import hashlib
import pathlib
import re
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
DOC = FUZZ.parent / "protocol.md"

# protocol.md §8's worked example: the AUTH in §12.2 is the proof for this nonce.
NONCE = bytes(range(0x80, 0xA0))


def hex_blocks(text):
    """(port, first line number, bytes) for every ```hex device|provider block."""
    out, cur = [], None
    for i, line in enumerate(text.splitlines(), 1):
        t = line.strip()
        if cur is None:
            m = re.fullmatch(r"```hex (device|provider)", t)
            if m:
                cur = (m.group(1), i + 1, bytearray())
        elif t == "```":
            out.append((cur[0], cur[1], bytes(cur[2])))
            cur = None
        else:
            cur[2].extend(bytes.fromhex(line.split("#", 1)[0]))
    return out


def client_types(text):
    """Frame types whose catalogue heading reads `#### 0xNN NAME (C→G...`."""
    return {int(m.group(1), 16) for m in re.finditer(r"^#### 0x([0-9a-fA-F]{2}) \S+ \(C→G", text, re.M)}


def frames(data):
    """Splits a block into frames: type u8, varint length (7 bits a byte, low group first)."""
    out, i = [], 0
    while i < len(data):
        start, i, length, shift = i, i + 1, 0, 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b & 0x80 == 0:
                break
        i += length
        out.append(data[start:i])
    return out


def v2(ver_cmd, fam, block):
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([ver_cmd, fam]) + struct.pack(">H", len(block)) + block


def tlv(t, value):
    return bytes([t]) + struct.pack(">H", len(value)) + value


def proxy_seeds():
    v4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 50123, 7700)
    v6 = bytes(15) + b"\x01" + bytes.fromhex("20010db8000000000000000000000001") + struct.pack(">HH", 1, 7700)
    hello = bytes.fromhex("0125010000") + b"\x10com.example.chat\x10" + bytes(range(16))
    return {
        "v1-tcp4": b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 7700\r\n" + hello,
        "v1-tcp6": b"PROXY TCP6 2001:db8::17 ::ffff:198.51.100.1 65535 0\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v1-unknown-long": b"PROXY UNKNOWN " + b" ".join([b"ffff:" * 7 + b"ffff"] * 2) + b" 65535 65535\r\n",
        "v2-tcp4": v2(0x21, 0x11, v4) + hello,
        "v2-tcp4-tlvs": v2(0x21, 0x11, v4 + tlv(0x04, bytes(5)) + tlv(0xEA, b"\x01vpce-0123456789abcdef")),
        "v2-tcp6-tlvs": v2(0x21, 0x21, v6 + tlv(0x01, b"h2") + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))),
        "v2-local": v2(0x20, 0x00, b""),
        "v2-unix": v2(0x21, 0x31, bytes(216)),
        "v2-udp4": v2(0x21, 0x12, v4),
    }


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def name(data):
    """Stable across edits of protocol.md that move a block: first frame type and a content hash."""
    return f"doc-{data[0]:02x}-{hashlib.sha1(data).hexdigest()[:10]}" if data else "doc-empty"


def main():
    text = DOC.read_text(encoding="utf-8")
    blocks = hex_blocks(text)
    clients = client_types(text)
    for d in (FUZZ / "corpus").glob("*/doc-*"):
        d.unlink()  # stale seeds from an older protocol.md
    session = {"device": [], "provider": []}
    for port, _, data in blocks:
        write(f"{port}_decoder", name(data), data)
        session[port].append([f for f in frames(data) if f[0] in clients])
    for port in ("device", "provider"):
        write(f"{port}_decoder", "doc-all", b"".join(d for p, _, d in blocks if p == port))
    # The handshake first (HELLO; AUTH_HELLO then AUTH with §8's proof), then one block's
    # client frames, so each seed exercises its frames in the state where they are legal.
    login = {"device": [0x01], "provider": [0x21, 0x23]}
    prefix = {"device": b"", "provider": NONCE}
    for port in ("device", "provider"):
        flat = [f for fs in session[port] for f in fs]
        hs = b"".join(next(f for f in flat if f[0] == t) for t in login[port])
        rest = b"".join(f for f in flat if f[0] not in login[port])
        write(f"{port}_session", "doc-client-frames", prefix[port] + hs + rest)
        for fs in session[port]:
            body = b"".join(f for f in fs if f[0] not in login[port])
            if body:
                write(f"{port}_session", name(body), prefix[port] + hs + body)
    write("provider_session", "doc-client-frames-wrong-nonce", bytes(32) + b"".join(f for fs in session["provider"] for f in fs))
    for n, data in proxy_seeds().items():
        write("proxy_header", n, data)
    count = sum(1 for _ in (FUZZ / "corpus").glob("*/*"))
    print(f"{len(blocks)} hex blocks, client types {sorted(hex(t) for t in clients)}, {count} seed files")


if __name__ == "__main__":
    main()
