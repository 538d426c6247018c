//! The luks filter: serve the decrypted contents of a LUKS1 or LUKS2
//! encrypted disk.
//!
//! Parameters:
//! - `passphrase=SECRET` (required), with nbdkit's password syntax:
//!   the literal text, `-` to ask on the terminal, `+FILE` to read it from
//!   a file, `-FD` to read it from an inherited file descriptor.
//!
//! Key slots may use PBKDF2 (SHA-1, SHA-256, SHA-512) or Argon2i/id; the
//! data may be AES in XTS (plain, plain64), CBC (plain, plain64, essiv) or
//! ECB mode. Each connection reads the header through the layer below and
//! unlocks a key slot in `prepare`. Reads decrypt and writes encrypt whole
//! sectors; unaligned writes read, modify and write the edge sectors under
//! one lock shared by all connections. Zeroing writes encrypted zeroes;
//! trim and extents are not offered (they would leak or corrupt data).

mod crypto;
mod header;

use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};
use nbdkit_core::errno::Errno;

use header::{Header, Volume};

/// The luks filter.
#[derive(Debug, Default)]
pub struct Luks {
    passphrase: Option<Arc<Vec<u8>>>,
    write_lock: Arc<Mutex<()>>,
}

/// The longest passphrase read from a file or descriptor.
const MAX_PASSWORD: u64 = 64 * 1024;

fn strip_newline(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

fn errno_desc(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// nbdkit_read_password.
pub(crate) fn read_password(value: &str) -> Result<Vec<u8>> {
    if value == "-" {
        return read_password_tty();
    }
    if let Some(file) = value.strip_prefix('+') {
        let f = std::fs::File::open(file)
            .map_err(|e| Error::config(format!("open {file}: {}", errno_desc(&e))))?;
        let mut v = Vec::new();
        f.take(MAX_PASSWORD)
            .read_to_end(&mut v)
            .map_err(|e| Error::config(format!("read {file}: {}", errno_desc(&e))))?;
        return Ok(strip_newline(v));
    }
    if let Some(fd) = value.strip_prefix('-') {
        let fd: i32 = fd
            .parse()
            .map_err(|_| Error::config(format!("could not parse file descriptor: {value}")))?;
        if fd <= 2 {
            return Err(Error::config(
                "cannot use password -FD for stdin/stdout/stderr",
            ));
        }
        // SAFETY: the user handed this descriptor to nbdkit for the
        // password; it is read once and closed, as nbdkit does.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut v = Vec::new();
        f.take(MAX_PASSWORD)
            .read_to_end(&mut v)
            .map_err(|e| Error::config(format!("read: {}", errno_desc(&e))))?;
        return Ok(strip_newline(v));
    }
    Ok(value.as_bytes().to_vec())
}

fn read_password_tty() -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if !nix::unistd::isatty(libc::STDIN_FILENO).unwrap_or(false) {
        return Err(Error::config(
            "stdin is not a tty, cannot read password interactively",
        ));
    }
    eprint!("password: ");
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::os::fd::AsFd;
    let old = tcgetattr(stdin.as_fd()).ok();
    if let Some(old) = &old {
        let mut t = old.clone();
        t.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &t);
    }
    let mut line = String::new();
    let r = stdin.read_line(&mut line);
    if let Some(old) = &old {
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, old);
    }
    eprintln!();
    r.map_err(|e| Error::config(format!("could not read password from stdin: {e}")))?;
    Ok(strip_newline(line.into_bytes()))
}

impl Filter for Luks {
    fn name(&self) -> &'static str {
        "luks"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit luks filter")
    }

    fn config_help(&self) -> &'static str {
        "passphrase=<SECRET>      Secret passphrase."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "passphrase" {
            return Ok(false);
        }
        self.passphrase = Some(Arc::new(read_password(value)?));
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.passphrase.is_none() {
            return Err(Error::config("LUKS \"passphrase\" parameter is missing"));
        }
        Ok(())
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        let pass = self
            .passphrase
            .clone()
            .ok_or_else(|| Error::config("LUKS \"passphrase\" parameter is missing"))?;
        Ok(Box::new(LuksHandle {
            pass,
            write_lock: Arc::clone(&self.write_lock),
            vol: OnceLock::new(),
        }))
    }
}

/// A connection's unlocked volume.
struct Open {
    vol: Volume,
    /// Decrypted size: whole sectors only.
    size: u64,
}

struct LuksHandle {
    pass: Arc<Vec<u8>>,
    write_lock: Arc<Mutex<()>>,
    vol: OnceLock<Open>,
}

fn not_open() -> Error {
    Error::msg(Errno::EIO, "luks: the volume is not open")
}

