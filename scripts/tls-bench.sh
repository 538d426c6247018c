#!/usr/bin/env bash
# TLS throughput of two NBD servers, side by side: nbdcopy over nbds://
# (X.509 certificates and pre-shared keys), writes and reads, interleaved.
#
#   scripts/tls-bench.sh [-r ROUNDS] [-s SIZE_MIB] [-m x509,psk] [-U] [-P]
#                        [-c CANDIDATE] [-b BASELINE] [-e EXTRA_SERVER_ARGS]
#
#   -r  rounds (default 3); each round times both servers, the first one
#       alternating between rounds
#   -s  MiB copied each way (default 256)
#   -m  modes, comma-separated (default x509,psk; plain: the same copies
#       without TLS, for reference)
#   -U  serve on a Unix socket instead of 127.0.0.1 TCP
#   -P  pin the servers to CPU 1 and nbdcopy to CPU 0
#   -c  candidate nbdkit (default ./target/release/nbdkit)
#   -b  baseline nbdkit (default /usr/bin/nbdkit, C nbdkit with GnuTLS)
#   -n  nbdcopy options (default none: 4 connections when the server offers
#       multi-conn, 64 requests of 256 KiB in flight each)
#
# Each server runs `-f --tls=require ... memory 1G`. A write is
# `nbdcopy DATA URI` (DATA: SIZE MiB of random bytes in the page cache),
# a read `nbdcopy URI null:`. Printed per measurement: MiB/s and the
# server's CPU seconds per GiB moved (utime+stime from /proc/PID/stat);
# and nbdcopy's (the client's TLS costs as much); then the medians and the
# median of the paired candidate/baseline ratios.
# Wrap in `flock /tmp/bench.lock` on shared machines.
set -euo pipefail

rounds=3
size_mib=256
modes=x509,psk
unix=0
pin=0
cand=./target/release/nbdkit
base=/usr/bin/nbdkit
extra=""
copyopts=""
while getopts r:s:m:UPc:b:e:n: o; do
    case $o in
    r) rounds=$OPTARG ;;
    s) size_mib=$OPTARG ;;
    m) modes=$OPTARG ;;
    U) unix=1 ;;
    P) pin=1 ;;
    c) cand=$OPTARG ;;
    b) base=$OPTARG ;;
    e) extra=$OPTARG ;;
    n) copyopts=$OPTARG ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
cand=$(realpath "$cand")
base=$(realpath "$base")

tmp=$(mktemp -d /tmp/tls-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# X.509: a CA and a server certificate for localhost / 127.0.0.1.
pki=$tmp/pki
mkdir -p "$pki"
(
    cd "$pki"
    certtool --generate-privkey --key-type=rsa --bits=2048 >ca-key.pem 2>/dev/null
    printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 30\n' >ca.info
    certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
        --outfile ca-cert.pem >/dev/null 2>&1
    certtool --generate-privkey --key-type=rsa --bits=2048 >server-key.pem 2>/dev/null
    printf 'organization = bench\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n' >server.info
    certtool --generate-certificate --load-ca-certificate ca-cert.pem \
        --load-ca-privkey ca-key.pem --load-privkey server-key.pem \
        --template server.info --outfile server-cert.pem >/dev/null 2>&1
    chmod 0600 server-key.pem
)
psk=$tmp/keys.psk
printf 'bench:%s\n' "$(openssl rand -hex 32)" >"$psk"
chmod 0600 "$psk"

data=$tmp/data
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$data"

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cpu_ticks() { # utime + stime of PID, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

server_pin=()
client_pin=()
if [ "$pin" = 1 ]; then
    server_pin=(taskset -c 1)
    client_pin=(taskset -c 0)
fi

# start NAME BIN MODE: starts a server, sets $uri and $pid.
start() {
    local name=$1 bin=$2 mode=$3 addr tlsargs q user="" scheme=nbds
    case $mode in
    plain)
        tlsargs=()
        scheme=nbd
        ;;
    x509)
        tlsargs=(--tls=require --tls-certificates "$pki")
        q="tls-certificates=$pki"
        ;;
    psk)
        tlsargs=(--tls=require --tls-psk "$psk")
        q="tls-psk-file=$psk"
        user=bench@
        ;;
    esac
    if [ "$unix" = 1 ]; then
        local sock=$tmp/$name-$mode.sock
        addr=(-U "$sock")
        uri="$scheme+unix://$user/?socket=$sock${q:+&$q}"
    else
        local port
        port=$(free_port)
        addr=(-i 127.0.0.1 -p "$port")
        uri="$scheme://${user}127.0.0.1:$port/${q:+?$q}"
    fi
    # shellcheck disable=SC2086
    "${server_pin[@]}" "$bin" -f "${addr[@]}" "${tlsargs[@]}" $extra \
        memory 1G 2>"$tmp/$name.log" &
    pid=$!
    pids+=("$pid")
    local i
    for i in $(seq 100); do
        if nbdinfo --size "$uri" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
        kill -0 "$pid" 2>/dev/null || break
    done
    echo "server $name ($bin) did not start:" >&2
    cat "$tmp/$name.log" >&2
    exit 1
}

