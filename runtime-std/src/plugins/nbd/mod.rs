//! `nbd`: a proxy to another NBD server.
//!
//! Parameters (nbdkit-nbd-plugin(1)); exactly one of the first group:
//! - `socket=PATH` (Unix socket), `hostname=HOST` with `port=PORT` (TCP;
//!   a number or a service name, default 10809), `vsock=CID` (or `cid=`)
//!   with `port=`, `[uri=]URI` (`nbd://`, `nbds://`, `nbd+unix://`,
//!   `nbds+unix://`, `nbd+vsock://`, `nbds+vsock://`), `socket-fd=FD` (an
//!   inherited socket), `command=PROGRAM` with `arg=ARG`... (a server
//!   started with systemd socket activation and stopped with nbdkit);
//! - `export=NAME`, or `dynamic-export=true` to pass each client's export
//!   name on (and list the server's exports);
//! - `shared=BOOL` (one connection for every client, made at start-up; the
//!   default with `command=` and `socket-fd=`), `retry=N` (extra attempts
//!   to connect, a second apart);
//! - `tls=off|on|require`, `tls-certificates=DIR`, `tls-verify=BOOL`,
//!   `tls-username=NAME`, `tls-psk=FILE`, and `tls-hostname=NAME` (the
//!   name the server's certificate must carry, where the connection has
//!   none or another): the client side of the TLS stack the server uses.
//!
//! Everything the remote export offers is passed through: size, flags
//! (read-only, flush, FUA, trim, zero, fast zero, cache, multi-conn,
//! rotational), block size constraints, description, `base:allocation`
//! extents, and the errors it returns. Requests are pipelined on the
//! connection (the thread model is parallel); see [`remote`] for the
//! driver and `nbdkit_core::client` for the protocol.

mod remote;
mod transport;
mod uri;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    BlockSize, Callbacks, Error, Exports, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::filters::params::{bool_param, parse_signed, parse_unsigned};
use nbdkit_core::handshake::TlsMode;
use nbdkit_core::plugins::unknown_param;
use nbdkit_core::transmission::Command;
use nbdkit_core::wire::consts::*;

use remote::{Remote, Settings};

/// Where the remote server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP host and port (or service name).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port number or service name.
        port: String,
    },
    /// An AF_VSOCK address.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// An inherited socket.
    Fd(i32),
    /// A program and its arguments, run with socket activation.
    Command(Vec<String>),
}

/// The nbd plugin.
#[derive(Debug, Default)]
pub struct Nbd {
    uri: Option<String>,
    socket: Option<PathBuf>,
    hostname: Option<String>,
    port: Option<String>,
    vsock: Option<String>,
    command: Vec<String>,
    socket_fd: Option<i32>,
    export: Option<String>,
    dynamic_export: bool,
    retry: u32,
    shared: bool,
    tls: Option<TlsMode>,
    tls_certificates: Option<PathBuf>,
    tls_verify: Option<bool>,
    tls_username: Option<String>,
    tls_psk: Option<PathBuf>,
    tls_hostname: Option<String>,
    /// Set by `config_complete`.
    settings: Option<Arc<Settings>>,
    /// The one connection of `shared` mode.
    shared_remote: Mutex<Option<Arc<Remote>>>,
}

/// `nbdkit_absolute_path`.
fn absolute(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config("cannot resolve a null or empty path"));
    }
    std::path::absolute(value).map_err(|e| Error::config(format!("{value}: {e}")))
}

/// Longest Unix socket path (`sun_path`).
const SUN_PATH_MAX: usize = 108;

