"""FUA writes (and zeroes) are advertised and succeed; data reads back,
also on a second connection."""
import nbd
import nbdtest

h = nbdtest.connect()
assert h.can_fua(), "can_fua is false"
data = nbdtest.pattern(6, 3 * 4096 + 17)
h.pwrite(data, 511, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 511) == data
h.zero(4096, 511 + 4096, nbd.CMD_FLAG_FUA)
want = data[:4096] + bytes(4096) + data[8192:]
assert h.pread(len(data), 511) == want
h2 = nbdtest.connect()
assert h2.pread(len(data), 511) == want, "FUA write not visible on a second connection"
nbdtest.ok()
