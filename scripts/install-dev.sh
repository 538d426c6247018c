#!/bin/sh
# Install the headers and pkg-config file for writing nbdkit plugins and
# filters in C or C++ against this nbdkit:
#
#   scripts/install-dev.sh PREFIX        (for example /usr/local)
#
# installs PREFIX/include/nbdkit-{plugin,filter,common,version}.h and
# PREFIX/lib/pkgconfig/nbdkit.pc, after which
#
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig \
#     cc -shared -fPIC $(pkg-config --cflags nbdkit) plugin.c -o plugin.so
#
# builds a plugin that `nbdkit ./plugin.so` loads.
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 1
fi
prefix=$1
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
for h in nbdkit-plugin.h nbdkit-filter.h nbdkit-common.h nbdkit-version.h; do
    install -m 644 "$here/include/$h" "$prefix/include/$h"
done
sed "s|@PREFIX@|$prefix|" "$here/include/nbdkit.pc.in" > "$prefix/lib/pkgconfig/nbdkit.pc"
echo "installed the nbdkit headers and nbdkit.pc under $prefix"
