#!/usr/bin/env python3
"""Builds the seed corpora in fuzz/corpus/ from the client captures in
core/testdata/captures/*.c2s (the bytes real clients sent: qemu-img,
nbdinfo, nbdsh, nbdcopy, qemu-io). Run from the repository root; the output
is checked in and replayed by core/tests/corpus_replay.rs."""
import os
import struct
import sys

CAPS = "core/testdata/captures"
OUT = "fuzz/corpus"
IHAVEOPT = 0x49484156454F5054
REQ, EXT_REQ = 0x25609513, 0x21E41C71


MAX_SEED = 16 * 1024  # longer seeds only slow libFuzzer down


def write(target, name, data):
    data = data[:MAX_SEED]
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def split(c2s):
    """(options, transmission bytes, extended?) of one capture."""
    opts, pos = [], 4
    if len(c2s) >= 4 and struct.unpack(">I", c2s[:4])[0] in (REQ, EXT_REQ):
        pos = 0  # oldstyle: no client handshake
    else:
        while pos + 16 <= len(c2s):
            magic, opt, ln = struct.unpack(">QII", c2s[pos:pos + 16])
            if magic != IHAVEOPT:
                break
            opts.append((opt, c2s[pos:pos + 16], c2s[pos + 16:pos + 16 + ln]))
            pos += 16 + ln
            if opt in (1, 7):  # EXPORT_NAME, GO
                break
    rest = c2s[pos:]
    ext = len(rest) >= 4 and struct.unpack(">I", rest[:4])[0] == EXT_REQ
    return opts, rest, ext


def main():
    for fn in sorted(os.listdir(CAPS)):
        if not fn.endswith(".c2s"):
            continue
        stem = fn[:-4]
        c2s = open(os.path.join(CAPS, fn), "rb").read()
        opts, rest, ext = split(c2s)
        oldstyle = "oldstyle" in stem
        write("handshake", stem, bytes([0x80 if oldstyle else 0]) + c2s)
        # A whole connection: handshake, then the transmission engine
        # (0x18: the same export read-only, so writes are refused; TLS stays off
        # as the mode modulo 3 is 0).
        write("session", stem, bytes([0x80 if oldstyle else 0]) + c2s)
        write("session", stem + "-read-only", bytes([0x98 if oldstyle else 0x18]) + c2s)
        if not oldstyle:
            write("handshake", stem + "-tls-on", bytes([1]) + c2s)
            write("handshake", stem + "-tls-require", bytes([2]) + c2s)
            write("handshake", stem + "-small-buffer", bytes([0x40]) + c2s)
        if rest:
            write("transmission", stem, bytes([0x06 | (1 if ext else 0)]) + rest)
        for i, (opt, hdr, payload) in enumerate(opts):
            write("roundtrip", f"{stem}-opt{i}", bytes([2]) + hdr)
            if opt in (6, 7):
                write("roundtrip", f"{stem}-info{i}", bytes([9]) + payload)
            if opt in (9, 10):
                write("roundtrip", f"{stem}-meta{i}", bytes([9]) + payload)
        hlen = 32 if ext else 28
        if len(rest) >= hlen:
            write("roundtrip", f"{stem}-req", bytes([5 if ext else 4]) + rest[:hlen])
    # Server-side messages, from the spec.
    write("roundtrip", "newstyle-greeting",
          bytes([0]) + struct.pack(">QQH", 0x4E42444D41474943, IHAVEOPT, 3))
    write("roundtrip", "oldstyle-greeting",
          bytes([1]) + struct.pack(">QQQHH", 0x4E42444D41474943, 0x0000420281861253,
                                   1 << 20, 0, 1) + bytes(124))
    write("roundtrip", "option-reply",
          bytes([3]) + struct.pack(">QIII", 0x0003E889045565A9, 7, 1, 0))
    write("roundtrip", "simple-reply", bytes([6]) + struct.pack(">IIQ", 0x67446698, 0, 1))
    write("roundtrip", "structured-chunk",
          bytes([7]) + struct.pack(">IHHQI", 0x668E33EF, 1, 1, 1, 8))
    write("roundtrip", "extended-chunk",
          bytes([7]) + struct.pack(">IHHQQQ", 0x6E8A278C, 1, 1, 1, 0, 8))
    write("roundtrip", "error-chunk", bytes([8]) + struct.pack(">IH", 22, 3) + b"bad")
    write("roundtrip", "export-name-reply", bytes([10]) + struct.pack(">QHB", 1 << 20, 1, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
