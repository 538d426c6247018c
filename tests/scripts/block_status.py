"""base:allocation on a sparse memory disk: written ranges are data,
untouched ranges are hole+zero, trimmed ranges become holes again."""
import nbd
import nbdtest

MiB = 1024 * 1024
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(__import__("sys").argv[1])
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated"
size = h.get_size()
assert size >= 64 * MiB, size

HZ = nbd.STATE_HOLE | nbd.STATE_ZERO

# Fresh disk: everything is a hole that reads as zero.
for (o, ln, f) in nbdtest.extents(h, 0, size):
    assert f & HZ == HZ, "fresh disk: extent %d+%d has flags %d" % (o, ln, f)

writes = [(1 * MiB, 65536), (8 * MiB, 131072), (40 * MiB, 1 * MiB)]
for (i, (o, ln)) in enumerate(writes):
    h.pwrite(nbdtest.pattern(10 + i, ln), o)

exts = nbdtest.extents(h, 0, size)
for (o, ln) in writes:
    for p in (o, o + ln // 2, o + ln - 1):
        f = nbdtest.flags_at(exts, p)
        assert f & nbd.STATE_ZERO == 0, "written byte %d reported as zero (flags %d)" % (p, f)
        assert f & nbd.STATE_HOLE == 0, "written byte %d reported as hole (flags %d)" % (p, f)
# Far from any write (different 1 MiB blocks): holes.
for p in (0, 4 * MiB, 20 * MiB, size - 1):
    f = nbdtest.flags_at(exts, p)
    assert f & HZ == HZ, "unwritten byte %d has flags %d" % (p, f)

# REQ_ONE: a single extent.
got = []
h.block_status(size, 0, lambda m, off, e, err: got.append(list(e)) or 0,
               nbd.CMD_FLAG_REQ_ONE)
assert len(got) == 1 and len(got[0]) == 2, "REQ_ONE gave %r" % (got,)

# Trim the 1 MiB write: it reads as zeroes and is no longer data.
h.trim(1 * MiB, 40 * MiB)
assert h.pread(1 * MiB, 40 * MiB) == bytes(1 * MiB)
exts = nbdtest.extents(h, 40 * MiB, 1 * MiB)
for (o, ln, f) in exts:
    assert f & nbd.STATE_ZERO, "trimmed extent %d+%d has flags %d" % (o, ln, f)

nbdtest.ok()
