#!/usr/bin/env bash
# Runs every test of the workspace: the one command for a fresh Debian
# machine with Rust (and for CI, through .ci/run).
#
#   1. installs the NBD client tools the integration tests drive, when any
#      is missing (apt is skipped when everything is already there);
#   2. cargo build --release -p nbdkit-cli (the nbdkit binary under test)
#      and the plugins built as shared objects beside it (python, perl,
#      tcl, lua, ruby, ssh, curl, S3, libvirt, guestfs, torrent);
#   3. cargo test --workspace (test code in the dev profile: no LTO link
#      per test binary), with NBDKIT_BIN pointing at the release
#      target/release/nbdkit (the tests never fall back to nbdkit on PATH).
#
# Extra arguments go to `cargo test`, e.g.
#   scripts/test-all.sh -p nbdkit-tests --test libnbd
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Client tools for tests/ and ../shared/conformance.  nbdkit (Debian's C
# nbdkit) is the reference, used only for differential comparisons; it is
# never the binary under test.
packages=(
    python3-libnbd   # import nbd, for /usr/bin/python3
    libnbd-bin       # nbdinfo, nbdcopy, nbdsh
    python3-pytest   # the conformance suite's runner
    qemu-utils       # qemu-img, qemu-io, qemu-nbd (nbd plugin tests)
    nbd-server       # a remote server for the nbd plugin tests
    gnutls-bin       # certtool, psktool (TLS tests)
    openssl          # fallback certificate generator
    fdisk            # sfdisk (partition filter tests)
    fio              # benchmark workloads
    nbdkit           # the reference server (and its manual pages)
    man-db           # man (dropin_cli: --help against the manual pages)
    nbdkit-plugin-dev # the reference's example plugins (example2, differential tests)
    nbdkit-plugin-python # the reference's python plugin (C ABI and python differential tests)
    libssl3          # OpenSSL for --tls-psk (loaded with dlopen when used)
    libssl-dev       # openssl-sys, which curl-sys links (the curl plugin's build)
    pkg-config       # nbdkit.pc (C ABI tests); openssl-sys finds libssl with it
    gcc              # C plugins and filters of the C ABI tests; nbdkit cc
    g++              # nbdkit cc CC=g++ (dropin_lang)
    golang-go        # the Go plugin package and example (dropin_lang; ~40 s to install)
    ocaml-nox        # the OCaml NBDKit module and example (dropin_lang; ~50 s to install)
    xz-utils         # xz (xz filter tests)
    gdisk            # sgdisk (partitioning plugin tests)
    mtools           # mdir, mcopy (floppy plugin tests)
    dosfstools       # fsck.vfat (floppy plugin tests)
    cryptsetup-bin   # cryptsetup luksFormat (luks filter tests)
    e2fsprogs        # mke2fs, e2fsck, debugfs (linuxdisk/tmpdisk/ondemand tests)
    genisoimage      # isoinfo, genisoimage (iso plugin tests)
    xorriso          # the iso plugin's default program
    binutils-arm-none-eabi # arm-none-eabi-size (firmware footprint, issue 6)
    python3-dev      # libpython3.x for plugins/python (pyo3 embeds /usr/bin/python3's)
    nbdkit-plugin-python # the reference's python plugin (plugin_python differential tests)
    libssh-dev       # libssh for plugins/ssh (linked by the plugin's shared object only)
    openssh-server   # sshd, the real server of the ssh plugin tests (run by the tests, no service)
    openssh-client   # ssh-keygen (ssh plugin tests' host and user keys)
    libcurl4-openssl-dev # the system libcurl that plugins/curl links (curl-sys via pkg-config)
    nginx            # the HTTP(S) server the curl plugin tests start on loopback
    python3-pyftpdlib # the FTP server the curl plugin tests start on loopback
    libvirt0         # libvirt.so.0, dlopened by plugins/libvirt (plugin_libvirt: test:///default)
    nbdkit-plugin-libvirt # the reference's libvirt plugin (plugin_libvirt differential tests)
    libperl-dev      # libperl and its embedding headers for plugins/perl
    tcl-dev          # libtcl8.6 for plugins/tcl
    nbdkit-plugin-perl # the reference's perl plugin (plugin_perl differential tests)
    nbdkit-plugin-tcl # the reference's tcl plugin (plugin_tcl differential tests)
    liblua5.4-dev    # Lua 5.4 for plugins/lua (mlua links it through pkg-config)
    ruby-dev         # libruby and its pkg-config file for plugins/ruby
    nbdkit-plugin-lua # the reference's lua plugin (plugin_lua differential tests)
    nbdkit-plugin-ruby # the reference's ruby plugin (plugin_ruby differential tests)
    python3-venv     # target/moto-venv: moto[server], the S3 server of the S3 plugin tests
    python3-boto3    # the reference's S3 plugin (plugin_s3 differential test)
    podman           # podman pull/save of the cdi plugin (plugin_cdi, local oci: images only)
    skopeo           # the cdi plugin's fallback without podman (plugin_cdi)
    jq               # picks the cdi plugin's layer from the manifest (plugin_cdi)
    libtorrent-rasterbar-dev # the torrent plugin's BitTorrent engine (plugins/torrent)
    python3-libtorrent # the loopback seeder of the torrent plugin's tests (plugin_torrent)
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    echo "test-all: installing ${missing[*]}" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# The nbdkit binary under test, and the plugins built as shared objects that
# it finds beside itself (not built by a plain `cargo build`; each needs its
# library's -dev package, installed above): python (python3-dev), perl
# (libperl-dev; also puts example4 beside the binary), tcl (tcl-dev), lua
# (liblua5.4-dev), ruby (ruby-dev), ssh (libssh-dev), curl (libcurl's -dev),
# libvirt and guestfs (dlopen their libraries when run: they build without
# them; guestfs's tests use a stand-in library built with gcc where
# libguestfs0 is absent), S3 (its HTTP/TLS client stays out of nbdkit),
# torrent (libtorrent-rasterbar-dev; built without it, it only refuses to
# start, naming the package).
cargo build --release -p nbdkit-cli \
    -p nbdkit-python-plugin -p nbdkit-perl-plugin -p nbdkit-tcl-plugin \
    -p nbdkit-lua-plugin -p nbdkit-ruby-plugin \
    -p nbdkit-ssh-plugin -p nbdkit-curl-plugin \
    -p nbdkit-libvirt-plugin -p nbdkit-guestfs-plugin -p nbdkit-S3-plugin \
    -p nbdkit-torrent-plugin

# moto (PyPI), the S3-compatible server the S3 plugin tests start, in a
# virtual environment of its own: a `pip install --user` would shadow
# Debian's python3 packages (its cryptography breaks Debian's pyOpenSSL).
if ! target/moto-venv/bin/python -c 'import moto.server, boto3, flask' 2>/dev/null; then
    { /usr/bin/python3 -m venv target/moto-venv &&
        target/moto-venv/bin/python -m pip install --quiet 'moto[server]'; } ||
        echo "test-all: cannot install moto[server]: the S3 plugin tests will SKIP" >&2
fi

export NBDKIT_BIN="$PWD/target/release/nbdkit"
if [[ ! -x $NBDKIT_BIN ]]; then
    echo "test-all: $NBDKIT_BIN was not built" >&2
    exit 1
fi
# runtime-embedded: the TAP example the embedded_tap test runs.
cargo build --release -p nbdkit-runtime-embedded --example tap
export NBDKIT_EMBEDDED_TAP="$PWD/target/release/examples/tap"

# The core on bare metal (Cortex-M4F), and the firmware example's footprint.
if rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 ||
    rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
    cargo build -p nbdkit-core --target thumbv7em-none-eabihf --no-default-features
    cargo build -p nbdkit-core --target thumbv7em-none-eabihf --no-default-features --features alloc
    cargo build -p nbdkit-runtime-embedded --target thumbv7em-none-eabihf
    runtime-embedded/firmware/size.sh
else
    echo "test-all: SKIP thumbv7em-none-eabihf builds: rustup cannot add the target (offline?)" >&2
fi

# The whole workspace type-checked for FreeBSD (no FreeBSD sysroot needed:
# see "Platforms" in README.md).
if rustup target add x86_64-unknown-freebsd >/dev/null 2>&1 ||
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-freebsd; then
    scripts/check-freebsd.sh
else
    echo "test-all: SKIP FreeBSD check: rustup cannot add x86_64-unknown-freebsd (offline?)" >&2
fi

# loom models of the concurrency runtime-std runs (nbdkit-core's sync
# types: in-flight accounting and drain, the reply locks, the thread-model
# gate, the blocking worker pool). Own target dir: --cfg loom rebuilds
# every dependency. Bounded: 3 preemptions per execution (~15 s of models).
LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$PWD/target/loom" \
    timeout 1200 cargo test --release -p nbdkit-core --lib loom

# The crates.io nbdkit crate, for the Rust plugin test (dropin_lang builds
# plugins/rust offline from the local registry).
cargo fetch --manifest-path plugins/rust/Cargo.toml ||
    echo "test-all: cannot fetch plugins/rust's crates: its tests will SKIP" >&2

echo "test-all: testing $NBDKIT_BIN ($("$NBDKIT_BIN" --version | head -n1))" >&2
cargo test --workspace --no-fail-fast "$@"