impl Nbd {
    /// The connection parameters turned into settings.
    fn settings(&mut self) -> Result<Settings> {
        let given = [
            self.socket.is_some(),
            self.hostname.is_some(),
            self.uri.is_some(),
            !self.command.is_empty(),
            self.socket_fd.is_some(),
            self.vsock.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if given > 1 {
            return Err(Error::config(
                "cannot mix Unix ‘socket’, TCP ‘hostname’/‘port’, ‘vsock’, ‘command’, ‘socket-fd’ and ‘uri’ parameters",
            ));
        }
        if given == 0 {
            return Err(Error::config(
                "exactly one of ‘socket’, ‘hostname’, ‘vsock’, ‘command’, ‘socket-fd’ and ‘uri’ parameters must be specified",
            ));
        }
        if self.port.is_some() && self.hostname.is_none() && self.vsock.is_none() {
            return Err(Error::config(
                "‘port’ parameter should only be used with ‘hostname’ or ‘vsock’",
            ));
        }
        let mut tls_hostname = self.tls_hostname.clone();
        let mut uri_tls = false;
        let mut username = self.tls_username.clone();
        let target = if let Some(u) = &self.uri {
            let u = uri::parse(u).map_err(Error::config)?;
            if self.export.is_some() && !u.export.is_empty() {
                return Err(Error::config(
                    "the export name is given twice (in ‘uri’ and in ‘export’)",
                ));
            }
            if !self.dynamic_export && self.export.is_none() {
                self.export = Some(u.export.clone());
            }
            uri_tls = u.tls;
            self.tls_certificates = self.tls_certificates.take().or(u.tls_certificates);
            self.tls_psk = self.tls_psk.take().or(u.tls_psk);
            self.tls_verify = self.tls_verify.or(u.tls_verify);
            username = username.or(u.username);
            tls_hostname = tls_hostname.or(u.tls_hostname);
            if let Target::Tcp { host, .. } = &u.target {
                tls_hostname = tls_hostname.or(Some(host.clone()));
            }
            if let Target::Unix(p) = &u.target {
                if p.as_os_str().len() >= SUN_PATH_MAX {
                    return Err(Error::config("socket file name too large"));
                }
            }
            u.target
        } else if let Some(s) = &self.socket {
            if s.as_os_str().len() >= SUN_PATH_MAX {
                return Err(Error::config("socket file name too large"));
            }
            Target::Unix(s.clone())
        } else if let Some(h) = &self.hostname {
            let port = self.port.clone().unwrap_or_else(|| "10809".into());
            if !transport::valid_port(&port) {
                return Err(Error::config(format!("port={port}: unknown service")));
            }
            tls_hostname = tls_hostname.or(Some(h.clone()));
            Target::Tcp {
                host: h.clone(),
                port,
            }
        } else if let Some(c) = &self.vsock {
            let cid = parse_unsigned("vsock_cid", c, u32::MAX.into())? as u32;
            let port = match &self.port {
                Some(p) => parse_unsigned("port", p, u32::MAX.into())? as u32,
                None => 10809,
            };
            Target::Vsock { cid, port }
        } else if !self.command.is_empty() {
            self.shared = true;
            Target::Command(self.command.clone())
        } else {
            self.shared = true;
            Target::Fd(self.socket_fd.unwrap_or(-1))
        };
        if self.dynamic_export {
            if self.export.is_some() {
                return Err(Error::config(
                    "cannot mix 'dynamic-export' with explicit export name",
                ));
            }
            if self.shared {
                return Err(Error::config(
                    "cannot use 'dynamic-export' with shared connection",
                ));
            }
        } else if self.export.is_none() {
            self.export = Some(String::new());
        }
        if let Some(e) = &self.export {
            if e.len() > MAX_STRING {
                return Err(Error::config("export name too long"));
            }
        }
        let any_tls_option = self.tls_certificates.is_some()
            || self.tls_verify.is_some()
            || username.is_some()
            || self.tls_psk.is_some()
            || self.tls_hostname.is_some();
        let tls_mode = match self.tls {
            _ if uri_tls => TlsMode::Require,
            Some(m) => m,
            None if any_tls_option => TlsMode::On,
            None => TlsMode::Off,
        };
        let tls = if tls_mode == TlsMode::Off {
            None
        } else {
            let opts = crate::tls::ClientOptions {
                certificates: self.tls_certificates.clone(),
                verify: self.tls_verify.unwrap_or(true),
                username,
                psk: self.tls_psk.clone(),
            };
            Some(crate::tls::client(&opts).map_err(Error::config)?)
        };
        Ok(Settings {
            target,
            tls_mode,
            tls,
            tls_hostname,
            retry: self.retry,
        })
    }

    fn settings_ref(&self) -> Result<&Arc<Settings>> {
        self.settings
            .as_ref()
            .ok_or_else(|| Error::msg(Errno::EINVAL, "nbd: not configured"))
    }

    /// The shared connection, made on first use.
    fn shared_remote(&self) -> Result<Arc<Remote>> {
        let mut g = self.shared_remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*g {
            return Ok(r.clone());
        }
        let settings = self.settings_ref()?;
        let r = Arc::new(Remote::open(
            settings,
            self.export.as_deref().unwrap_or(""),
        )?);
        *g = Some(r.clone());
        Ok(r)
    }
}

impl Plugin for Nbd {
    fn name(&self) -> &'static str {
        "nbd"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nbd plugin")
    }

