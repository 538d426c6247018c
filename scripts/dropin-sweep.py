#!/usr/bin/python3
"""Differential sweep: run the command lines nbdkit's documentation shows
(adapted to small generated files in a temporary directory) under our
nbdkit and under the reference /usr/bin/nbdkit, and report every case
whose normalised stdout, stderr or exit status differs.

Usage: scripts/dropin-sweep.py [OURS] [--ref /usr/bin/nbdkit] [-k PATTERN]
                               [--show-same] [--timeout SECS]

OURS defaults to target/release/nbdkit next to this script.  Each case is
a shell command in which "NBDKIT" stands for the binary under test; it
runs with a fresh copy of the fixture directory as its working directory
and a bounded timeout.  Output is normalised (binary path, temporary
directory, socket paths, pids) before comparing.
"""

import argparse
import difflib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# What a client sees of an export: nbdinfo's JSON (sizes, flags, block
# sizes, export list), the allocation map and the content checksum.
PROBE = ('nbdinfo --json "$uri"; echo "map:"; nbdinfo --map "$uri"; '
         'echo "md5:"; nbdcopy "$uri" - | md5sum')
INFO = 'nbdinfo --json "$uri"'
MAP = 'nbdinfo --map "$uri"'
MD5 = 'nbdcopy "$uri" - | md5sum'
MAPMD5 = MAP + '; ' + MD5


def run_probe(args, probe=PROBE):
    """NBDKIT -U - ARGS --run 'PROBE'"""
    return "NBDKIT -U - %s --run '%s'" % (args, probe.replace("'", "'\\''"))


CASES = []


def case(name, cmd, stdin=None, note=""):
    if name.startswith("err-") and "--run" not in cmd:
        # A bad command line must fail before serving; should it not,
        # the server runs captive instead of forking into the background.
        cmd = cmd.replace("NBDKIT", "NBDKIT -U -", 1) + " --run 'echo STARTED'"
    CASES.append((name, cmd, stdin, note))


def probe(name, args, p=PROBE):
    case(name, run_probe(args, p))


# ---------------------------------------------------------------- probing
case("version", "NBDKIT --version")
case("V", "NBDKIT -V")
case("dump-config", "NBDKIT --dump-config")
case("help", "NBDKIT --help")
for p in ["memory", "null", "file", "data", "pattern", "example1", "sh",
          "eval", "zero", "full", "random", "sparse-random", "split",
          "partitioning", "floppy", "iso", "linuxdisk", "info", "tmpdisk",
          "ondemand", "example2", "example3"]:
    case("dump-plugin-" + p, "NBDKIT %s --dump-plugin" % p)
    case("plugin-version-" + p, "NBDKIT %s --version" % p)
    case("plugin-help-" + p, "NBDKIT %s --help" % p)
case("help-file", "NBDKIT --help file")
case("filter-version-foo", "NBDKIT --version --filter=foo null")
for f in ["blocksize", "blocksize-policy", "cache", "cacheextents",
          "checkwrite", "cow", "ddrescue", "delay", "error", "exitlast",
          "exitwhen", "exportname", "ext2", "extentlist", "fua", "gzip",
          "ip", "limit", "log", "luks", "multi-conn", "nocache", "noextents",
          "nofilter", "noparallel", "nozero", "offset", "partition", "pause",
          "protect", "rate", "readahead", "retry", "retry-request", "scan",
          "stats", "swab", "tar", "tls-fallback", "truncate", "xz"]:
    case("filter-version-" + f, "NBDKIT --filter=%s null --version" % f)
    case("filter-help-" + f, "NBDKIT --filter=%s null --help" % f)
    case("filter-dump-" + f, "NBDKIT --filter=%s null --dump-plugin" % f)
case("exit-with-parent-version",
     'NBDKIT --exit-with-parent --version >/dev/null && echo "supported"')
case("plugin-path-dump",
     "NBDKIT /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-null-plugin.so"
     " --dump-plugin | grep -v '^path='")
case("example1-dump", "NBDKIT example1 --dump-plugin")
case("example1-help", "NBDKIT example1 --help")

# ---------------------------------------------------------------- errors
case("err-no-plugin", "NBDKIT")
case("err-unknown-plugin", "NBDKIT nosuchplugin")
case("err-unknown-filter", "NBDKIT --filter=nosuchfilter null")
case("err-memory-no-size", "NBDKIT memory")
case("err-memory-bad-size", "NBDKIT memory size=abc")
case("err-memory-neg-size", "NBDKIT memory size=-1")
case("err-memory-big-size", "NBDKIT memory size=9223372036854775808")
case("err-memory-unknown-param", "NBDKIT memory 1M foo=bar")
case("err-memory-two-magic", "NBDKIT memory 1M 2M")
case("err-null-unknown-param", "NBDKIT null foo=bar")
case("err-file-missing", "NBDKIT file")
case("err-file-nonexistent", "NBDKIT file /nonexistent/disk.img")
case("err-file-both", "NBDKIT file disk.img dir=dir")
case("err-data-missing", "NBDKIT data")
case("err-data-bad", "NBDKIT data '0x1ff'")
case("err-pattern-no-size", "NBDKIT pattern")
case("err-full-no-size", "NBDKIT full")
case("err-random-bad-seed", "NBDKIT random 1M seed=x")
case("err-offset-bad", "NBDKIT --filter=offset null 1M offset=x")
case("err-offset-beyond", run_probe("--filter=offset null 1M offset=2M", INFO))
case("err-truncate-bad", "NBDKIT --filter=truncate null 1M truncate=x")
case("err-partition-missing", "NBDKIT --filter=partition null 1M")
case("err-partition-bad", "NBDKIT --filter=partition null 1M partition=x")
case("err-blocksize-bad", "NBDKIT --filter=blocksize null 1M minblock=3")
case("err-blocksize-policy-bad",
     "NBDKIT --filter=blocksize-policy null 1M blocksize-minimum=3")
