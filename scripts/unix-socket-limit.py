#!/usr/bin/python3
"""The throughput limit of a plain Unix stream socket on this machine.

Two processes (as an NBD server and its client are): one sends CHUNK-byte
buffers for SECONDS, the other receives into a preallocated buffer; the
receiver's bytes per second is the socket's limit for that send size. The
send buffer is raised to 4 MiB as nbdkit-rs does for its client sockets.
Issue 14 compares seq-read (nbdcopy from the server to null:) with this.

Usage: scripts/unix-socket-limit.py [--chunk BYTES] [--seconds S] [--rounds N]
"""
import argparse
import os
import socket
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=4 << 20)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    results = []
    for _ in range(max(1, min(a.rounds, 20))):
        tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        pid = os.fork()
        if pid == 0:
            rx.close()
            data = b"\x5a" * a.chunk
            end = time.monotonic() + a.seconds
            try:
                while time.monotonic() < end:
                    tx.sendall(data)
            finally:
                tx.close()
                os._exit(0)
        tx.close()
        buf = bytearray(a.chunk)
        view = memoryview(buf)
        total = 0
        start = time.monotonic()
        while True:
            n = rx.recv_into(view)
            if n == 0:
                break
            total += n
        elapsed = time.monotonic() - start
        rx.close()
        os.waitpid(pid, 0)
        results.append(total / elapsed / (1 << 20))
    results.sort()
    print("unix socket, %d-byte sends: %s MiB/s (median %.0f)"
          % (a.chunk, " ".join("%.0f" % r for r in results), results[len(results) // 2]))


if __name__ == "__main__":
    main()
