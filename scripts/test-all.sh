#!/usr/bin/env bash
# Runs every test of the workspace: the one command for a fresh Debian
# machine with Rust (and for CI, through .ci/run).
#
#   1. installs the NBD client tools the integration tests drive, when any
#      is missing (apt is skipped when everything is already there);
#   2. cargo build --release --workspace (the nbdkit binary under test);
#   3. cargo test --release --workspace, with NBDKIT_BIN pointing at
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
    qemu-utils       # qemu-img, qemu-io
    gnutls-bin       # certtool, psktool (TLS tests)
    openssl          # fallback certificate generator
    fdisk            # sfdisk (partition filter tests)
    fio              # benchmark workloads
    nbdkit           # the reference server
    libssl-dev       # OpenSSL for --tls-psk (openssl-sys links it)
    pkg-config       # how openssl-sys finds libssl
    liblzma-dev      # liblzma for the xz filter (lzma-sys links it)
    xz-utils         # xz (xz filter tests)
    e2fsprogs        # mke2fs, e2fsck, debugfs (linuxdisk, tmpdisk, ondemand)
    genisoimage      # genisoimage, isoinfo (iso plugin)
    xorriso          # xorriso (iso plugin)
    gdisk            # sgdisk (partitioning plugin tests)
    mtools           # mdir, mcopy (floppy plugin tests)
    dosfstools       # fsck.vfat (floppy plugin tests)
    cryptsetup-bin   # cryptsetup luksFormat (luks filter tests)
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

cargo build --release --workspace

export NBDKIT_BIN="$PWD/target/release/nbdkit"
if [[ ! -x $NBDKIT_BIN ]]; then
    echo "test-all: $NBDKIT_BIN was not built" >&2
    exit 1
fi
echo "test-all: testing $NBDKIT_BIN ($("$NBDKIT_BIN" --version | head -n1))" >&2
cargo test --release --workspace --no-fail-fast "$@"
