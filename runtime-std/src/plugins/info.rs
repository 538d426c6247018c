//! `info`: serve information about the client and the server as the disk.
//!
//! Parameter: `[mode=]MODE` (case-insensitive), one of
//!
//! - `exportname` (or `export-name`, the default): the export name the
//!   client asked for;
//! - `base64exportname` (or `base64-export-name`): the export name decoded
//!   from base64 (a bad encoding fails the open);
//! - `address`: the client's address as `IP:PORT` (`[IP]:PORT` for IPv6),
//!   or `unix` for a Unix socket;
//! - `time`, `uptime`, `conntime`: 12 bytes, a big-endian 64-bit count of
//!   seconds and a big-endian 32-bit count of microseconds: the wall
//!   clock, the time since the server started, or since the connection
//!   opened. They are recomputed on every read.
//!
//! The disk is read-only; connections share it (multi-conn) only in the
//! export name modes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nbdkit_core::backend::{
    Callbacks, Error, Flags, Handle, OpenArgs, Peer, Plugin, Result, Support,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;

/// What the disk shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ExportName,
    Base64ExportName,
    Address,
    Time,
    Uptime,
    ConnTime,
}

/// The info plugin.
#[derive(Debug)]
pub struct Info {
    mode: Mode,
    loaded: Instant,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            mode: Mode::ExportName,
            loaded: Instant::now(),
        }
    }
}

/// Decode standard base64 as GnuTLS does: whitespace is skipped, the
/// length must be a multiple of 4 and `=` may only pad the last group.
pub fn decode_base64(input: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let clean: Vec<u8> = input.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if clean.len() % 4 != 0 {
        return None;
    }
    let groups = clean.len() / 4;
    let mut out = Vec::with_capacity(groups * 3);
    for (g, chunk) in clean.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// 12 bytes: big-endian seconds (64 bits) and microseconds (32 bits).
fn pack_time(secs: u64, micros: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&secs.to_be_bytes());
    b[8..].copy_from_slice(&micros.to_be_bytes());
    b
}

impl Plugin for Info {
    fn name(&self) -> &'static str {
        "info"
    }
    fn config_help(&self) -> &'static str {
        "mode=exportname|base64exportname|address|time|uptime|conntime\n                                      Plugin mode (default exportname)."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("mode")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![
            ("info_address".into(), "yes".into()),
            ("info_base64".into(), "yes".into()),
        ]
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        if key != "mode" {
            return Err(unknown_param(key));
        }
        self.mode = match value.to_ascii_lowercase().as_str() {
            "exportname" | "export-name" => Mode::ExportName,
            "base64exportname" | "base64-export-name" => Mode::Base64ExportName,
            "address" => Mode::Address,
            "time" => Mode::Time,
            "uptime" => Mode::Uptime,
            "conntime" => Mode::ConnTime,
            _ => return Err(Error::config(format!("unknown mode: '{value}'"))),
        };
        Ok(())
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let data = match self.mode {
            Mode::ExportName => args.export_name.as_bytes().to_vec(),
            Mode::Base64ExportName => decode_base64(args.export_name)
                .ok_or_else(|| Error::msg(Errno::EINVAL, "base64: Base64 decoding error."))?,
            Mode::Address => match args.peer {
                Peer::Inet(std::net::SocketAddr::V4(a)) => format!("{}:{}", a.ip(), a.port()),
                Peer::Inet(std::net::SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
                Peer::Unix { .. } => "unix".into(),
                Peer::Vsock { .. } => String::new(),
                Peer::Unknown => {
                    return Err(Error::msg(
                        crate::os::errno::from_os(libc::ENOTSOCK),
                        "getpeername: Socket operation on non-socket",
                    ))
                }
            }
            .into_bytes(),
            Mode::Time | Mode::Uptime | Mode::ConnTime => vec![0; 12],
        };
        Ok(Box::new(InfoHandle {
            mode: self.mode,
            data,
            loaded: self.loaded,
            opened: Instant::now(),
        }))
    }
}

struct InfoHandle {
    mode: Mode,
    data: Vec<u8>,
    loaded: Instant,
    opened: Instant,
}

impl Handle for InfoHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(matches!(
            self.mode,
            Mode::ExportName | Mode::Base64ExportName
        ))
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let time;
        let src: &[u8] = match self.mode {
            Mode::Time => {
                let d = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                time = pack_time(d.as_secs(), d.subsec_micros());
                &time
            }
            Mode::Uptime | Mode::ConnTime => {
                let since = if self.mode == Mode::Uptime {
                    self.loaded
                } else {
                    self.opened
                };
                let d = since.elapsed();
                time = pack_time(d.as_secs(), d.subsec_micros());
                &time
            }
            _ => &self.data,
        };
        let start = usize::try_from(offset).map_err(|_| Error::new(Errno::EINVAL))?;
        let part = start
            .checked_add(buf.len())
            .and_then(|end| src.get(start..end))
            .ok_or_else(|| Error::new(Errno::EINVAL))?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn base64_like_gnutls() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs bG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("AP9iaW5hcnk=").unwrap(), b"\x00\xffbinary");
        for bad in [
            "aGVsbG8",
            "a",
            "aGVsbG8==",
            "====",
            "YQ==YQ==",
            "a$==",
            "Y===",
        ] {
            assert!(decode_base64(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn mode_names_are_case_insensitive() {
        let mut p = Info::default();
        p.config("mode", "UpTime").unwrap();
        assert_eq!(p.mode, Mode::Uptime);
        assert_eq!(
            p.config("mode", "nope").unwrap_err().message.unwrap(),
            "unknown mode: 'nope'"
        );
    }

    #[test]
    fn time_is_twelve_bytes() {
        let mut p = Info::default();
        p.config("mode", "time").unwrap();
        let peer = Peer::Unknown;
        let h = p
            .open(&OpenArgs {
                readonly: true,
                export_name: "",
                is_tls: false,
                peer: &peer,
            })
            .unwrap();
        assert_eq!(h.get_size().unwrap(), 12);
        let mut b = [0u8; 12];
        h.pread(&mut b, 0, Flags::NONE).unwrap();
        let secs = u64::from_be_bytes(b[..8].try_into().unwrap());
        assert!(secs > 1_600_000_000);
    }
}