    fn config_help(&self) -> &'static str {
        concat!(
            "[uri=]<URI>            URI of an NBD socket to connect to (if supported).\n",
            "socket=<SOCKNAME>      The Unix socket to connect to.\n",
            "hostname=<HOST>        The hostname for the TCP socket to connect to.\n",
            "port=<PORT>            TCP/VSOCK port or service name to use (default 10809).\n",
            "vsock=<CID>            The cid for the VSOCK socket to connect to.\n",
            "command=<COMMAND>      Command to run.\n",
            "arg=<ARG>              Parameters for command.\n",
            "socket-fd=<FD>         Socket file descriptor to connect to.\n",
            "export=<NAME>          Export name to connect to (default \"\").\n",
            "dynamic-export=<BOOL>  True to enable export name pass-through.\n",
            "retry=<N>              Retry connection up to N seconds (default 0).\n",
            "shared=<BOOL>          True to share one server connection among all clients,\n",
            "                       rather than a connection per client (default false).\n",
            "tls=<MODE>             How to use TLS; one of 'off', 'on', or 'require'.\n",
            "tls-certificates=<DIR> Directory containing files for X.509 certificates.\n",
            "tls-verify=<BOOL>      True (default for X.509) to validate server.\n",
            "tls-username=<NAME>    Override username presented in X.509 TLS.\n",
            "tls-psk=<FILE>         File containing Pre-Shared Key for TLS.\n",
            "tls-hostname=<NAME>    Override the server name checked in X.509 TLS."
        )
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("uri")
    }

    fn callbacks(&self) -> Callbacks {
        Callbacks::LONGNAME
            | Callbacks::UNLOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::AFTER_FORK
            | Callbacks::LIST_EXPORTS
            | Callbacks::DEFAULT_EXPORT
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::EXPORT_DESCRIPTION
            | Callbacks::GET_SIZE
            | Callbacks::BLOCK_SIZE
            | Callbacks::CAN_WRITE
            | Callbacks::CAN_FLUSH
            | Callbacks::IS_ROTATIONAL
            | Callbacks::CAN_TRIM
            | Callbacks::CAN_ZERO
            | Callbacks::CAN_FAST_ZERO
            | Callbacks::CAN_EXTENTS
            | Callbacks::CAN_FUA
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::TRIM
            | Callbacks::ZERO
            | Callbacks::EXTENTS
            | Callbacks::CACHE
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        // No libnbd here: the client is this project's own. The feature
        // lines say what it supports, under the names scripts test for.
        [
            ("libnbd_version", "native"),
            ("libnbd_tls", "1"),
            ("libnbd_uri", "1"),
            ("libnbd_vsock", "1"),
            ("libnbd_dynamic_list", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "socket" => self.socket = Some(absolute(value)?),
            "hostname" => self.hostname = Some(value.into()),
            "port" => self.port = Some(value.into()),
            "vsock" | "cid" => self.vsock = Some(value.into()),
            "uri" => self.uri = Some(value.into()),
            "command" | "arg" => self.command.push(value.into()),
            "socket-fd" => {
                let fd = parse_signed("socket-fd", value, i32::MIN.into(), i32::MAX.into())?;
                if fd < 0 {
                    return Err(Error::config("socket-fd must be >= 0"));
                }
                if nix::fcntl::fcntl(fd as i32, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                    return Err(Error::config(format!(
                        "socket-fd={fd}: not an open file descriptor"
                    )));
                }
                self.socket_fd = Some(fd as i32);
            }
            "export" => self.export = Some(value.into()),
            "dynamic-export" => self.dynamic_export = bool_param(value)?,
            "retry" => self.retry = parse_unsigned("retry", value, u32::MAX.into())? as u32,
            "shared" => self.shared = bool_param(value)?,
            "tls" => {
                self.tls = Some(match value.to_ascii_lowercase().as_str() {
                    "require" | "required" | "force" => TlsMode::Require,
                    _ => {
                        if bool_param(value)? {
                            TlsMode::On
                        } else {
                            TlsMode::Off
                        }
                    }
                })
            }
            "tls-certificates" => self.tls_certificates = Some(absolute(value)?),
            "tls-verify" => self.tls_verify = Some(bool_param(value)?),
            "tls-username" => self.tls_username = Some(value.into()),
            "tls-psk" => self.tls_psk = Some(absolute(value)?),
            "tls-hostname" => self.tls_hostname = Some(value.into()),
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        let s = self.settings()?;
        self.settings = Some(Arc::new(s));
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        // The shared connection is made now, so that a server that cannot
        // be reached stops nbdkit at start-up.
        if self.shared {
            self.shared_remote()?;
        }
        Ok(())
    }

    fn cleanup(&self) {
        let r = self
            .shared_remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(r);
    }

    fn list_exports(&self, _readonly: bool, _is_tls: bool, exports: &mut Exports) -> Result<()> {
        if !self.dynamic_export {
            exports.use_default = true;
            return Ok(());
        }
        for (name, desc) in remote::list(self.settings_ref()?)? {
            let desc = (!desc.is_empty()).then_some(desc.as_str());
            exports.add(&name, desc)?;
        }
        Ok(())
    }

    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<Option<String>> {
        if !self.dynamic_export {
            return Ok(Some(self.export.clone().unwrap_or_default()));
        }
        // Best effort: a server that will not say keeps "".
        Ok(Some(
            remote::default_export(self.settings_ref()?).unwrap_or_default(),
        ))
    }

    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let remote = if self.shared {
            self.shared_remote()?
        } else {
            let export = if self.dynamic_export {
                args.export_name
            } else {
                self.export.as_deref().unwrap_or("")
            };
            Arc::new(Remote::open(self.settings_ref()?, export)?)
        };
        Ok(Box::new(NbdHandle {
            remote,
            readonly: args.readonly,
        }))
    }
}

