"""Shared helpers for the Python test scripts (run by the Rust tests).

Each script takes the NBD URI of a freshly started server as argv[1],
checks one behaviour with libnbd (python3-libnbd, /usr/bin/python3 only),
prints "ok" and exits 0, or raises (non-zero exit, traceback on stderr).
"""

import errno
import random
import sys
import time

import nbd

TIMEOUT = 60.0  # seconds for any polling loop


def connect(uri=None):
    """Connect to argv[1] (or uri) and return the handle."""
    h = nbd.NBD()
    h.connect_uri(uri if uri is not None else sys.argv[1])
    return h


def pattern(seed, length):
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(length)


def expect_errno(want, fn, *args, **kw):
    """Call fn and check that it fails with nbd.Error of errno `want`."""
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        assert e.errnum == want, "%s: got errno %s (%s), want %s (%s)" % (
            fn.__name__, e.errnum, e, want, errno.errorcode.get(want))
        return e
    raise AssertionError("%s%r succeeded, want errno %s" % (
        fn.__name__, args, errno.errorcode.get(want)))


def extents(h, offset, length, context=nbd.CONTEXT_BASE_ALLOCATION):
    """Full extent list [(offset, length, flags)] for [offset, offset+length),
    by repeated block status calls (bounded)."""
    out = []
    pos = offset
    end = offset + length
    for _ in range(100000):
        if pos >= end:
            break
        got = []

        def cb(metacontext, off, entries, err):
            if metacontext == context:
                got.append((off, list(entries)))
            return 0

        h.block_status(end - pos, pos, cb)
        assert got, "no %s extents at offset %d" % (context, pos)
        off, entries = got[0]
        assert off == pos, "extent callback offset %d, want %d" % (off, pos)
        assert entries and len(entries) % 2 == 0, entries
        progressed = False
        for i in range(0, len(entries), 2):
            ln, flags = entries[i], entries[i + 1]
            assert ln > 0, "zero-length extent at %d" % pos
            ln = min(ln, end - pos)
            out.append((pos, ln, flags))
            pos += ln
            progressed = True
            if pos >= end:
                break
        assert progressed
    assert pos >= end, "block status did not cover the range"
    return out


def flags_at(exts, offset):
    for (o, ln, f) in exts:
        if o <= offset < o + ln:
            return f
    raise AssertionError("offset %d not covered by extents" % offset)


def wait_all(h, cookies, what):
    """Poll until every cookie completed; raise if any failed."""
    pending = set(cookies)
    deadline = time.monotonic() + TIMEOUT
    for _ in range(1000000):
        for c in list(pending):
            if h.aio_command_completed(c):  # raises nbd.Error on failure
                pending.discard(c)
        if not pending:
            return
        assert time.monotonic() < deadline, "%s: %d requests still pending after %ss" % (
            what, len(pending), TIMEOUT)
        h.poll(1000)
    raise AssertionError("%s: poll loop exhausted" % what)


def ok():
    print("ok")
    sys.exit(0)