case("err-swab-bad", "NBDKIT --filter=swab null 1M swab-bits=7")
case("err-protect-bad", "NBDKIT --filter=protect null 1M protect=5-1")
case("err-nozero-bad", "NBDKIT --filter=nozero null 1M zeromode=bogus")
case("err-nocache-bad", "NBDKIT --filter=nocache null 1M cachemode=bogus")
case("err-noparallel-bad", "NBDKIT --filter=noparallel null 1M serialize=bogus")
case("err-limit-bad", "NBDKIT --filter=limit null 1M limit=x")
case("err-rate-bad", "NBDKIT --filter=rate null 1M rate=x")
case("err-log-both",
     "NBDKIT --filter=log null 1M logfile=a.log logscript=true")
case("err-ip-bad", "NBDKIT --filter=ip null 1M allow=notanaddress")
case("err-stats-missing", "NBDKIT --filter=stats null 1M")
case("err-ddrescue-missing", "NBDKIT --filter=ddrescue null 1M")
case("err-extentlist-missing", "NBDKIT -r --filter=extentlist null 1M")
case("err-tar-missing", "NBDKIT --filter=tar file data.tar")
case("err-tar-noentry",
     run_probe("--filter=tar file data.tar tar-entry=nonexistent", INFO))
case("err-luks-missing", "NBDKIT --filter=luks file encrypted-disk.img")
case("err-luks-wrong",
     run_probe("file encrypted-disk.img --filter=luks passphrase=wrong", INFO))
case("err-xz-notxz", run_probe("--filter=xz file disk.img", INFO))
case("err-gzip-notgz", run_probe("--filter=gzip file disk.img", INFO))
case("err-bad-option", "NBDKIT --nosuchoption null")
case("err-port-bad", "NBDKIT -p x null")
case("err-threads-bad", "NBDKIT -t x null")
case("err-mask-bad", "NBDKIT --mask-handshake=x null")
case("err-split-missing", "NBDKIT split")
case("err-partitioning-missing", "NBDKIT partitioning")
case("err-floppy-missing", "NBDKIT floppy")
case("err-iso-missing", "NBDKIT iso")
case("err-linuxdisk-missing", "NBDKIT linuxdisk")
case("err-info-badmode", "NBDKIT info mode=bogus")
case("err-example4", "NBDKIT example4 size=x")
case("err-cache-bad", "NBDKIT --filter=cache null 1M cache=bogus")
case("err-cow-bad", "NBDKIT --filter=cow null 1M cow-on-read=bogus")
case("err-exitwhen-bad", "NBDKIT --filter=exitwhen null 1M exit-when-poll=x")
case("err-pause-missing", "NBDKIT --filter=pause null 1M")
case("err-scan-bad", "NBDKIT --filter=scan null 1M scan-ahead=bogus")
case("err-checkwrite-write",
     run_probe("--filter=checkwrite data '1 2 3' size=512",
               "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\", 0)'"))
case("err-protect-write",
     run_probe("--filter=protect file disk.img protect=0-0x1bd",
               "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\"*512, 0)'"))

# ---------------------------------------------------------------- captive
case("captive-memory-pread",
     "NBDKIT -U - memory 1 --run 'nbdsh -u \"$uri\" -c \"print(h.pread(1, 0))\"'")
case("captive-example1-convert",
     "NBDKIT -U - example1 --run 'qemu-img convert $nbd disk-out.img' && md5sum disk-out.img")
case("captive-tar",
     "NBDKIT -U - file data.tar --filter=tar tar-entry=disk.img "
     "--run 'qemu-img info --output=json $nbd' | grep -v filename")
case("captive-run-env",
     "NBDKIT -U - null --run 'echo ${nbd%%:*}; echo ${uri%%:*}; "
     "test -S \"$unixsocket\" && echo sock; echo \"$exportname\"'")
case("captive-run-exit-status", "NBDKIT -U - null --run 'exit 3'; echo rc=$?")
case("captive-run-e",
     "NBDKIT -U - -e foo null --run 'echo \"$exportname\"; nbdinfo \"$uri\" | grep -i export'")
case("captive-port",
     "NBDKIT -p 10819 -i 127.0.0.1 null 1M --run 'echo $uri; echo $port'")
case("captive-vsock-env", "NBDKIT -U - null --run 'echo x$cid x$vsock x$port'")
case("captive-readonly", run_probe("-r memory 1M", INFO))
case("captive-exitlast",
     "NBDKIT -U - --filter=exitlast memory 1M --run 'nbdinfo --size \"$uri\"'")

