"""64 requests in flight at once (aio_pwrite, then aio_pread, then a mix);
every reply is checked."""
import nbd
import nbdtest

N = 64
BS = 65536
h = nbdtest.connect()
assert h.get_size() >= 2 * N * BS

blocks = [nbdtest.pattern(100 + i, BS) for i in range(N)]

# 64 writes in flight.
cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(blocks[i]), i * BS) for i in range(N)]
peak = h.aio_in_flight()
nbdtest.wait_all(h, cookies, "aio_pwrite")

# 64 reads in flight, each verified.
bufs = [nbd.Buffer(BS) for _ in range(N)]
# Reverse order so replies may come back in any order.
cookies = [h.aio_pread(bufs[i], i * BS) for i in reversed(range(N))]
peak = max(peak, h.aio_in_flight())
nbdtest.wait_all(h, cookies, "aio_pread")
for i in range(N):
    got = bytes(bufs[i].to_bytearray())
    assert got == blocks[i], "aio_pread block %d: wrong data" % i

# A mix: reads of the first half while writing the second half.
cookies = []
rbufs = []
for i in range(N):
    if i % 2 == 0:
        b = nbd.Buffer(BS)
        rbufs.append((i // 2, b))
        cookies.append(h.aio_pread(b, (i // 2) * BS))
    else:
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(blocks[i]), (N + i) * BS))
peak = max(peak, h.aio_in_flight())
nbdtest.wait_all(h, cookies, "mixed")
for (j, b) in rbufs:
    assert bytes(b.to_bytearray()) == blocks[j], "mixed read block %d wrong" % j
for i in range(1, N, 2):
    assert h.pread(BS, (N + i) * BS) == blocks[i], "mixed write block %d wrong" % i

print("peak in flight: %d" % peak)
assert peak >= N // 2, "requests were not in flight together (peak %d)" % peak
nbdtest.ok()
