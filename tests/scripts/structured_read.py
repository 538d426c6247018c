"""Structured replies: negotiated, and reads via pread_structured deliver
exactly the requested range in chunks (data and/or holes)."""
import nbd
import nbdtest

h = nbdtest.connect()
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"

size = h.get_size()
data = nbdtest.pattern(1, 256 * 1024)
h.pwrite(data, 1024 * 1024)

for (off, ln) in [(1024 * 1024, len(data)), (1024 * 1024 - 4096, 8192),
                  (0, 4096), (size - 65536, 65536), (1024 * 1024 + 17, 1000)]:
    seen = []

    def chunk(subbuf, offset, status, err):
        seen.append((offset, bytes(subbuf), status))
        return 0

    buf = h.pread_structured(ln, off, chunk)
    assert len(buf) == ln
    # Expected contents.
    want = bytearray(ln)
    lo, hi = max(off, 1024 * 1024), min(off + ln, 1024 * 1024 + len(data))
    if lo < hi:
        want[lo - off:hi - off] = data[lo - 1024 * 1024:hi - 1024 * 1024]
    assert bytes(buf) == bytes(want), "pread_structured(%d, %d): wrong data" % (ln, off)
    # The chunks tile the request without overlap.
    covered = 0
    for (o, b, status) in sorted(seen):
        assert status in (nbd.READ_DATA, nbd.READ_HOLE), "chunk status %d" % status
        assert o == off + covered, "chunk at %d, want %d (gap or overlap)" % (o, off + covered)
        if status == nbd.READ_HOLE:
            assert b == bytes(len(b)), "hole chunk not zero"
        assert b == bytes(want[o - off:o - off + len(b)]), "chunk data wrong at %d" % o
        covered += len(b)
    assert covered == ln, "chunks cover %d of %d bytes" % (covered, ln)

    # DF (don't fragment) gives exactly one chunk when the server offers it.
    if h.can_df():
        seen.clear()
        buf = h.pread_structured(ln, off, chunk, nbd.CMD_FLAG_DF)
        assert bytes(buf) == bytes(want)
        assert len(seen) == 1, "DF read returned %d chunks" % len(seen)

nbdtest.ok()