# ---------------------------------------------------------------- plugins
probe("memory-1M", "memory 1M")
probe("memory-size", "memory size=1M allocator=malloc")
probe("memory-zstd", "memory 1M allocator=zstd")
probe("memory-max", "memory $(( 2**63 - 1 ))", INFO)
probe("memory-1T", "memory 1T", INFO)
probe("null-default", "null")
probe("null-size", "null 1M")
probe("zero", "zero")
probe("full", "full 1M", INFO + '; ' + MAP)
case("full-write",
     run_probe("full 1M", "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\", 0)'"))
probe("pattern", "pattern 1M")
probe("pattern-max", "pattern 9223372036854775807", INFO)
probe("pattern-swab", "pattern 1M --filter=swab swab-bits=64")
probe("random-seed", "random 1M seed=42")
probe("sparse-random", "sparse-random 16M seed=42")
case("random-copy",
     "NBDKIT -U - random size=1M --run 'nbdcopy \"$uri\" \"$uri\"'; echo rc=$?")
case("sparse-random-copy",
     "NBDKIT -U - sparse-random size=1G --run 'nbdcopy \"$uri\" \"$uri\"'; echo rc=$?")
probe("example1", "example1")
probe("example2", "example2 file=disk.img")
probe("example3", "example3 size=1M", INFO)
probe("file", "file disk.img")
probe("file-key", "file file=disk.img")
probe("file-fadvise", "file disk.img fadvise=sequential cache=none")
probe("file-fadvise-random", "file disk.img fadvise=random")
probe("file-dir", "file dir=dir", 'nbdinfo --list --json "$uri"')
probe("data-1", "data '0 1 2 3 @0x1fe 0x55 0xaa'")
probe("data-key", "data data='0 1 2 3 @0x1fe 0x55 0xaa'")
probe("data-base64", "data base64='aGVsbG8gbmJka2l0IHVzZXI='")
probe("data-raw", "data raw='binary_data'")
probe("data-55aa", "data ' ( 0x55 0xAA )*2048 '")
probe("data-hello", "data ' ( \"Hello\" )*2000 ' size=8192")
probe("data-mbr", "data '\n  @0x1be    # MBR first partition entry\n    0 # status\n"
      "    0 2 0 # CHS start\n    0x83 # type\n    0x20 0x20 0 # CHS last\n"
      "    le32:1 # LBA first\n    le32:0x7ff # LBA count\n  @0x1fe\n"
      "    0x55 0xaa\n  ' size=1M")
probe("data-files", "data ' <file1 @^512 <file2 @^512 <file3 @^512 '")
probe("data-base64-size", "data base64=MTIz size=1M")
probe("data-le16", "data '0 1 2 3 @^0x200 @-2 le16:0xaa55'")
probe("data-be32", "data ' be32:0x1 '")
probe("data-script", "data ' <( i=0\n  while :; do\n    printf \"%04d\" $i; i=$((i+1))\n"
      "  done ) [:4096] '")
probe("data-label", "data ' ( 0x55 0xAA ) -> \\boot-signature @0x200 \\boot-signature '")
probe("data-var", "data '$pattern*16' pattern='0x55 0xAA'")
case("data-var-env",
     "pattern='0x55 0xAA' " + run_probe("data '$pattern*16'"))
case("data-hello-world",
     "NBDKIT data raw='Hello, world!' --run 'nbdcopy \"$uri\" - | cat'")
probe("split", "split file1 file2 file3")
probe("split-key", "split file=file1 file=file2")
probe("partitioning", "partitioning disk.img", INFO + '; ' + MAP)
probe("partitioning-2", "partitioning file1 file2 partition-type=gpt", INFO)
probe("partitioning-partition", "--filter=partition partitioning disk.img partition=1")
probe("floppy", "floppy dir", INFO)
probe("floppy-label", "floppy dir label=TEST", INFO)
probe("iso", "iso dir", INFO)
probe("iso-params", "iso dir params='-JrT'", INFO)
probe("linuxdisk", "linuxdisk dir label=ROOTFS", INFO)
probe("linuxdisk-size", "--filter=cow linuxdisk dir size=+1M", INFO)
probe("linuxdisk-partition", "--filter=partition linuxdisk dir partition=1", INFO)
for m in ["exportname", "base64exportname", "address", "time", "uptime",
          "conntime"]:
    probe("info-" + m, "info mode=" + m, 'nbdinfo --size "$uri"')
probe("info-default", "info", 'nbdcopy "$uri" - | cat')
probe("info-exportname", "-e hello info", 'nbdcopy "$uri" - | cat')
probe("tmpdisk", "tmpdisk 1M", INFO)
probe("tmpdisk-command",
      "tmpdisk 1M command=' truncate -s $size \"$disk\" '", PROBE)
probe("ondemand", "ondemand dir=exports 1M", INFO)
case("example4", run_probe("example4 size=1048576", INFO))

# ---------------------------------------------------------------- filters
probe("blocksize-truncate",
      "--filter=blocksize --filter=truncate file disk-odd.img minblock=4k round-up=4k")
probe("blocksize-maxdata", "--filter=blocksize memory 1M maxdata=32M")
probe("blocksize-policy", "--filter=blocksize-policy memory 1G blocksize-preferred=32K", INFO)
probe("blocksize-policy-2",
      "--filter=blocksize-policy --filter=blocksize memory 1M "
      "blocksize-error-policy=allow blocksize-minimum=64K minblock=64K", INFO)
probe("cache", "--filter=cache file disk.img")
probe("cache-unsafe", "--filter=cache file disk.img cache=unsafe")
probe("cacheextents", "--filter=cacheextents file disk.img", MAP)
case("cacheextents-qemu-map",
     "NBDKIT -U - --filter=cacheextents file disk.img --run 'qemu-img map $nbd'")
