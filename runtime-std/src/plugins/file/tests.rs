//! Unit tests of the file plugin.

use core::sync::atomic::Ordering;
use std::fs::File as StdFile;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nbdkit_core::backend::{Exports, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};
use nix::sys::stat::Mode;

use super::*;
use core::sync::atomic::AtomicUsize;

/// A temporary path, removed (file or directory tree) when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str) -> Temp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Temp(std::env::temp_dir().join(format!(
            "nbdkit-rs-file-test-{}-{n}-{tag}",
            std::process::id()
        )))
    }
    fn file(tag: &str, size: u64) -> Temp {
        let t = Temp::new(tag);
        let f = StdFile::create(&t.0).unwrap();
        f.set_len(size).unwrap();
        t
    }
    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn configure(params: &[(&str, &str)]) -> Result<File> {
    let mut p = File::default();
    for (k, v) in params {
        p.config(k, v)?;
    }
    p.config_complete()?;
    Ok(p)
}

fn open(p: &File, name: &str, readonly: bool) -> Result<Box<dyn Handle>> {
    p.open(&OpenArgs {
        readonly,
        export_name: name,
        is_tls: false,
        peer: &nbdkit_core::backend::Peer::Unknown,
    })
}

fn msg(r: Result<File>) -> String {
    r.err().and_then(|e| e.message).unwrap_or_default()
}

fn read(h: &dyn Handle, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xaau8; len];
    h.pread(&mut buf, offset, Flags::NONE).unwrap();
    buf
}

#[test]
fn config_errors() {
    let f = Temp::file("cfg", 4096);
    let d = Temp::new("cfgdir");
    std::fs::create_dir(&d.0).unwrap();
    assert_eq!(
        msg(configure(&[])),
        "you must supply either [file=]<FILENAME> or dir=<DIRNAME> parameter after the \
         plugin name on the command line"
    );
    assert_eq!(
        msg(configure(&[("file", f.s()), ("dir", d.s())])),
        "file= and dir= cannot be used at the same time"
    );
    assert_eq!(
        msg(configure(&[("file", f.s()), ("cache", "foo")])),
        "unknown cache mode: foo"
    );
    assert_eq!(
        msg(configure(&[("file", f.s()), ("fadvise", "foo")])),
        "unknown fadvise mode: foo"
    );
    assert_eq!(msg(configure(&[("x", "1")])), "unknown parameter 'x'");
    assert_eq!(
        msg(configure(&[("file", f.s()), ("rdelay", "1")])),
        "add --filter=delay on the command line"
    );
    assert_eq!(
        msg(configure(&[("file", "/nonexistent-nbdkit-rs")])),
        "realpath: /nonexistent-nbdkit-rs: No such file or directory"
    );
    assert_eq!(
        msg(configure(&[("file", "")])),
        "cannot resolve a null or empty path"
    );
    assert_eq!(
        msg(configure(&[("file", d.s())])),
        format!("use dir= to serve files within {}", d.s())
    );
    assert_eq!(
        msg(configure(&[("dir", f.s())])),
        format!("expecting a directory: {}", f.s())
    );
    assert!(
        msg(configure(&[("file", "/dev/null")])).starts_with("file is not regular or block device")
    );
    assert!(msg(configure(&[("fd", "x")])).contains("fd"));
    assert!(msg(configure(&[("fd", "-1")])).contains("fd"));
    // A later value replaces an earlier one.
    configure(&[
        ("file", d.s()),
        ("file", f.s()),
        ("cache", "none"),
        ("cache", "default"),
    ])
    .unwrap();
}

