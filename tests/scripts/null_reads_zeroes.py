"""null plugin: reads are zeroes, writes are accepted and discarded."""
import nbdtest

h = nbdtest.connect()
size = h.get_size()
assert h.pread(65536, 0) == bytes(65536)
assert h.pread(4096, size - 4096) == bytes(4096)
if not h.is_read_only():
    h.pwrite(b"\xff" * 4096, 0)
    assert h.pread(4096, 0) == bytes(4096), "null plugin kept written data"
nbdtest.ok()