case("checkwrite-data",
     "NBDKIT -U - --filter=checkwrite data '@32768 1' --run 'nbdcopy \"$uri\" \"$uri\"'; echo rc=$?")
case("checkwrite-file",
     "NBDKIT -U - --filter=checkwrite file disk.img --run 'nbdcopy \"$uri\" \"$uri\"'; echo rc=$?")
case("checkwrite-linuxdisk",
     "NBDKIT -U - --filter=checkwrite linuxdisk dir/ --run 'qemu-img convert -n \"$uri\" \"$uri\"'; echo rc=$?")
probe("checkwrite-info", "--filter=checkwrite memory 1M", INFO)
probe("cow", "--filter=cow file disk.img")
probe("cow-xz", "--filter=cow --filter=xz file disk.xz cow-on-read=true")
case("cow-write",
     run_probe("--filter=cow file disk.img",
               "nbdsh -u \"$uri\" -c 'h.pwrite(b\"X\"*512, 0)' -c "
               "'print(h.pread(4, 0))'") + "; md5sum disk.img")
probe("ddrescue", "--filter=ddrescue file file=disk.img ddrescue-mapfile=disk.map",
      'nbdsh -u "$uri" -c "print(h.pread(512,0)[:4])" -c "'
      'try:\n  h.pread(512, 65536)\nexcept nbd.Error as e:\n  print(e.errno)"')
probe("delay", "--filter=delay file disk.img rdelay=10ms wdelay=10ms")
probe("delay-zero", "--filter=delay file disk.img delay-zero=1ms", INFO)
probe("error-rate", "--filter=error file disk.img error-rate=0%")
probe("exitwhen", "--filter=exitwhen memory 1M exit-when-file-created=stop", INFO)
case("exitwhen-pre-existing",
     "touch stop; timeout 10 NBDKIT -U - --filter=exitwhen memory 1M "
     "exit-when-file-created=stop --run 'nbdinfo --size \"$uri\"'; echo rc=$?")
probe("exitwhen-pid", "--filter=exitwhen memory 1M exit-when-process-exits=$$", INFO)
probe("ext2", "--filter=ext2 file fs.img ext2file=/disks/disk.raw")
probe("extentlist", "-r --filter=extentlist file disk.img extentlist=extents.txt", MAPMD5)
probe("fua", "--filter=fua file disk.img", INFO)
probe("fua-force", "--filter=fua file disk.img fuamode=force", INFO)
probe("gzip", "file --filter=gzip disk.img.gz")
probe("ip-allow", "--filter=ip memory 1M allow=127.0.0.1,::1 deny=all", INFO)
case("ip-uid",
     "NBDKIT -U sock --filter=ip memory 1M allow=uid:`id -u` deny=all "
     "--run 'nbdinfo --size \"$uri\"'")
case("ip-gid-deny",
     "NBDKIT -U sock --filter=ip memory 1M deny=gid:`id -g` "
     "--run 'nbdinfo --size \"$uri\"'; echo rc=$?")
probe("limit", "--filter=limit memory 1M", INFO)
case("log-file",
     run_probe("--filter=log file disk.img logfile=disk.log", INFO) +
     " >/dev/null; sed -e 's/^[0-9:. -]*//' disk.log")
case("log-script",
     run_probe("--filter=log null 10M logscript='echo $connection $type $id $act $offset >&2'",
               'nbdsh -u "$uri" -c "h.pread(512, 0)"'))
probe("luks", "file encrypted-disk.img --filter=luks passphrase=+secret")
probe("luks-partition", "file encrypted-disk.img --filter=luks passphrase=123456", INFO)
probe("multi-conn", "--filter=multi-conn file disk.img", INFO)
probe("nocache", "--filter=nocache file disk.img", INFO)
probe("nocache-nop", "--filter=nocache file disk.img cachemode=nop", INFO)
probe("noextents", "--filter=noextents file disk.img", MAP)
probe("nofilter", "--filter=nofilter file disk.img")
probe("noparallel", "--filter=noparallel file disk.img", INFO)
probe("noparallel-conn", "--filter=noparallel file serialize=connections disk.img", INFO)
probe("nozero", "--filter=nozero file disk.img", INFO)
probe("nozero-emulate", "--filter=nozero file zeromode=emulate disk.img", INFO)
probe("nozero-plugin", "--filter=nozero file zeromode=plugin fastzeromode=none disk.img", INFO)
probe("offset", "--filter=offset file disk.img offset=1M range=2M")
probe("offset-2", "--filter=offset file disk.img offset=65536 range=1048576")
probe("partition", "--filter=partition file disk.img partition=1")
probe("partition-xz", "--filter=partition --filter=xz file disk.img.xz partition=1")
case("pause",
     "NBDKIT -U - --filter=pause --filter=rate file disk.img rate=10M "
     "pause-control=psock --run 'qemu-img convert -p $nbd out.img' >/dev/null; md5sum out.img")
