#!/usr/bin/env bash
# Builds the firmware example for thumbv7em-none-eabihf (opt-level "z",
# panic=abort, LTO, identical code folded) and reports its footprint with binutils-arm-none-eabi:
#   flash = text (vector table + .text + .rodata) + data (initial values)
#   static RAM = data + bss, then without the disk, the TCP socket buffers
#   and the stand-in MAC's frame buffers (the heap of the plugin/filter
#   stack, HEAP_MEM, counts as static RAM and is shown on its own).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

cargo build --release
elf=target/thumbv7em-none-eabihf/release/nbdkit-firmware-example
arm-none-eabi-size "$elf"
read -r text data bss _ < <(arm-none-eabi-size "$elf" | awk 'NR == 2 {print $1, $2, $3}')
sym() { # total size of the symbols whose names contain $1
    arm-none-eabi-nm -S -t d "$elf" | awk -v s="$1" 'index($4, s) {t += $2} END {print t + 0}'
}
disk=$(sym 4DISK)
tcp=$(($(sym 6TCP_RX) + $(sym 6TCP_TX)))
frames=$(($(sym 8RX_FRAME) + $(sym 8TX_FRAME)))
server=$(sym 6SERVER)
heap=$(sym 8HEAP_MEM)
ram=$((data + bss))
echo "flash (text+rodata+data init): $((text + data)) bytes"
echo "static RAM (data+bss):         $ram bytes"
echo "  without the disk ($disk):               $((ram - disk)) bytes"
echo "  without disk and TCP buffers ($tcp):   $((ram - disk - tcp)) bytes"
echo "  without disk, TCP and MAC frames ($frames): $((ram - disk - tcp - frames)) bytes"
echo "  of which the server (slots + negotiator): $server bytes"
echo "  of which the heap of the filter stack:    $heap bytes"
# The budget (issue 15): 64 KiB of flash, 24 KiB of static RAM besides the
# disk, the TCP buffers and the MAC frames.
status=0
if ((text + data > 64 * 1024)); then
    echo "size.sh: flash $((text + data)) is over the 64 KiB budget" >&2
    status=1
fi
if ((ram - disk - tcp - frames > 24 * 1024)); then
    echo "size.sh: static RAM $((ram - disk - tcp - frames)) is over the 24 KiB budget" >&2
    status=1
fi
exit $status
