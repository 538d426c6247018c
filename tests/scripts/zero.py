"""WRITE_ZEROES with no flags, NO_HOLE, FUA, and FAST_ZERO."""
import errno
import nbd
import nbdtest

h = nbdtest.connect()
assert h.can_zero(), "can_zero is false"
data = nbdtest.pattern(4, 4 * 65536)


def check(flags, what):
    h.pwrite(data, 0)
    h.zero(100000, 5000, flags)
    got = h.pread(len(data), 0)
    assert got[:5000] == data[:5000], "%s: bytes before the range changed" % what
    assert got[5000:105000] == bytes(100000), "%s: range not zeroed" % what
    assert got[105000:] == data[105000:], "%s: bytes after the range changed" % what


check(0, "zero")
check(nbd.CMD_FLAG_NO_HOLE, "zero NO_HOLE")
if h.can_fua():
    check(nbd.CMD_FLAG_FUA, "zero FUA")

if h.can_fast_zero():
    check(nbd.CMD_FLAG_FAST_ZERO, "zero FAST_ZERO")
else:
    # The server did not advertise fast zero: a fast-zero request must fail
    # quickly with ENOTSUP (not libnbd's client-side refusal: relax strict).
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_FLAGS & ~nbd.STRICT_COMMANDS)
    h.pwrite(data, 0)
    nbdtest.expect_errno(errno.ENOTSUP, h.zero, 100000, 5000, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(len(data), 0) == data, "failed fast zero changed data"
print("can_fast_zero=%s" % h.can_fast_zero())
nbdtest.ok()