probe("protect", "--filter=protect file disk.img protect=0-0x1bd", INFO)
probe("rate", "--filter=rate memory 1M rate=10M", INFO)
probe("rate-conn", "--filter=rate memory 1M connection-rate=50M rate=100M", INFO)
probe("readahead", "--filter=readahead file disk.img")
probe("readahead-cache", "--filter=readahead --filter=cache file disk.img")
probe("readahead-cow", "--filter=readahead --filter=cow file disk.img cow-on-cache=true")
probe("retry", "--filter=retry file disk.img retries=2 retry-delay=1", INFO)
probe("retry-request", "--filter=retry-request file disk.img", INFO)
probe("scan", "--filter=scan file disk.img")
probe("scan-cache", "--filter=scan --filter=cache file disk.img")
case("stats",
     run_probe("--filter=stats file disk.img statsfile=stats.txt", MD5) +
     "; sed -e 's/[0-9.]* *[KMG]*i*B\\/s//' -e 's/[0-9.]*s//g' stats.txt | head -5")
probe("swab", "--filter=swab file file=disk.img")
probe("swab-32", "--filter=swab file disk.img swab-bits=32")
probe("tar", "file file.tar --filter=tar tar-entry=some/disk.img")
probe("tar-gz", "file filename.tar.gz --filter=tar tar-entry=disk.img --filter=gzip")
probe("tar-xz", "file filename.tar.xz --filter=tar tar-entry=disk.img --filter=xz")
probe("truncate", "--filter=truncate file disk.img truncate=1000")
probe("truncate-round", "--filter=truncate file disk-odd.img round-up=4096")
probe("truncate-down", "--filter=truncate file disk-odd.img round-down=4096")
probe("xz", "--filter=xz file disk.xz")
probe("error-delay", "--filter=error --filter=delay memory 1M error-rate=0% rdelay=1ms wdelay=1ms", INFO)

# ---------------------------------------------------------------- manual
case("sh-heredoc",
     "NBDKIT -U - sh - --run 'nbdinfo --size \"$uri\"; nbdcopy \"$uri\" - | md5sum' <<'EOF'\n"
     "case \"$1\" in\n  get_size) echo 1M ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes ;;\n"
     "  *) exit 2 ;;\nesac\nEOF")
probe("eval-zero",
      "eval get_size=' echo 64M ' pread=' dd if=/dev/zero count=$3 iflag=count_bytes '", INFO)
probe("eval-file",
      "eval config='ln -sf \"$(realpath \"$3\")\" $tmpdir/file' "
      "get_size='stat -Lc %s $tmpdir/file' "
      "pread='dd if=$tmpdir/file skip=$4 count=$3 iflag=count_bytes,skip_bytes' "
      "pwrite='dd of=$tmpdir/file seek=$4 conv=notrunc oflag=seek_bytes' "
      "file=disk.img")
case("newstyle-oldstyle",
     "NBDKIT -U - -o memory 1M --run 'nbdinfo --json \"$uri\"'; echo rc=$?")
case("no-sr", run_probe("--no-sr memory 1M", INFO))
case("mask-handshake", run_probe("--mask-handshake=0 memory 1M", INFO))
case("descriptions",
     run_probe("--filter=exportname memory 1M exportdesc=fixed:hello", INFO))
case("run-qemu-io",
     "NBDKIT -U - memory 1M --run 'qemu-io -f raw -c \"write -P 0x55 0 512\" -c \"read -P 0x55 0 512\" \"$nbd\"' "
     "| sed 's/([^)]*)//g; s/[0-9.]* [KMGT]*i*B\\/sec.*//; s/[0-9.]* ops\\/sec//'")
case("dash-s", "printf '' | NBDKIT -s memory 1M; echo rc=$?")
case("single-quoted-args", "NBDKIT -U - memory size=1M --run 'echo \"$1\"' x")
case("unix-socket-exists",
     "NBDKIT -U sock memory 1M --run 'test -S sock && echo exists'; test -e sock && echo left || echo gone")
case("pidfile",
     "NBDKIT -U sock -P pid.txt memory 1M --run 'test -s pid.txt && echo pid'; test -e pid.txt && echo left || echo gone")


# ---------------------------------------------------------------- batch 2:
# what clients do with the exports (writes, zeroing, trimming, flushing,
# caching; qemu-img and qemu-io; disk contents seen by the usual tools).
NBDSH_OPS = (
    "nbdsh -u \"$uri\" "
    "-c 'h.pwrite(b\"A\"*4096, 0)' "
    "-c 'h.pwrite(b\"B\"*100, 5000, nbd.CMD_FLAG_FUA) if h.can_fua() else h.pwrite(b\"B\"*100, 5000)' "
    "-c 'h.zero(8192, 8192) if h.can_zero() else None' "
    "-c 'h.trim(4096, 65536) if h.can_trim() else None' "
    "-c 'h.flush() if h.can_flush() else None' "
    "-c 'h.cache(65536, 0) if h.can_cache() else None' "
    "-c 'print(h.pread(16, 0), h.pread(16, 5000), h.pread(16, 8192))'"
    "; " + MAP + "; " + MD5)
