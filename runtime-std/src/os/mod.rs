//! Everything that differs between the operating systems the server runs
//! on (Linux and FreeBSD), one module per concern. Each function here has
//! a Linux and a FreeBSD body behind `cfg(target_os = ...)`, or says
//! clearly that the operating system has no equivalent; the rest of the
//! crate calls these functions and carries no `cfg(target_os)` of its own.
//!
//! | concern | Linux | FreeBSD |
//! | --- | --- | --- |
//! | [`peercred`] | `SO_PEERCRED` | `LOCAL_PEERCRED` (`xucred`, pid since 13) |
//! | [`pdeathsig`] (`--exit-with-parent`) | `prctl(PR_SET_PDEATHSIG)` | `procctl(PROC_PDEATHSIG_CTL)` |
//! | [`fspace`] (trim, zero) | `fallocate` punch hole, zero range, allocate | `fspacectl(SPACECTL_DEALLOC)`, `posix_fallocate`; no zero range |
//! | [`blockdev`] | `BLKSSZGET`, `BLKZEROOUT`, `/sys/dev/block` | none: FreeBSD has no block devices (disks are character devices, which `file` refuses, as nbdkit does) |
//! | [`writeback`] (`cache=none`) | `sync_file_range` | none: `POSIX_FADV_DONTNEED` alone |
//! | [`locks`] (ondemand) | open file description locks (`F_OFD_SETLK`) | `flock(2)`, which also belongs to the open file description |
//! | [`selinux`] (`--selinux-label`) | `/proc/thread-self/attr/sockcreate` | error: no SELinux |
//! | [`vsock`] (`--vsock`, `nbdkit_peer_name`) | `AF_VSOCK` | error: no `AF_VSOCK` |
//! | [`errno`] (the core's `Errno` is Linux-numbered; C plugins use the OS's) | identity | converted by name |
//!
//! Portable already, so not here: `SEEK_DATA`/`SEEK_HOLE` (same calls and
//! errors on both), `posix_fadvise`, `mlockall` (`--swap`), `getrandom`,
//! socket activation (`LISTEN_PID`/`LISTEN_FDS` is an environment
//! protocol), `accept4`, `syslog`, `dlopen` and the C code's `errno`
//! (through nix). Nothing opens files with `O_DIRECT`.
//! Portable, but here to keep their one `unsafe` call in one place:
//! [`tmpfile`] (`mkstemp`, whose nix wrapper returns a raw descriptor) and
//! [`localtime`] (`localtime_r`, which nothing wraps), [`services`]
//! (`getservbyname`, which nothing wraps).
//! The only `/proc` use is the SELinux socket label (Linux only) and the
//! only `/sys` use is a block device's rotational flag (Linux only).

pub(crate) mod blockdev;
pub(crate) mod errno;
pub(crate) mod fspace;
pub(crate) mod localtime;
pub(crate) mod locks;
pub(crate) mod pdeathsig;
pub(crate) mod peercred;
pub(crate) mod selinux;
pub(crate) mod services;
pub(crate) mod tmpfile;
pub(crate) mod vsock;
pub(crate) mod writeback;

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
compile_error!("nbdkit-runtime-std runs on Linux and FreeBSD; see runtime-std/src/os/mod.rs");
