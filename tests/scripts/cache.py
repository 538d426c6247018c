"""NBD_CMD_CACHE is advertised and succeeds without changing data."""
import nbdtest

h = nbdtest.connect()
assert h.can_cache(), "can_cache is false"
data = nbdtest.pattern(5, 65536)
h.pwrite(data, 65536)
h.cache(1024 * 1024, 0)
h.cache(1, 65536 + 7)
assert h.pread(len(data), 65536) == data
assert h.pread(65536, 0) == bytes(65536)
nbdtest.ok()