for name, args in [
        ("memory", "memory 1M"),
        ("memory-malloc", "memory 1M allocator=malloc"),
        ("file", "file disk.img"),
        ("file-cache-none", "file disk.img cache=none"),
        ("cow", "--filter=cow file disk.img"),
        ("cow-block", "--filter=cow file disk.img cow-block-size=4096"),
        ("cache", "--filter=cache file disk.img"),
        ("cache-wt", "--filter=cache file disk.img cache=writethrough"),
        ("blocksize", "--filter=blocksize memory 1M minblock=4k maxdata=8k"),
        ("blocksize-policy", "--filter=blocksize-policy memory 1M blocksize-minimum=512 blocksize-error-policy=allow"),
        ("offset", "--filter=offset file disk.img offset=1M range=1M"),
        ("partition", "--filter=partition file disk.img partition=1"),
        ("swab", "--filter=swab memory 1M swab-bits=32"),
        ("truncate", "--filter=truncate memory 1M truncate=20000"),
        ("nozero", "--filter=nozero memory 1M"),
        ("nozero-emulate", "--filter=nozero memory 1M zeromode=emulate"),
        ("nocache", "--filter=nocache memory 1M cachemode=emulate"),
        ("noextents", "--filter=noextents memory 1M"),
        ("fua-emulate", "--filter=fua memory 1M fuamode=emulate"),
        ("fua-none", "--filter=fua memory 1M fuamode=none"),
        ("fua-discard", "--filter=fua memory 1M fuamode=discard"),
        ("noparallel", "--filter=noparallel memory 1M"),
        ("readahead", "--filter=readahead memory 1M"),
        ("scan", "--filter=scan memory 1M"),
        ("log", "--filter=log memory 1M logfile=/dev/null"),
        ("stats", "--filter=stats memory 1M statsfile=/dev/null"),
        ("delay", "--filter=delay memory 1M rdelay=1ms wdelay=1ms"),
        ("protect", "--filter=protect memory 1M protect=0-511"),
        ("checkwrite", "--filter=checkwrite memory 1M"),
        ("null", "null 1M"),
        ("zero", "zero"),
        ("full", "full 1M"),
        ("pattern", "pattern 1M"),
        ("data", "data '1 2 3' size=1M"),
        ("sparse-random", "sparse-random 1M seed=1"),
        ("random", "random 1M seed=1"),
        ("readonly-memory", "-r memory 1M"),
        ("split", "split file1 file2 file3"),
        ("partitioning", "partitioning file1 file2"),
        ("tmpdisk", "tmpdisk 1M"),
        ("luks", "file encrypted-disk.img --filter=luks passphrase=123456"),
        ("xz", "--filter=xz file disk.xz"),
        ("gzip", "--filter=gzip file disk.img.gz"),
        ("tar", "file data.tar --filter=tar tar-entry=disk.img"),
        ("ext2", "--filter=ext2 file fs.img ext2file=/disks/disk.raw"),
        ("floppy", "floppy dir"),
        ("iso", "iso dir"),
        ("linuxdisk", "linuxdisk dir"),
        ("extentlist", "--filter=extentlist memory 1M extentlist=extents.txt"),
        ("ddrescue", "--filter=ddrescue memory 1M ddrescue-mapfile=disk.map"),
        ("cacheextents", "--filter=cacheextents memory 1M"),
        ("multi-conn", "--filter=multi-conn memory 1M multi-conn-mode=emulate"),
        ("exitlast", "--filter=exitlast memory 1M"),
        ("limit", "--filter=limit memory 1M"),
        ("rate", "--filter=rate memory 1M rate=100M"),
        ("retry", "--filter=retry memory 1M"),
        ("error-0", "--filter=error memory 1M error-rate=0%"),
]:
    probe("ops-" + name, args, NBDSH_OPS)

for name, args in [
        ("memory", "memory 1G"),
        ("file", "file disk.img"),
        ("partition", "--filter=partition file disk.img partition=1"),
        ("xz", "--filter=xz file disk.xz"),
        ("luks", "file encrypted-disk.img --filter=luks passphrase=123456"),
        ("floppy", "floppy dir"),
        ("partitioning", "partitioning file1 file2"),
]:
    probe("qemu-img-" + name, args,
          "qemu-img info --output=json \"$nbd\" | grep -v filename")

case("qemu-io-blocksize",
     run_probe("--filter=blocksize memory 1M minblock=4k",
               "qemu-io -f raw -c \"write -P 0x33 1 3\" -c \"read -P 0x33 1 3\" "
               "-c \"read -P 0 0 1\" -c \"read -P 0 4 4092\" \"$nbd\" | grep -v ops/sec"))
case("qemu-io-truncate-beyond",
     run_probe("--filter=truncate memory 1M truncate=1048577",
               "qemu-io -f raw -c \"write -P 0x33 1048576 1\" \"$nbd\" 2>&1 | grep -v ops/sec; "
               "qemu-io -f raw -c \"write -z 1048576 1\" \"$nbd\" 2>&1 | grep -v ops/sec"))
case("readonly-write-error",
     run_probe("-r memory 1M", "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\", 0)'"))
case("write-past-end",
     run_probe("memory 1M", "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\", 1048576)'"))
case("read-past-end",
     run_probe("memory 1M", "nbdsh -u \"$uri\" -c 'h.pread(2, 1048575)'"))
case("full-write-err",
     run_probe("full 1M", "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\", 0)'"))
case("full-zero",
     run_probe("full 1M", "nbdsh -u \"$uri\" -c 'h.zero(512, 0)'"))
case("full-fast-zero",
     run_probe("full 1M", "nbdsh -u \"$uri\" -c 'h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)'"))
case("null-fast-zero",
     run_probe("null 1M", "nbdsh -u \"$uri\" -c 'h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)'"))
case("file-fast-zero",
     run_probe("file disk.img", "nbdsh -u \"$uri\" -c 'h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)'"))