# measure PID SRC DST: prints "MiB/s server-cpu-s/GiB client-cpu-s/GiB"
measure() {
    local pid=$1 src=$2 dst=$3 c0 c1 t
    c0=$(cpu_ticks "$pid")
    # shellcheck disable=SC2086
    t=$( { TIMEFORMAT='%R %U %S'; time "${client_pin[@]}" nbdcopy $copyopts "$src" "$dst" >&2; } 2>&1 | tail -1)
    c1=$(cpu_ticks "$pid")
    echo "$t" | awk -v c0="$c0" -v c1="$c1" -v hz="$hz" -v mib="$size_mib" \
        '{ g = mib / 1024; printf "%.1f %.3f %.3f\n", mib / $1, (c1 - c0) / hz / g, ($2 + $3) / g }'
}

results=$tmp/results
: >"$results"
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/')" >&2
echo "# candidate: $cand" >&2
echo "# baseline:  $base" >&2
echo "# ${size_mib} MiB each way, $rounds rounds, $([ "$unix" = 1 ] && echo unix || echo tcp)$([ "$pin" = 1 ] && echo ', pinned')" >&2
IFS=, read -r -a modelist <<<"$modes"
for mode in "${modelist[@]}"; do
    start cand "$cand" "$mode"
    cpid=$pid curi=$uri
    start base "$base" "$mode"
    bpid=$pid buri=$uri
    # Fill both exports once (first writes allocate; the measured ones
    # overwrite).
    "${client_pin[@]}" nbdcopy "$data" "$curi"
    "${client_pin[@]}" nbdcopy "$data" "$buri"
    for r in $(seq "$rounds"); do
        if [ $((r % 2)) = 1 ]; then order="cand base"; else order="base cand"; fi
        for who in $order; do
            if [ "$who" = cand ]; then p=$cpid u=$curi; else p=$bpid u=$buri; fi
            read -r wm wc wk < <(measure "$p" "$data" "$u")
            read -r rm rc rk < <(measure "$p" "$u" null:)
            printf '%-4s round %d %-4s write %7.1f MiB/s cpu-s/GiB %5.3f (client %5.3f)   read %7.1f MiB/s cpu-s/GiB %5.3f (client %5.3f)\n' \
                "$mode" "$r" "$who" "$wm" "$wc" "$wk" "$rm" "$rc" "$rk" >&2
            echo "$mode $r $who $wm $wc $rm $rc $wk $rk" >>"$results"
        done
    done
    kill "$cpid" "$bpid"
    wait "$cpid" "$bpid" 2>/dev/null || true
done

# Medians and paired ratios (candidate/baseline; CPU ratio base/cand so
# that > 1 is better for the candidate throughout).
/usr/bin/python3 - "$results" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
modes = []
for r in rows:
    if r[0] not in modes:
        modes.append(r[0])
print("| mode | direction | candidate MiB/s | baseline MiB/s | ratio (paired median) | candidate cpu-s/GiB | baseline cpu-s/GiB | cpu ratio base/cand | nbdcopy cpu-s/GiB cand / base |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
for m in modes:
    for d, (ti, ci, ki) in (("write", (3, 4, 7)), ("read", (5, 6, 8))):
        by = {}
        for r in rows:
            if r[0] == m:
                by.setdefault(r[1], {})[r[2]] = (float(r[ti]), float(r[ci]), float(r[ki]))
        pairs = [v for v in by.values() if "cand" in v and "base" in v]
        ct = st.median(v["cand"][0] for v in pairs)
        bt = st.median(v["base"][0] for v in pairs)
        cc = st.median(v["cand"][1] for v in pairs)
        bc = st.median(v["base"][1] for v in pairs)
        ck = st.median(v["cand"][2] for v in pairs)
        bk = st.median(v["base"][2] for v in pairs)
        rt = st.median(v["cand"][0] / v["base"][0] for v in pairs)
        rc = st.median(v["base"][1] / v["cand"][1] if v["cand"][1] else float("inf") for v in pairs)
        print(f"| {m} | {d} | {ct:.0f} | {bt:.0f} | {rt:.2f} | {cc:.2f} | {bc:.2f} | {rc:.2f} | {ck:.2f} / {bk:.2f} |")
EOF