#[test]
fn round_trip_and_flush() {
    let f = Temp::file("rw", 1 << 20);
    for cache in ["default", "none"] {
        for fadvise in ["normal", "random", "sequential"] {
            let p = configure(&[("file", f.s()), ("cache", cache), ("fadvise", fadvise)]).unwrap();
            let h = open(&p, "ignored", false).unwrap();
            assert_eq!(h.get_size().unwrap(), 1 << 20);
            assert!(h.can_write().unwrap());
            assert_eq!(h.can_fua().unwrap(), Support::Native);
            assert_eq!(h.can_zero().unwrap(), Support::Native);
            assert!(!h.can_fast_zero().unwrap());
            assert!(h.can_multi_conn().unwrap());
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
            for i in 0..10u64 {
                h.pwrite(&data, 12345 + i * 70_000, Flags::NONE).unwrap();
            }
            h.pwrite(&data, 12345, Flags::FUA).unwrap();
            assert_eq!(read(&*h, 12345, data.len()), data);
            h.flush(Flags::NONE).unwrap();
            h.cache(1 << 20, 0, Flags::NONE).unwrap();
            // Out of range offsets are refused, not a panic.
            assert!(h.pread(&mut [0u8; 4], u64::MAX - 1, Flags::NONE).is_err());
            assert!(h.pwrite(&[0u8; 4], u64::MAX - 1, Flags::NONE).is_err());
        }
    }
    // The data reached the file.
    let bytes = std::fs::read(&f.0).unwrap();
    assert_eq!(bytes[12345], 1);
}

#[test]
fn read_past_eof_is_eio() {
    let f = Temp::file("shrink", 8192);
    let p = configure(&[("file", f.s())]).unwrap();
    let h = open(&p, "", false).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.0)
        .unwrap()
        .set_len(100)
        .unwrap();
    let mut buf = [0u8; 4096];
    let e = h.pread(&mut buf, 4096, Flags::NONE).unwrap_err();
    assert_eq!(e.errno, Errno::EIO);
    let e = h.pread(&mut buf, 0, Flags::NONE).unwrap_err();
    assert_eq!(e.errno, Errno::EIO);
}

#[test]
fn trim_and_zero_read_as_zeroes() {
    let f = Temp::file("zero", 1 << 20);
    let p = configure(&[("file", f.s())]).unwrap();
    let h = open(&p, "", false).unwrap();
    assert!(h.can_trim().unwrap());
    let ones = vec![1u8; 1 << 20];
    let cases = [
        (Flags::NONE, true),
        (Flags::MAY_TRIM, true),
        (Flags::FUA, true),
        (Flags::FAST_ZERO, true),
        (Flags::MAY_TRIM | Flags::FAST_ZERO, true),
        (Flags::NONE, false),
        (Flags::FUA, false),
    ];
    for (flags, zero) in cases {
        h.pwrite(&ones, 0, Flags::NONE).unwrap();
        let r = if zero {
            h.zero(65536 + 100, 4096 + 7, flags)
        } else {
            h.trim(65536 + 100, 4096 + 7, flags)
        };
        match r {
            Ok(()) => {
                let b = read(&*h, 0, 1 << 20);
                assert!(b[..4096 + 7].iter().all(|&x| x == 1));
                assert!(b[4096 + 7..4096 + 7 + 65536 + 100].iter().all(|&x| x == 0));
                assert!(b[4096 + 7 + 65536 + 100..].iter().all(|&x| x == 1));
            }
            // Only zero may refuse, and only with ENOTSUP.
            Err(e) => assert!(zero && e.errno == Errno::ENOTSUP, "{e:?}"),
        }
    }
    assert_eq!(h.get_size().unwrap(), 1 << 20);
    h.zero(0, 0, Flags::NONE).unwrap();
    h.trim(0, 0, Flags::NONE).unwrap();
    assert!(h.zero(10, u64::MAX - 5, Flags::NONE).is_err());
}

fn extent_list(h: &dyn Handle, count: u64, offset: u64, flags: Flags) -> Vec<(u64, u64, u32)> {
    let mut e = Extents::new(offset, offset + count);
    h.extents(count, offset, flags, &mut e).unwrap();
    e.as_slice()
        .iter()
        .map(|x| (x.offset, x.length, x.flags))
        .collect()
}