case("truncate-fast-zero",
     run_probe("--filter=truncate file disk.img truncate=5M",
               "nbdsh -u \"$uri\" -c 'h.zero(512, 4194304, nbd.CMD_FLAG_FAST_ZERO)' "
               "-c 'h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)'"))
case("copy-into-memory",
     run_probe("memory 4M", "nbdcopy disk.img \"$uri\" && nbdcopy \"$uri\" - | md5sum; " + MAP))
case("floppy-mdir",
     run_probe("floppy dir", "nbdcopy \"$uri\" fl.img") + " && mdir -i fl.img -/ ::")
case("iso-isoinfo",
     run_probe("iso dir", "nbdcopy \"$uri\" cd.iso") + " && isoinfo -R -f -i cd.iso")
case("linuxdisk-debugfs",
     run_probe("linuxdisk dir", "nbdcopy \"$uri\" ld.img") +
     " && debugfs -R 'ls -p /' ld.img 2>/dev/null | sed 's/^\\/[0-9]*\\//\\//' | cut -d/ -f1-3,6-")
case("partitioning-sfdisk",
     run_probe("partitioning file1 file2 file3", "nbdcopy \"$uri\" p.img") +
     " && sfdisk --dump p.img | grep -v -e '^label-id' -e '^device' | sed 's/^p.img//'")
case("partitioning-gpt-sfdisk",
     run_probe("partitioning file1 file2 partition-type=gpt", "nbdcopy \"$uri\" p.img") +
     " && sfdisk --dump p.img | grep -v -e '^label-id' -e '^device' -e uuid | sed 's/^p.img//'")
case("list-exports", run_probe("memory 1M", 'nbdinfo --list --json "$uri"'))
case("exportname-e", run_probe("-e foo memory 1M", 'nbdinfo --list "$uri"'))
case("dump-config-minor", "NBDKIT --dump-config | grep ^version_minor")
case("plugin-foo-version", "NBDKIT foo --version")
case("oldstyle", run_probe("-o memory 1M", INFO))
case("mask0", run_probe("--mask-handshake=0 memory 1M", INFO))
case("threads", run_probe("-t 1 memory 1M", MD5))
case("single-s",
     "NBDKIT -s memory 1M < /dev/null; echo rc=$?")
case("nbdsh-h-connect-command",
     "nbdsh -c 'h.connect_command([\"NBDKIT\", \"-s\", \"--exit-with-parent\", \"memory\", \"1M\"])' "
     "-c 'print(h.get_size())'")
case("run-without-U", "NBDKIT memory 1M --run 'echo $uri' | sed 's/socket=.*/socket=X/'")
case("sh-missing-method",
     "NBDKIT -U - sh - --run 'nbdinfo --size \"$uri\"' <<'EOF'\ncase \"$1\" in\n  get_size) echo 1M ;;\n  *) exit 2 ;;\nesac\nEOF")
case("info-address",
     "NBDKIT -U - info mode=address --run 'nbdcopy \"$uri\" - | tr -d \"\\0\" | head -c 4'")
case("info-exportname-list",
     "NBDKIT -U - -e foo info --run 'nbdinfo --list --json \"$uri\"'")
# A relative -P path names a file in the directory nbdkit started in (a
# daemon that changed directory first would write /pid.txt: look there
# too, so that the server is stopped either way).
case("pidfile-daemon",
     "NBDKIT -U sock -P pid.txt memory 1M; for i in 1 2 3 4 5 6 7 8 9 10; do "
     "test -s pid.txt -o -s /pid.txt && break; sleep 0.3; done; "
     "test -S sock && echo sock; test -s pid.txt && echo pidfile; "
     "nbdinfo --size 'nbd+unix:///?socket=sock'; "
     "p=$(cat pid.txt 2>/dev/null || cat /pid.txt); kill $p; "
     "test \"$(cat /pid.txt 2>/dev/null)\" = \"$p\" && rm -f /pid.txt; sleep 0.5; "
     "test -e sock && echo left || echo gone")


def make_mbr_disk(path, size):
    """A disk with one Linux partition from 1 MiB to the end, filled with
    a recognisable pattern and a hole in the middle."""
    data = bytearray(size)
    for i in range(0, size, 4096):
        if (i // 4096) % 4 == 1:
            continue
        block = (b"%08d" % i) * 512
        data[i:i + 4096] = block
    mbr = bytearray(512)
    start = 2048
    count = size // 512 - start
    mbr[0x1be:0x1be + 16] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0x83,
                                        b"\xfe\xff\xff", start, count)
    mbr[0x1fe:0x200] = b"\x55\xaa"
    data[0:512] = mbr
    with open(path, "wb") as f:
        f.write(data)
    # Punch a hole so extents differ from all-data.
    subprocess.run(["fallocate", "-p", "-o", str(2 * 1024 * 1024),
                    "-l", str(256 * 1024), path], check=False)


