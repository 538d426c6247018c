"""NBD_CMD_FLUSH is advertised and succeeds; data survives it and is
visible on a second connection."""
import nbdtest

h = nbdtest.connect()
assert h.can_flush(), "can_flush is false"
data = nbdtest.pattern(2, 65536)
h.pwrite(data, 12345)
h.flush()
assert h.pread(len(data), 12345) == data
h2 = nbdtest.connect()
assert h2.pread(len(data), 12345) == data, "data not visible on a second connection"
h2.flush()
nbdtest.ok()
