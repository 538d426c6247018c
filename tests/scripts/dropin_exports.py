"""Print what a client learns about exports: the NBD_OPT_LIST reply, then
NBD_OPT_INFO and NBD_OPT_GO for each name, one line each, so that two
servers can be compared line by line.

usage: dropin_exports.py SOCKET NAME...   ($PSK: a PSK file, user alice)
"""
import os
import sys

import nbd


def tls(h):
    if os.environ.get("PSK"):
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(os.environ["PSK"])
        h.set_tls_username("alice")


def describe(h):
    try:
        canon = h.get_canonical_export_name()
    except nbd.Error:
        canon = None
    try:
        desc = h.get_export_description()
    except nbd.Error:
        desc = None
    flags = [f for f in ("can_cache", "can_flush", "can_fua", "can_multi_conn",
                         "can_trim", "can_zero", "is_read_only")
             if getattr(h, f)()]
    return "size=%d canon=%r desc=%r %s" % (h.get_size(), canon, desc,
                                          " ".join(flags))


sock = sys.argv[1]
names = sys.argv[2:]
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
tls(h)
h.connect_unix(sock)
listed = []
try:
    h.opt_list(lambda n, d: listed.append((n, d)) or 0)
    print("list:", listed)
except nbd.Error as e:
    print("list: error", e.errnum)
for n in names:
    h.set_export_name(n)
    try:
        h.opt_info()
        print("info %r: %s" % (n, describe(h)))
    except nbd.Error as e:
        print("info %r: error %s" % (n, e.errnum))
h.opt_abort()
for n in names:
    g = nbd.NBD()
    g.set_full_info(True)
    g.set_export_name(n)
    tls(g)
    try:
        g.connect_unix(sock)
        print("go %r: %s" % (n, describe(g)))
        g.shutdown()
    except nbd.Error as e:
        print("go %r: error %s" % (n, e.errnum))