def sh(cmd, cwd):
    subprocess.run(cmd, shell=True, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_fixtures(d):
    make_mbr_disk(os.path.join(d, "disk.img"), 4 * 1024 * 1024)
    with open(os.path.join(d, "disk-odd.img"), "wb") as f:
        f.write(bytes(range(256)) * 40 + b"odd")
    for i, n in enumerate(["file1", "file2", "file3"]):
        with open(os.path.join(d, n), "wb") as f:
            f.write(bytes([65 + i]) * (700 + 100 * i))
    os.makedirs(os.path.join(d, "dir", "sub"))
    for n, t in [("a.txt", "hello\n"), ("b.bin", "x" * 5000), ("sub/c", "c\n")]:
        with open(os.path.join(d, "dir", n), "w") as f:
            f.write(t)
    os.makedirs(os.path.join(d, "exports"))
    sh("xz -k -c disk.img > disk.xz; cp disk.xz disk.img.xz; gzip -k -c disk.img > disk.img.gz", d)
    sh("mkdir -p t/some && cp disk.img t/some/ && tar -C t -cf file.tar some/disk.img", d)
    sh("tar -cf data.tar disk.img; tar -czf filename.tar.gz disk.img; tar -cJf filename.tar.xz disk.img", d)
    sh("mkdir -p fsroot/disks && cp disk.img fsroot/disks/disk.raw && "
       "mke2fs -q -t ext2 -d fsroot fs.img 8M", d)
    sh("qemu-img create --object secret,id=sec0,data=123456 -f luks "
       "-o key-secret=sec0 encrypted-disk.img 1M && printf 123456 > secret", d)
    with open(os.path.join(d, "disk.map"), "w") as f:
        f.write("# Mapfile. Created by GNU ddrescue version 1.25\n"
                "# current_pos  current_status  current_pass\n"
                "0x00000000     +               1\n"
                "#      pos        size  status\n"
                "0x00000000  0x00010000  +\n"
                "0x00010000  0x00001000  -\n"
                "0x00011000  0x003EF000  +\n")
    with open(os.path.join(d, "extents.txt"), "w") as f:
        f.write("0 65536\n1048576 1M\n3M 4096 hole,zero\n")


def normalise(text, binary, tmp):
    text = text.replace(tmp, "TMP")
    text = text.replace(binary, "NBDKIT")
    text = re.sub(r"/tmp/nbdkit[A-Za-z0-9_.]*/socket", "SOCKET", text)
    text = re.sub(r"/tmp/[A-Za-z0-9_.]+/(socket|sock)", "SOCKET", text)
    text = re.sub(r"\bnbdkit\[\d+\]", "nbdkit[PID]", text)
    # Random identifiers.
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                  "UUID", text)
    # Where things are installed, and which version (1.32.5 vs 1.36.2).
    text = re.sub(r"/usr/lib/x86_64-linux-gnu/nbdkit/(plugins|filters)/"
                  r"nbdkit-[a-z0-9-]+-(plugin|filter)\.so", "NBDKIT", text)
    text = text.replace(" (nbdkit-rs 0.1.0)", "")
    text = re.sub(r"^version_extra=.*\n", "", text, flags=re.M)
    text = re.sub(r"\b1\.(32\.5|36\.2)\b", "VERSION", text)
    text = re.sub(r"^version_minor=3[26]$", "version_minor=MINOR", text, flags=re.M)
    return text


def run_one(binary, fixtures, name, cmd, stdin, timeout):
    work = tempfile.mkdtemp(prefix="sweep-")
    try:
        cwd = os.path.join(work, "w")
        shutil.copytree(fixtures, cwd, symlinks=True)
        full = cmd.replace("NBDKIT", binary)
        env = dict(os.environ)
        env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"
        env["LC_ALL"] = "C"
        p = subprocess.Popen(["/bin/bash", "-c", full], cwd=cwd, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate((stdin or "").encode(), timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, err = p.communicate()
            rc = "TIMEOUT"
        out = normalise(out.decode("utf-8", "replace"), binary, cwd)
        err = normalise(err.decode("utf-8", "replace"), binary, cwd)
        return out, err, rc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours", nargs="?",
                    default=os.path.join(HERE, "..", "target", "release", "nbdkit"))
    ap.add_argument("--ref", default="/usr/bin/nbdkit")
    ap.add_argument("-k", default="")
    ap.add_argument("--show-same", action="store_true")
    ap.add_argument("--timeout", type=float, default=20)
    args = ap.parse_args()
    ours = os.path.abspath(args.ours)
    if not os.path.exists(args.ref):
        print("SKIP: reference %s not installed" % args.ref)
        return 0
    fixtures = tempfile.mkdtemp(prefix="sweep-fixtures-")
    make_fixtures(fixtures)
    ndiff = 0
    try:
        for name, cmd, stdin, _ in CASES:
            if args.k and not re.search(args.k, name):
                continue
            a = run_one(ours, fixtures, name, cmd, stdin, args.timeout)
            b = run_one(args.ref, fixtures, name, cmd, stdin, args.timeout)
            same = a == b
            if not same:
                ndiff += 1
            if same and not args.show_same:
                print("same  %s" % name)
                continue
            print("=" * 70)
            print("%s  %s" % ("same" if same else "DIFF", name))
            print("cmd: %s" % cmd)
            if a[2] != b[2]:
                print("rc: ours %s ref %s" % (a[2], b[2]))
            for label, x, y in [("stdout", a[0], b[0]), ("stderr", a[1], b[1])]:
                if x == y:
                    continue
                print("".join(difflib.unified_diff(
                    y.splitlines(True), x.splitlines(True),
                    "%s ref" % label, "%s ours" % label, n=2)))
            sys.stdout.flush()
    finally:
        shutil.rmtree(fixtures, ignore_errors=True)
    print("%d differences" % ndiff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