#[test]
fn extents_report_holes() {
    const M: u64 = 1 << 20;
    let f = Temp::file("sparse", 8 * M);
    let p = configure(&[("file", f.s())]).unwrap();
    let h = open(&p, "", false).unwrap();
    h.pwrite(&vec![1u8; M as usize], 2 * M, Flags::NONE)
        .unwrap();
    if !h.can_extents().unwrap() {
        return; // The file system cannot report holes.
    }
    let e = extent_list(&*h, 8 * M, 0, Flags::NONE);
    // Contiguous, covering the request, and ending with data followed
    // by a hole (whatever the file system's allocation granularity).
    assert_eq!(e.first().unwrap().0, 0);
    assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), 8 * M);
    let data: Vec<_> = e.iter().filter(|x| x.2 == 0).collect();
    assert!(!data.is_empty());
    assert!(data.iter().all(|x| x.0 <= 2 * M && x.0 + x.1 >= 3 * M));
    if e.len() == 3 {
        assert_eq!(e[0], (0, 2 * M, STATE_HOLE | STATE_ZERO));
        assert_eq!(e[1], (2 * M, M, 0));
        assert_eq!(e[2], (3 * M, 5 * M, STATE_HOLE | STATE_ZERO));
    }
    assert_eq!(e.last().unwrap().2, STATE_HOLE | STATE_ZERO);
    // REQ_ONE gives one extent.
    assert_eq!(extent_list(&*h, 8 * M, 0, Flags::REQ_ONE).len(), 1);
    // A subrange starts at its offset.
    let e = extent_list(&*h, 100, 2 * M + 10, Flags::NONE);
    assert_eq!(e, [(2 * M + 10, 100, 0)]);
    // Trim makes a hole again.
    h.trim(M, 2 * M, Flags::NONE).unwrap();
    let e = extent_list(&*h, 8 * M, 0, Flags::NONE);
    assert!(e.iter().all(|x| x.2 == STATE_HOLE | STATE_ZERO), "{e:?}");
}

#[test]
fn dir_exports() {
    let d = Temp::new("dir");
    std::fs::create_dir(&d.0).unwrap();
    std::fs::write(d.0.join("a"), b"hello").unwrap();
    std::fs::write(d.0.join("b"), vec![7u8; 4096]).unwrap();
    std::fs::create_dir(d.0.join("sub")).unwrap();
    std::os::unix::fs::symlink("a", d.0.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent-nbdkit-rs", d.0.join("dangling")).unwrap();
    std::os::unix::fs::symlink("/dev/null", d.0.join("null")).unwrap();
    nix::unistd::mkfifo(&d.0.join("fifo"), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let p = configure(&[("dir", d.s())]).unwrap();

    let mut ex = Exports::default();
    p.list_exports(false, false, &mut ex).unwrap();
    assert!(!ex.use_default);
    let mut names: Vec<_> = ex.list.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "link"]);
    assert_eq!(p.default_export(false, false).unwrap(), None);

    let h = open(&p, "a", false).unwrap();
    assert_eq!(h.get_size().unwrap(), 5);
    assert_eq!(read(&*h, 0, 5), b"hello");
    assert_eq!(open(&p, "link", true).unwrap().get_size().unwrap(), 5);
    assert_eq!(open(&p, "b", false).unwrap().get_size().unwrap(), 4096);
    for bad in [
        "", "sub", "dangling", "null", "fifo", "a/b", "../x", ".", "..", "missing",
    ] {
        // Opening a FIFO read-only must not block.
        assert!(open(&p, bad, false).is_err(), "{bad}");
        assert!(open(&p, bad, true).is_err(), "{bad}");
    }
    assert_eq!(
        open(&p, "fifo", true).err().unwrap().message.unwrap(),
        "file is not regular or block device: fifo"
    );
    assert_eq!(
        open(&p, "sub", false).err().unwrap().message.unwrap(),
        "file is not regular or block device: sub"
    );
    assert_eq!(
        open(&p, "missing", true).err().unwrap().message.unwrap(),
        "open: missing: No such file or directory"
    );
    assert_eq!(
        open(&p, "x/y", false).err().unwrap().message.unwrap(),
        "exportname cannot contain /"
    );

    // file= mode lists the default export.
    let p = configure(&[("file", d.0.join("a").to_str().unwrap())]).unwrap();
    let mut ex = Exports::default();
    p.list_exports(false, false, &mut ex).unwrap();
    assert!(ex.use_default && ex.list.is_empty());
    assert_eq!(p.default_export(false, false).unwrap(), Some(String::new()));
}

