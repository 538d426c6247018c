"""WRITE_ZEROES with no flags, NO_HOLE, FUA, and FAST_ZERO."""
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

# Only send FAST_ZERO when advertised (the protocol forbids it otherwise;
# nbdkit 1.32.5 even aborts on it).  The caller checks can_fast_zero.
if h.can_fast_zero():
    check(nbd.CMD_FLAG_FAST_ZERO, "zero FAST_ZERO")
    check(nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE, "zero FAST_ZERO|NO_HOLE")
print("can_fast_zero=%s" % h.can_fast_zero())
nbdtest.ok()