/// A client's view of the remote export.
#[derive(Debug)]
struct NbdHandle {
    remote: Arc<Remote>,
    readonly: bool,
}

/// The largest effect length of one compact request that stays aligned
/// to any block size.
const COMPACT_MAX: u64 = 1 << 31;

impl NbdHandle {
    fn eflags(&self) -> u16 {
        self.remote.info.negotiated.eflags
    }

    fn has(&self, flag: u16) -> bool {
        self.eflags() & flag != 0
    }

    /// A request without data, split into compact-sized pieces when the
    /// connection has no extended headers.
    fn ranged(&self, command: Command, flags: u16, count: u64, offset: u64) -> Result<()> {
        let max = if self.remote.extended() {
            u64::MAX
        } else {
            COMPACT_MAX
        };
        let mut done = 0;
        while done < count {
            let n = (count - done).min(max);
            self.remote
                .call(command, flags, offset + done, n, None, None)?;
            done += n;
        }
        Ok(())
    }
}

fn fua(flags: Flags) -> u16 {
    if flags.contains(Flags::FUA) {
        CMD_FLAG_FUA
    } else {
        0
    }
}

impl Handle for NbdHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.remote.info.negotiated.size)
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self.remote.info.description.clone())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(self.remote.info.block_size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(!self.readonly && !self.has(FLAG_READ_ONLY))
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(self.has(FLAG_SEND_FLUSH))
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(self.has(FLAG_ROTATIONAL))
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(self.has(FLAG_SEND_TRIM))
    }

    fn can_zero(&self) -> Result<Support> {
        // As for any plugin whose can_zero is false: nbdkit writes zeroes.
        Ok(if self.has(FLAG_SEND_WRITE_ZEROES) {
            Support::Native
        } else {
            Support::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        Ok(self.has(FLAG_SEND_FAST_ZERO))
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(self.remote.info.negotiated.base_allocation.is_some())
    }

    fn can_fua(&self) -> Result<Support> {
        Ok(if self.has(FLAG_SEND_FUA) {
            Support::Native
        } else {
            Support::None
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(self.has(FLAG_CAN_MULTI_CONN))
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(if self.has(FLAG_SEND_CACHE) {
            Support::Native
        } else {
            Support::None
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        self.remote
            .call(Command::Read, 0, offset, count, None, Some(buf))?;
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.remote.call(
            Command::Write,
            fua(flags),
            offset,
            buf.len() as u64,
            Some(buf),
            None,
        )?;
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.remote.call(Command::Flush, 0, 0, 0, None, None)?;
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.ranged(Command::Trim, fua(flags), count, offset)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let mut f = fua(flags);
        if !flags.contains(Flags::MAY_TRIM) {
            f |= CMD_FLAG_NO_HOLE;
        }
        if flags.contains(Flags::FAST_ZERO) {
            f |= CMD_FLAG_FAST_ZERO;
        }
        self.ranged(Command::WriteZeroes, f, count, offset)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let count = if self.remote.extended() {
            count
        } else {
            count.min(COMPACT_MAX)
        };
        let f = if flags.contains(Flags::REQ_ONE) {
            CMD_FLAG_REQ_ONE
        } else {
            0
        };
        let list = self
            .remote
            .call(Command::BlockStatus, f, offset, count, None, None)?;
        for (off, len, fl) in list {
            extents.add(off, len, fl)?;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.ranged(Command::Cache, 0, count, offset)
    }
}