#[test]
fn readonly_refuses_writes() {
    let f = Temp::file("ro", 65536);
    let p = configure(&[("file", f.s())]).unwrap();
    let h = open(&p, "", true).unwrap();
    assert!(!h.can_write().unwrap());
    assert_eq!(
        h.pwrite(&[1], 0, Flags::NONE).unwrap_err().errno,
        Errno::EROFS
    );
    assert_eq!(h.zero(512, 0, Flags::NONE).unwrap_err().errno, Errno::EROFS);
    assert_eq!(h.trim(512, 0, Flags::NONE).unwrap_err().errno, Errno::EROFS);
    assert_eq!(read(&*h, 0, 16), [0u8; 16]);
}

#[test]
fn fd_modes() {
    let f = Temp::file("fd", 65536);
    let d = Temp::new("dirfd");
    std::fs::create_dir(&d.0).unwrap();
    std::fs::write(d.0.join("x"), b"xyz").unwrap();

    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.0)
        .unwrap();
    let p = configure(&[("fd", &rw.as_raw_fd().to_string())]).unwrap();
    let h1 = open(&p, "", false).unwrap();
    let h2 = open(&p, "", false).unwrap();
    assert!(h1.can_write().unwrap());
    h1.pwrite(b"abc", 100, Flags::NONE).unwrap();
    assert_eq!(read(&*h2, 100, 3), b"abc");
    drop((h1, h2));

    let ro = StdFile::open(&f.0).unwrap();
    let p = configure(&[("fd", &ro.as_raw_fd().to_string())]).unwrap();
    let h = open(&p, "", false).unwrap();
    assert!(!h.can_write().unwrap());
    assert_eq!(read(&*h, 100, 3), b"abc");

    let dir = StdFile::open(&d.0).unwrap();
    let dirfd = dir.as_raw_fd().to_string();
    assert!(msg(configure(&[("fd", &dirfd)])).contains("dirfd="));
    assert!(
        msg(configure(&[("dirfd", &ro.as_raw_fd().to_string())])).contains("expecting a directory")
    );
    let p = configure(&[("dirfd", &dirfd)]).unwrap();
    drop(dir); // The plugin keeps its own duplicate.
    let mut ex = Exports::default();
    p.list_exports(false, false, &mut ex).unwrap();
    assert_eq!(ex.list.len(), 1);
    assert_eq!(ex.list[0].name, "x");
    assert_eq!(read(&*open(&p, "x", false).unwrap(), 0, 3), b"xyz");
    assert!(msg(configure(&[("fd", "1000000")])).contains("Bad file descriptor"));
}

/// Block devices: set `NBDKIT_RS_TEST_BLOCKDEV` to a scratch device
/// (its contents are destroyed), e.g. a loop device.
#[test]
fn block_device() {
    let Ok(dev) = std::env::var("NBDKIT_RS_TEST_BLOCKDEV") else {
        return;
    };
    let p = configure(&[("file", &dev)]).unwrap();
    let h = open(&p, "", false).unwrap();
    let size = h.get_size().unwrap();
    assert!(size >= 1 << 20);
    h.pwrite(&vec![1u8; 1 << 20], 0, Flags::NONE).unwrap();
    for flags in [Flags::NONE, Flags::MAY_TRIM, Flags::FAST_ZERO] {
        h.pwrite(&vec![1u8; 65536], 0, Flags::NONE).unwrap();
        h.zero(8192, 4096, flags).unwrap();
        let b = read(&*h, 0, 65536);
        assert!(b[..4096].iter().all(|&x| x == 1));
        assert!(b[4096..12288].iter().all(|&x| x == 0));
        assert!(b[12288..].iter().all(|&x| x == 1));
    }
    // Unaligned zeroing falls back to the server.
    assert_eq!(
        h.zero(100, 1, Flags::NONE).unwrap_err().errno,
        Errno::ENOTSUP
    );
    h.trim(65536, 0, Flags::NONE).unwrap();
    h.trim(100, 1, Flags::NONE).unwrap();
    h.flush(Flags::NONE).unwrap();
    let _ = h.is_rotational().unwrap();
    let e = extent_list(&*h, size, 0, Flags::NONE);
    assert_eq!(e.first().map(|x| x.0), Some(0));
    assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), size);
}

