#!/bin/sh
# Build the NBDKit OCaml module and the example plugin (Debian: ocaml-nox):
#
#   plugins/ocaml/build.sh OUTDIR
#
# leaves in OUTDIR: NBDKit.cmi, NBDKit.cmx, NBDKit.o, libnbdkitocaml.a
# (what a plugin links with) and nbdkit-ocamlramdisk-plugin.so (the
# example). A plugin of your own is then linked as
#
#   ocamlopt -output-obj -runtime-variant _pic -o nbdkit-myplugin-plugin.so \
#            -I OUTDIR NBDKit.cmx myplugin.ml -ccopt -LOUTDIR -cclib -lnbdkitocaml
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
include=$here/../../include
mkdir -p "$1"
out=$(cd "$1" && pwd)
ocamlopt=ocamlopt
if command -v ocamlopt.opt >/dev/null 2>&1; then
    ocamlopt=ocamlopt.opt
fi
cd "$out"
cp "$here/NBDKit.mli" "$here/NBDKit.ml" "$here/ramdisk.ml" .
$ocamlopt -c NBDKit.mli
$ocamlopt -c -fPIC NBDKit.ml
${CC:-cc} -c -fPIC -O2 -Wall -I"$($ocamlopt -where)" -I"$include" \
    "$here/nbdkitocaml.c" -o nbdkitocaml.o
rm -f libnbdkitocaml.a
ar rcs libnbdkitocaml.a nbdkitocaml.o
$ocamlopt -output-obj -runtime-variant _pic -o nbdkit-ocamlramdisk-plugin.so \
    -I . NBDKit.cmx ramdisk.ml -ccopt -L. -cclib -lnbdkitocaml
echo "built $out/nbdkit-ocamlramdisk-plugin.so"
