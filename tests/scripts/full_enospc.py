"""full plugin: reads are zeroes, writes (and zeroes) fail with ENOSPC."""
import errno
import nbdtest

h = nbdtest.connect()
assert not h.is_read_only()
assert h.pread(65536, 0) == bytes(65536)
nbdtest.expect_errno(errno.ENOSPC, h.pwrite, b"x" * 512, 0)
nbdtest.expect_errno(errno.ENOSPC, h.pwrite, b"x" * 65536, 65536)
# The connection survives and reads still work.
assert h.pread(512, 0) == bytes(512)
nbdtest.ok()
