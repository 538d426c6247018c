#!/usr/bin/python3
"""Memory of idle NBD connections, and whether they slow a busy client.

Starts an NBD server (a command template with {sock}), opens N connections
over its Unix socket that each finish the newstyle handshake (NBD_OPT_GO on
the default export) and then stay idle, and prints the server's RSS
(VmRSS, and the smaps_rollup breakdown) before and after, with the cost per
connection. With --busy, nbdcopy writes the whole export from a file of random data
and reads it back to null, before the idle connections are opened and
again while they are held; the medians of --rounds runs are printed.

    scripts/idle-conns.py -n 1000
    scripts/idle-conns.py -n 10000 --busy
    scripts/idle-conns.py -n 1000 --server '/usr/bin/nbdkit -f -U {sock} memory 256M'

The soft limit on open files is raised to the hard limit (the server
inherits it); 10,000 connections need a hard limit above 10,000 (as root:
`ulimit -Hn 65536` first, or run as root where it is raised here).
"""

import argparse
import os
import resource
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection during the handshake")
        buf += chunk
    return buf


def handshake(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RuntimeError("not a newstyle NBD server")
    # NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
    s.sendall(struct.pack(">I", 3))
    # NBD_OPT_GO: empty export name, no information requests.
    s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, 6) + struct.pack(">IH", 0, 0))
    while True:
        magic, _opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != REPLY_MAGIC:
            raise RuntimeError("bad option reply magic")
        recv_exact(s, length)
        if rtype == NBD_REP_ACK:
            return s
        if rtype & 0x80000000:
            raise RuntimeError("NBD_OPT_GO refused (reply type %#x)" % rtype)


def rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rollup(pid):
    out = {}
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            p = line.split()
            if len(p) >= 2 and p[0].endswith(":") and p[1].isdigit():
                out[p[0][:-1]] = int(p[1])
    except OSError:
        pass
    return out


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def nbdcopy(src, dst):
    t = time.monotonic()
    subprocess.run(["nbdcopy", src, dst], check=True)
    return time.monotonic() - t


def busy(uri, data, rounds):
    """Median seconds, over `rounds` runs, to write `data` (a file as large
    as the export) to the export, and to read the export back to null."""
    w = [nbdcopy(data, uri) for _ in range(rounds)]
    r = [nbdcopy(uri, "null:") for _ in range(rounds)]
    return statistics.median_high(w), statistics.median_high(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "target", "release", "nbdkit")
    ap.add_argument("-n", type=int, default=1000, help="idle connections (default 1000)")
    ap.add_argument(
        "--server",
        default=shlex.quote(os.path.normpath(default)) + " -f -U {sock} memory 256M",
        help="server command template with {sock} (default: target/release/nbdkit memory 256M)",
    )
    ap.add_argument(
        "--busy",
        action="store_true",
        help="time nbdcopy writing the whole export and reading it back, without and with the idle connections",
    )
    ap.add_argument("--rounds", type=int, default=5, help="busy runs each time; the median is printed (default 5)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before measuring")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            sys.exit("idle-conns: need %d open files, the hard limit is %d (raise it: ulimit -Hn)" % (want, hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want) if hard == resource.RLIM_INFINITY else hard, hard))

    d = tempfile.mkdtemp(prefix="idle-conns-")
    sock = os.path.join(d, "sock")
    cmd = [a.replace("{sock}", sock) for a in shlex.split(args.server)]
    srv = subprocess.Popen(cmd)
    conns = []
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or srv.poll() is not None:
                sys.exit("idle-conns: the server did not start")
            time.sleep(0.02)
        uri = "nbd+unix:///?socket=" + sock
        data = None
        busy_alone = None
        if args.busy:
            size = int(subprocess.run(["nbdinfo", "--size", uri], check=True, capture_output=True, text=True).stdout)
            data = os.path.join(d, "data")
            with open(data, "wb") as f:
                for _ in range(0, size, 1 << 20):
                    f.write(os.urandom(1 << 20))
            # A first write fills the export, so that every timed write overwrites.
            nbdcopy(data, uri)
            busy_alone = busy(uri, data, args.rounds)
        # One handshake, then the baseline.
        handshake(sock).close()
        time.sleep(args.settle)
        before, before_roll = rss_kb(srv.pid), rollup(srv.pid)
        t = time.monotonic()
        for i in range(args.n):
            conns.append(handshake(sock))
        opened = time.monotonic() - t
        time.sleep(args.settle)
        after, after_roll = rss_kb(srv.pid), rollup(srv.pid)
        print("server: %s" % " ".join(cmd))
        print("connections: %d opened in %.2f s, server threads %d" % (args.n, opened, threads(srv.pid)))
        print("RSS after one handshake: %7d kB (%.1f MiB)" % (before, before / 1024))
        print("RSS with %d idle:       %7d kB (%.1f MiB)" % (args.n, after, after / 1024))
        print("per idle connection:     %7.2f kB" % ((after - before) / max(args.n, 1)))
        for k in ("Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"):
            if k in after_roll:
                print("  %-14s %7d -> %7d kB" % (k, before_roll.get(k, 0), after_roll[k]))
        if args.busy:
            busy_held = busy(uri, data, args.rounds)
            for what, a, b in zip(("write (file -> nbd)", "read (nbd -> null)"), busy_alone, busy_held):
                print(
                    "nbdcopy %s: %.3f s alone, %.3f s with %d idle connections (ratio %.2f, medians of %d)"
                    % (what, a, b, args.n, b / a, args.rounds)
                )
            # The idle connections are all still served.
            for c in conns[:: max(1, args.n // 10)]:
                c.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512))
                hdr = recv_exact(c, 16)
                if struct.unpack(">I", hdr[:4])[0] != 0x67446698 or struct.unpack(">I", hdr[4:8])[0] != 0:
                    sys.exit("idle-conns: an idle connection could not read after the busy client")
                recv_exact(c, 512)
            print("idle connections still answer a read: yes")
    finally:
        for c in conns:
            c.close()
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
        for f in ("sock", "data"):
            try:
                os.unlink(os.path.join(d, f))
            except OSError:
                pass
        os.rmdir(d)


if __name__ == "__main__":
    main()