/// A file `size` bytes long holding a position-dependent pattern, in `dir`.
fn patterned_in(dir: &std::path::Path, tag: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    let p = dir.join(format!("nbdkit-rs-file-now-{}-{tag}", std::process::id()));
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// `pread_now` gives the bytes `pread` gives, or `None` having changed
/// nothing the caller keeps (an ext4 or other disk file: served when
/// cached, refused after the cache was dropped; tmpfs: always served).
#[test]
fn pread_now_reads_what_pread_reads_or_nothing() {
    for dir in ["/dev/shm", "/tmp"] {
        let dir = std::path::Path::new(dir);
        if !dir.is_dir() {
            continue;
        }
        let (p, data) = patterned_in(dir, "r", 256 << 10);
        let _t = Temp(p.clone());
        let f = configure(&[("file", p.to_str().unwrap())]).unwrap();
        let h = open(&f, "", false).unwrap();
        for (off, len) in [
            (0usize, 4096usize),
            (5, 70000),
            (100_000, 1),
            (0, 256 << 10),
        ] {
            let mut buf = vec![0xaau8; len];
            match h.pread_now(&mut buf, off as u64, Flags::NONE) {
                Some(r) => {
                    r.unwrap();
                    assert_eq!(buf, data[off..off + len], "{dir:?} {off}+{len}");
                }
                None => assert_eq!(read(&*h, off as u64, len), data[off..off + len]),
            }
        }
        // Past the end: declined (a short read) or pread's EIO, never Ok.
        let mut buf = vec![0u8; 4096];
        let r = h.pread_now(&mut buf, (256 << 10) - 100, Flags::NONE);
        assert!(matches!(r, None | Some(Err(_))), "{dir:?}");
    }
}

/// On tmpfs, `pwrite_now` writes (never with FUA); elsewhere it declines;
/// cache=none never serves either at once.
#[test]
fn pwrite_now_only_in_memory_and_without_fua() {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        let (p, _) = patterned_in(shm, "w", 64 << 10);
        let _t = Temp(p.clone());
        let f = configure(&[("file", p.to_str().unwrap())]).unwrap();
        let h = open(&f, "", false).unwrap();
        if h.pwrite_now(b"now!", 1000, Flags::NONE).is_some() {
            assert_eq!(read(&*h, 1000, 4), b"now!");
            assert!(h.pwrite_now(b"fua!", 2000, Flags::FUA).is_none());
            assert_eq!(read(&*h, 2000, 4), data_at(&p, 2000, 4));
        }
        let f = configure(&[("file", p.to_str().unwrap()), ("cache", "none")]).unwrap();
        let h = open(&f, "", false).unwrap();
        assert!(h.pwrite_now(b"none", 0, Flags::NONE).is_none());
        let mut buf = [0u8; 4];
        assert!(h.pread_now(&mut buf, 0, Flags::NONE).is_none());
    }
    let (p, data) = patterned_in(&std::env::temp_dir(), "wd", 64 << 10);
    let _t = Temp(p.clone());
    let f = configure(&[("file", p.to_str().unwrap())]).unwrap();
    let h = open(&f, "", false).unwrap();
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statfs fills the zeroed struct.
    let in_memory = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0
        && (st.f_type as i64 == 0x0102_1994 || st.f_type as i64 == 0x8584_58f6);
    if !in_memory {
        assert!(h.pwrite_now(b"disk", 0, Flags::NONE).is_none());
        assert_eq!(read(&*h, 0, 4), data[..4]);
    }
}

fn data_at(p: &std::path::Path, off: usize, len: usize) -> Vec<u8> {
    std::fs::read(p).unwrap()[off..off + len].to_vec()
}
