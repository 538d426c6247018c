#!/usr/bin/env python3
# A BitTorrent seeder and tracker on loopback, for the torrent plugin's
# tests: makes a .torrent of CONTENT_DIR (announcing to its own HTTP
# tracker, which always answers with the seeder's address), seeds it with
# libtorrent (DHT, LSD, UPnP and NAT-PMP off), prints the magnet link
# (with the seeder as x.pe) and the tracker URL, and runs until stdin is
# closed.
#
# usage: seeder.py CONTENT_DIR TORRENT_OUT

import http.server
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse

import libtorrent as lt

content, torrent_out = sys.argv[1], sys.argv[2]
seed_port = 0


class Tracker(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        # Everyone but the seeder itself learns the seeder's address.
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if query.get("port") == [str(seed_port)]:
            peers = b""
        else:
            peers = socket.inet_aton("127.0.0.1") + struct.pack(">H", seed_port)
        body = b"d8:intervali5e5:peers%d:%se" % (len(peers), peers)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


tracker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tracker)
tracker_url = "http://127.0.0.1:%d/announce" % tracker.server_address[1]
threading.Thread(target=tracker.serve_forever, daemon=True).start()

parent = os.path.dirname(os.path.abspath(content))
fs = lt.file_storage()
lt.add_files(fs, os.path.abspath(content))
ct = lt.create_torrent(fs, 16384)
ct.add_tracker(tracker_url)
lt.set_piece_hashes(ct, parent)
with open(torrent_out, "wb") as f:
    f.write(lt.bencode(ct.generate()))
ti = lt.torrent_info(torrent_out)

ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "outgoing_interfaces": "127.0.0.1",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "allow_multiple_connections_per_ip": True,
    # TCP only: a uTP connection on loopback is sometimes reset, and the
    # peer then retries only a minute later.
    "enable_incoming_utp": False,
    "enable_outgoing_utp": False,
})
atp = lt.add_torrent_params()
atp.ti = ti
atp.save_path = parent
atp.flags |= lt.torrent_flags.seed_mode
h = ses.add_torrent(atp)
seed_port = ses.listen_port()

# Only announce the seeder once it serves the torrent: a peer that
# connects earlier is turned away, and retries only a minute later.
for _ in range(200):
    if h.status().is_seeding:
        break
    time.sleep(0.05)

print(lt.make_magnet_uri(ti) + "&x.pe=127.0.0.1:%d" % seed_port, flush=True)
print(tracker_url, flush=True)
sys.stdin.read()
