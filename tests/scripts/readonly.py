"""A read-only export (-r) advertises read-only and refuses writes, zeroes
and trims with EPERM (checked on the wire: libnbd's client-side checks
are relaxed), while reads still work."""
import errno
import nbd
import nbdtest

h = nbdtest.connect()
assert h.is_read_only(), "export is not read-only"
assert h.pread(4096, 0) == bytes(4096)
h.set_strict_mode(0)
nbdtest.expect_errno(errno.EPERM, h.pwrite, b"x" * 512, 0)
nbdtest.expect_errno(errno.EPERM, h.zero, 512, 0)
nbdtest.expect_errno(errno.EPERM, h.trim, 512, 0)
# The connection is still usable.
assert h.pread(512, 0) == bytes(512)
nbdtest.ok()
