"""Trim then read zeroes (memory plugin: trimmed ranges read back as 0)."""
import nbd
import nbdtest

h = nbdtest.connect()
assert h.can_trim(), "can_trim is false"
data = nbdtest.pattern(3, 3 * 65536)
h.pwrite(data, 0)
h.trim(65536, 65536)
got = h.pread(len(data), 0)
assert got[:65536] == data[:65536], "data before the trimmed range changed"
assert got[65536:131072] == bytes(65536), "trimmed range does not read as zeroes"
assert got[131072:] == data[131072:], "data after the trimmed range changed"
# Unaligned trim: the trimmed bytes read as zero, neighbours unchanged.
h.pwrite(data, 0)
h.trim(1000, 70000)
got = h.pread(len(data), 0)
assert got[:70000] == data[:70000]
assert got[70000:71000] == bytes(1000), "unaligned trim did not zero"
assert got[71000:] == data[71000:]
# Trim with FUA.
if h.can_fua():
    h.trim(4096, 0, nbd.CMD_FLAG_FUA)
    assert h.pread(4096, 0) == bytes(4096)
nbdtest.ok()
