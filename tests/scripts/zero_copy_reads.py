"""READ replies sent without copying (sendfile for the file plugin, spliced
pages for the memory plugin) carry the right bytes: simple and structured
replies, offsets and lengths not aligned to pages, reads spanning pages and
holes, zeroed ranges; and reads racing writes to the same range see, for
each byte (for each 32 KiB page with `page` as argv[2]), the old or the new
data, never anything else."""
import random
import sys
import threading

import nbd
import nbdtest

uri = sys.argv[1]
granule = 32 * 1024 if sys.argv[2] == "page" else 1
MiB = 1 << 20


def handle(structured):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    return h


h = handle(True)
size = h.get_size()
assert size >= 16 * MiB

want = bytearray(h.pread(size, 0)) if size <= 64 * MiB else None
# Data from an unaligned offset, written in unaligned pieces.
base = MiB + 5
data = nbdtest.pattern(7, 3 * MiB)
pos = 0
while pos < len(data):
    n = min(len(data) - pos, 200_001)
    h.pwrite(data[pos:pos + n], base + pos)
    pos += n
want[base:base + len(data)] = data
# Zeroed ranges: whole pages and parts of pages.
for off, ln in [(2 * MiB, 65536), (2 * MiB + 100_000, 1000), (3 * MiB + 32768 - 10, 20)]:
    h.zero(ln, off)
    want[off:off + ln] = bytes(ln)


def check(hh, off, ln):
    got = hh.pread(ln, off)
    if got != bytes(want[off:off + ln]):
        bad = next(i for i in range(ln) if got[i] != want[off + i])
        raise AssertionError("pread(%d, %d): first wrong byte at %d" % (ln, off, off + bad))


cases = [(0, 65536), (base - 1000, 70_000), (base, 32768), (base + 1, 32767 * 3),
         (MiB + 32768 - 7, 65536 + 14), (base, 3 * MiB), (4 * MiB + 5 - 100_000, 200_000),
         (size - 262_144, 262_144), (2 * MiB + 12_345, 4096), (2 * MiB - 1, 65538),
         (0, 8 * MiB), (MiB, 32 * 1024 * 1024 if size >= 32 * MiB else 4 * MiB)]
for structured in (True, False):
    hh = handle(structured)
    for off, ln in cases:
        check(hh, off, ln)
    rnd = random.Random(1)
    for _ in range(300):
        ln = rnd.randint(1, 600_000)
        off = rnd.randint(0, size - ln)
        check(hh, off, ln)
    # Many reads in flight at once, answered out of order.
    bufs = []
    for i in range(64):
        ln = rnd.randint(1, 300_000)
        off = rnd.randint(0, size - ln)
        buf = nbd.Buffer(ln)
        bufs.append((off, ln, buf, hh.aio_pread(buf, off)))
    while hh.aio_in_flight() > 0:
        hh.poll(-1)
    for off, ln, buf, _ in bufs:
        assert buf.to_bytearray() == want[off:off + ln], "aio pread(%d, %d)" % (ln, off)
    hh.shutdown()

# Races: a writer rewrites [R, R + 1 MiB) with pattern A or B (which
# differ in every byte) while readers read it, some slowly.
R = 8 * MiB
A = nbdtest.pattern(11, MiB)
B = bytes(b ^ 0xFF for b in A)
h.pwrite(A, R)
stop = threading.Event()
errors = []


def writer():
    w = handle(True)
    i = 0
    while not stop.is_set():
        w.pwrite(B if i % 2 == 0 else A, R)
        i += 1
    w.shutdown()


def old_or_new(got, off):
    o = off - R
    if granule == 1:
        # B is A with every bit flipped: each byte read XOR A's must be
        # 0x00 (old) or 0xff (new).
        a = A[o:o + len(got)]
        x = (int.from_bytes(got, "big") ^ int.from_bytes(a, "big")).to_bytes(len(got), "big")
        left = x.translate(None, b"\x00\xff")
        if left:
            return "garbage at %d" % (off + x.index(left[0]))
        return None
    # Pieces cut at page boundaries.
    g = 0
    while g < len(got):
        end = min(len(got), g + granule - (off + g) % granule)
        piece = got[g:end]
        p = o + g
        if piece != A[p:p + len(piece)] and piece != B[p:p + len(piece)]:
            return "page at %d is neither old nor new" % (off + g)
        g = end
    return None


def reader(structured, seed):
    r = handle(structured)
    rnd = random.Random(seed)
    for n in range(60):
        ln = rnd.randint(1, MiB)
        off = R + rnd.randint(0, MiB - ln)
        if n % 3 == 0:
            # Issued, then left unread in the socket for a while.
            buf = nbd.Buffer(ln)
            c = r.aio_pread(buf, off)
            stop.wait(0.01)
            while not r.aio_command_completed(c):
                r.poll(-1)
            got = bytes(buf.to_bytearray())
        else:
            got = r.pread(ln, off)
        e = old_or_new(got, off)
        if e:
            errors.append("read(%d, %d): %s" % (ln, off, e))
    r.shutdown()


wt = threading.Thread(target=writer)
rts = [threading.Thread(target=reader, args=(s % 2 == 0, s)) for s in range(3)]
wt.start()
for t in rts:
    t.start()
for t in rts:
    t.join()
stop.set()
wt.join()
assert not errors, errors[:5]
print("ok")
