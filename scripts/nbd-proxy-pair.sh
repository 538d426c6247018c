#!/bin/sh
# A memory server of REMOTE_BIN behind PROXY_BIN's nbd plugin, for
# nbd-bench (issue 12's proxy check): the proxy listens on SOCK.
#
#   ../shared/bench/nbd-bench \
#     --candidate "scripts/nbd-proxy-pair.sh $PWD/target/release/nbdkit $PWD/target/release/nbdkit {sock} {dir} {size}" \
#     --baseline  "scripts/nbd-proxy-pair.sh $PWD/target/release/nbdkit /usr/bin/nbdkit {sock} {dir} {size}"
#
# usage: nbd-proxy-pair.sh REMOTE_BIN PROXY_BIN SOCK DIR SIZE
remote=$1; proxy=$2; sock=$3; dir=$4; size=$5
"$remote" -U "$dir/remote.sock" -f memory "$size" &
rp=$!
i=0
while [ ! -S "$dir/remote.sock" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
"$proxy" -U "$sock" -f nbd socket="$dir/remote.sock" &
pp=$!
trap 'kill $pp $rp; wait' TERM INT
wait $pp
kill $rp
