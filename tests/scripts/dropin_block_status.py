"""Print block status replies for a fixed set of requests (odd offsets and
lengths, with and without REQ_ONE), one line each, so that two servers can
be compared line by line.

usage: dropin_block_status.py SOCKET [EXPORT [write]]
With "write", first write, trim and zero a few ranges.
"""
import random
import sys

import nbd

sock = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else ""
h = nbd.NBD()
h.add_meta_context("base:allocation")
# Let the server see unaligned requests (libnbd would refuse them itself).
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
h.set_export_name(name)
h.connect_unix(sock)
size = h.get_size()
print("size", size, h.can_meta_context("base:allocation"))
if len(sys.argv) > 3 and sys.argv[3] == "write":
    for op in (lambda: h.pwrite(b"\x55" * 5000, 130000),
               lambda: h.pwrite(b"\x66" * 100, 300000),
               lambda: h.trim(65536, 393216),
               lambda: h.zero(4096, 700000)):
        try:
            op()
        except nbd.Error as e:
            print("write error", e.errnum)
r = random.Random(5)
cases = [(0, size), (1, min(100, size - 1)), (size - 1, 1)]
for i in range(12):
    off = r.randrange(size)
    cases.append((off, r.randrange(1, size - off + 1)))
for i in range(6):
    off = r.randrange(size)
    cases.append((off, r.randrange(1, min(5000, size - off) + 1)))
for off, cnt in cases:
    for fl in (0, nbd.CMD_FLAG_REQ_ONE):
        out = []
        try:
            h.block_status(cnt, off, lambda m, o, e, err: out.append(e) or 0, fl)
            print(off, cnt, fl, out)
        except nbd.Error as e:
            print(off, cnt, fl, "error", e.errnum)
h.shutdown()
