"""Client workloads whose effect on the plugin (the calls a logging
script plugin sees) is compared between two servers.

usage: dropin_calls.py WORKLOAD SOCKET
Failures are injected through files in $STATE (see the plugin in
tests/tests/dropin_filters.rs): "fail" (data calls to fail) and
"failopen" (opens to fail).
"""
import os
import sys

import nbd

workload, sock = sys.argv[1], sys.argv[2]
state = os.environ.get("STATE", "")


def inject(fail, failopen=0):
    with open(os.path.join(state, "fail"), "w") as f:
        f.write(str(fail))
    with open(os.path.join(state, "failopen"), "w") as f:
        f.write(str(failopen))


def connect():
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_unix(sock)
    return h


def t(name, f, *a):
    try:
        f(*a)
        print(name, "ok")
    except nbd.Error as e:
        print(name, "error", e.errnum)


FUA = nbd.CMD_FLAG_FUA

if workload == "multi-conn":
    a, b = connect(), connect()
    print("multi-conn", a.can_multi_conn(), "fua", a.can_fua())
    t("a write", a.pwrite, b"a" * 512, 0)
    t("b flush", b.flush)
    t("b flush", b.flush)
    t("a write fua", a.pwrite, b"b" * 512, 512, FUA)
    t("b write", b.pwrite, b"c" * 512, 1024)
    t("a zero", a.zero, 512, 2048)
    t("a flush", a.flush)
    t("a trim", a.trim, 512, 4096)
    t("a read", a.pread, 512, 0)
    t("b flush", b.flush)
    t("b write fua", b.pwrite, b"d" * 512, 1024, FUA)
    t("a zero fua", a.zero, 512, 2048, FUA)
    t("b cache", b.cache, 512, 0)
    t("a flush", a.flush)
    a.shutdown()
    t("b flush", b.flush)
    b.shutdown()
elif workload == "readahead":
    h = connect()
    offsets = (list(range(0, 65536, 4096)) + [500000, 504096, 100]
               + [1048576 - 4096, 1048576 - 100]
               + list(range(200000, 400000, 16384)))
    for off in offsets:
        h.pread(min(4096, 1048576 - off), off)
    h.shutdown()
elif workload == "retry":
    h = connect()
    ops = (("pread", h.pread, 512, 4096),
           ("pwrite fua", h.pwrite, b"x" * 512, 4096, FUA),
           ("zero fast", h.zero, 512, 4096, nbd.CMD_FLAG_FAST_ZERO),
           ("trim", h.trim, 512, 4096),
           ("flush", h.flush),
           ("cache", h.cache, 512, 4096),
           ("extents", h.block_status, 512, 4096, lambda *x: 0))
    for name, f, *a in ops:
        inject(1)
        t(name, f, *a)
    inject(3)
    t("pread, three failures", h.pread, 512, 4096)
    inject(0)
    h.shutdown()
elif workload == "retry-size":
    h = connect()
    for name, f, *a in (("pread", h.pread, 512, 4096),
                        ("pwrite", h.pwrite, b"x" * 512, 4096),
                        ("zero", h.zero, 512, 4096),
                        ("extents", h.block_status, 512, 4096, lambda *x: 0)):
        inject(1)
        t(name, f, *a)
    inject(0)
    t("pread after", h.pread, 512, 4096)
    h.shutdown()
elif workload == "retry-reopen":
    h = connect()
    inject(1, 1)
    t("pread, one reopen fails", h.pread, 512, 4096)
    inject(1, 5)
    t("pread, every reopen fails", h.pread, 512, 4096)
    inject(0, 0)
    t("pread after", h.pread, 512, 4096)
    inject(1, 0)
    t("pwrite", h.pwrite, b"x" * 512, 4096)
    inject(0, 0)
    t("pwrite after", h.pwrite, b"x" * 512, 4096)
    h.shutdown()
elif workload == "retry-request":
    for failopen in (0, 1, 3):
        inject(0, failopen)
        try:
            h = connect()
            print("connect ok")
        except nbd.Error as e:
            print("connect error", e.errnum)
            continue
        ops = (("zero fast", h.zero, 512, 0, nbd.CMD_FLAG_FAST_ZERO),
               ("zero fua", h.zero, 512, 0, FUA),
               ("pwrite", h.pwrite, b"x" * 512, 0),
               ("extents", h.block_status, 512, 0, lambda *x: 0))
        for n in (1, 3) if failopen == 0 else (1,):
            for name, f, *a in ops if failopen == 0 else ops[2:3]:
                inject(n)
                t(name, f, *a)
        inject(0)
        h.shutdown()
else:
    sys.exit("unknown workload " + workload)
