"""The manual's example: --filter=error --filter=delay memory 100M
error-rate=10% rdelay=1 wdelay=1. 64 reads in flight: each takes about a
second, and about one in ten fails with EIO."""
import sys
import time

import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.get_size() == 100 * 1024 * 1024
done = {"ok": 0, "err": 0}


def cb(err):
    if err.value == 0:
        done["ok"] += 1
    else:
        assert err.value == 5, err.value  # EIO
        done["err"] += 1
    return 0


t0 = time.monotonic()
for i in range(64):
    h.aio_pread(nbd.Buffer(4096), i * 4096, completion=lambda e, *a: cb(e))
deadline = time.monotonic() + 60
while h.aio_in_flight() > 0 and time.monotonic() < deadline:
    h.poll(1)
elapsed = time.monotonic() - t0
assert h.aio_in_flight() == 0, "requests did not finish in 60 s"
assert done["ok"] + done["err"] == 64, done
# P(no error in 64) = 0.9**64 ~ 0.1%; P(>= 25 errors) is negligible.
assert 1 <= done["err"] <= 24, done
# Every read was delayed by a second (16 at a time in parallel).
assert elapsed >= 1.0, elapsed
h.shutdown()
print("errors", done["err"], "elapsed %.1f" % elapsed)
print("ok")
