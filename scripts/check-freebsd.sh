#!/usr/bin/env bash
# Type-checks the whole workspace for FreeBSD (x86_64-unknown-freebsd)
# from Linux: `cargo check`, so nothing is linked and no FreeBSD sysroot is
# needed. See "Platforms" in README.md for why this is sound.
#
# Needs the rustup target (scripts/test-all.sh adds it) and the host's
# OpenSSL headers (libssl-dev, pkg-config): openssl-sys's build script only
# reads them to learn the OpenSSL version and configuration, from which it
# picks the cfgs of its Rust declarations. Extra arguments go to cargo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-freebsd
if ! include=$(pkg-config --variable=includedir openssl) ||
    ! lib=$(pkg-config --variable=libdir openssl); then
    echo "check-freebsd: the host's OpenSSL headers are missing (install libssl-dev and pkg-config)" >&2
    exit 1
fi

# Target-prefixed, so that the host's own builds (build scripts, the
# Linux binary) are not affected.
export X86_64_UNKNOWN_FREEBSD_OPENSSL_DIR=${include%/include}
export X86_64_UNKNOWN_FREEBSD_OPENSSL_INCLUDE_DIR=$include
export X86_64_UNKNOWN_FREEBSD_OPENSSL_LIB_DIR=$lib

# plugins/python: pyo3 needs to be told the Python version when the target
# is not the host (the host's /usr/bin/python3, whose libpython it embeds).
if [[ -z ${PYO3_CROSS_PYTHON_VERSION:-} ]]; then
    PYO3_CROSS_PYTHON_VERSION=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    export PYO3_CROSS_PYTHON_VERSION
fi

# Libraries, binaries and test code (the unit tests would run on FreeBSD).
# Not the examples: runtime-embedded's TAP example is Linux-only (smoltcp's
# TunTapInterface).
# The interpreter and C++ plugins' build scripts need the target system's
# own libraries (pkg-config for Lua and Ruby, libperl's and libtcl's
# headers and a C/C++ cross compiler for the perl, tcl and torrent shims),
# which a Linux host does not have: they are left out of this check.
cargo check --target "$target" --workspace --lib --bins --tests \
    --exclude nbdkit-lua-plugin --exclude nbdkit-ruby-plugin \
    --exclude nbdkit-perl-plugin --exclude nbdkit-tcl-plugin \
    --exclude nbdkit-torrent-plugin "$@"