/// The largest bounce buffer allocated at once.
const CHUNK: u64 = 4 << 20;

impl LuksHandle {
    fn open(&self) -> Result<&Open> {
        self.vol.get().ok_or_else(not_open)
    }

    /// Read and decrypt whole sectors `[start, start + buf.len())` of the
    /// decrypted disk.
    fn read_sectors(&self, o: &Open, next: &Context, buf: &mut [u8], start: u64) -> Result<()> {
        next.pread(buf, o.vol.offset + start, Flags::NONE)?;
        o.vol
            .cipher
            .decrypt(buf, o.vol.sector_size, start / 512 + o.vol.iv_tweak);
        Ok(())
    }

    fn write_sectors(
        &self,
        o: &Open,
        next: &Context,
        buf: &mut [u8],
        start: u64,
        flags: Flags,
    ) -> Result<()> {
        o.vol
            .cipher
            .encrypt(buf, o.vol.sector_size, start / 512 + o.vol.iv_tweak);
        next.pwrite(buf, o.vol.offset + start, flags)
    }
}

impl FilterHandle for LuksHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let disk = next.size()?;
        let read = |buf: &mut [u8], off: u64| next.pread(buf, off, Flags::NONE);
        let header = Header::read(&read, disk)?;
        let vol = header.unlock(&self.pass, &read, disk)?;
        if vol.offset > disk {
            return Err(Error::msg(
                Errno::EINVAL,
                "disk is too small to be LUKS-encrypted",
            ));
        }
        let avail = disk - vol.offset;
        let size = vol.size.map_or(avail, |s| s.min(avail));
        let size = size - size % vol.sector_size as u64;
        let _ = self.vol.set(Open { vol, size });
        Ok(())
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.open()?.size)
    }

    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        // Whole sectors, as nbdkit advertises; unaligned requests from
        // clients that ignore this still work (read-modify-write).
        let ss = self.open()?.vol.sector_size as u32;
        let below = next.block_size()?;
        Ok(Some(BlockSize {
            minimum: ss,
            preferred: below.map_or(ss, |b| b.preferred.max(ss)),
            maximum: below.map_or(u32::MAX, |b| b.maximum.max(ss) / ss * ss),
        }))
    }

    fn can_trim(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_zero(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Emulate)
    }

    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let o = self.open()?;
        let ss = o.vol.sector_size as u64;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let a0 = pos - pos % ss;
            let a1 = (a0 + CHUNK).min(end.div_ceil(ss) * ss);
            let mut tmp = vec![0u8; (a1 - a0) as usize];
            self.read_sectors(o, next, &mut tmp, a0)?;
            let n = (a1.min(end) - pos) as usize;
            let from = (pos - a0) as usize;
            let to = (pos - offset) as usize;
            buf[to..to + n].copy_from_slice(&tmp[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let o = self.open()?;
        let ss = o.vol.sector_size as u64;
        let end = offset + buf.len() as u64;
        // Edge sectors are read, modified and written back: hold the lock
        // so that no other write to them slips in between.
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut pos = offset;
        while pos < end {
            let a0 = pos - pos % ss;
            let a1 = (a0 + CHUNK).min(end.div_ceil(ss) * ss);
            let mut tmp = vec![0u8; (a1 - a0) as usize];
            let n = (a1.min(end) - pos) as usize;
            let from = (pos - a0) as usize;
            if from != 0 || n != tmp.len() {
                self.read_sectors(o, next, &mut tmp, a0)?;
            }
            let src = (pos - offset) as usize;
            tmp[from..from + n].copy_from_slice(&buf[src..src + n]);
            self.write_sectors(o, next, &mut tmp, a0, flags)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn trim(&self, _next: &Context, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::ENOTSUP))
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let o = self.open()?;
        let ss = o.vol.sector_size as u64;
        let a0 = offset - offset % ss;
        let a1 = (offset + count).div_ceil(ss) * ss;
        next.cache(a1 - a0, o.vol.offset + a0, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn password_forms() {
        assert_eq!(read_password("abc").unwrap(), b"abc");
        let dir = std::env::temp_dir().join(format!("luks-pw-{}", std::process::id()));
        std::fs::write(&dir, "from file\n").unwrap();
        assert_eq!(
            read_password(&format!("+{}", dir.display())).unwrap(),
            b"from file"
        );
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            read_password("+/nonexistent/x").unwrap_err().to_string(),
            "open /nonexistent/x: No such file or directory"
        );
        assert!(read_password("-1").is_err());
    }

    #[test]
    fn passphrase_is_required() {
        let mut l = Luks::default();
        assert_eq!(
            l.config_complete().unwrap_err().to_string(),
            "LUKS \"passphrase\" parameter is missing"
        );
    }
}
