//! `ondemand`: a persistent file system per export name, created in a
//! directory the first time a client asks for it.
//!
//! Parameters:
//!
//! - `dir=EXPORTSDIR` (required): where the file systems are kept, one
//!   file per export name (resolved with `realpath` when given).
//! - `[size=]SIZE` (required): the size of new file systems (only a
//!   suggestion when `command=` makes them).
//! - `type=FS` (default `ext4`), `label=LABEL`: as for `mkfs`.
//! - `command='SCRIPT'`: a shell script that creates `$disk` instead of
//!   mkfs; any other `key=value` becomes the shell variable `$key`, and
//!   `disk=` is refused.
//! - `wait=BOOL`: a client asking for an export in use waits for it
//!   instead of being refused with "filesystem is locked by another
//!   client".
//!
//! Export names must be at most `NAME_MAX` bytes and contain no `.`, `/`
//! or `:`; `""` means `default`. The export list is `""`, then the other
//! names in the directory a client could open, as nbdkit lists them. Each
//! open file system is held with an exclusive open-file-description lock
//! (`F_OFD_SETLK` like nbdkit on Linux, `flock` on FreeBSD: see
//! `os::locks`), so two connections, or two servers, never
//! share one; creation is serialized within the server and a script that
//! fails leaves no file behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use nbdkit_core::backend::{Callbacks, Error, Exports, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::size::parse_bool;

use super::mkfs::{self, DiskCommand, WritableDisk};
use crate::os::locks::lock_exclusive;
use crate::plugins::realpath::realpath;

/// The longest file name.
const NAME_MAX: usize = 255;

/// The ondemand plugin.
#[derive(Debug, Default)]
pub struct OnDemand {
    dir: Option<PathBuf>,
    wait: bool,
    command: DiskCommand,
    /// Held while an export is checked for and created.
    create_lock: Mutex<()>,
}

/// Whether a client may use `name` as a file name in the directory.
fn valid_export_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_MAX && !name.contains(['.', '/', ':'])
}

impl OnDemand {
    fn dir(&self) -> &PathBuf {
        self.dir.as_ref().expect("config_complete checked dir")
    }

    fn open_disk(&self, path: &std::path::Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
    }

    /// Open the export's file, creating the file system first if needed.
    fn open_or_create(&self, name: &str) -> Result<File> {
        let path = self.dir().join(name);
        let open_error = |e: &io::Error| {
            mkfs::os_error(format_args!("open: {}/{name}", self.dir().display()), e)
        };
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.open_disk(&path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(&e)),
        }
        if let Err(e) = self.command.run(&path) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.open_disk(&path).map_err(|e| open_error(&e))
    }
}

impl Plugin for OnDemand {
    fn name(&self) -> &'static str {
        "ondemand"
    }
    fn config_help(&self) -> &'static str {
        "dir=<EXPORTSDIR> (required) Directory containing filesystems.\n\
         size=<SIZE>      (required) Virtual filesystem size.\n\
         label=<LABEL>               The filesystem label.\n\
         type=ext4|...               The filesystem type.\n\
         command=<COMMAND>           Alternate command instead of mkfs.\n\
         wait=true                   Wait for an export in use (default: refuse)."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::LIST_EXPORTS
            | Callbacks::DEFAULT_EXPORT
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::CAN_TRIM
            | Callbacks::CAN_FUA
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::TRIM
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "dir" => {
                self.dir = Some(realpath(value)?);
            }
            "wait" => {
                self.wait = parse_bool(value).ok_or_else(|| {
                    Error::config(format!("could not decipher boolean ({value})"))
                })?;
            }
            _ => self.command.config(key, value)?,
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.dir.is_none() || self.command.size.is_none() {
            return Err(Error::config("dir and size parameters are required"));
        }
        Ok(())
    }
    fn get_ready(&self) -> Result<()> {
        let dir = self.dir();
        std::fs::read_dir(dir)
            .map(drop)
            .map_err(|e| mkfs::os_error(format_args!("opendir: {}", dir.display()), &e))
    }
    fn list_exports(&self, _readonly: bool, _is_tls: bool, exports: &mut Exports) -> Result<()> {
        let dir = self.dir();
        let readdir_error =
            |e: &io::Error| mkfs::os_error(format_args!("readdir: {}", dir.display()), e);
        let entries = std::fs::read_dir(dir)
            .map_err(|e| mkfs::os_error(format_args!("opendir: {}", dir.display()), &e))?;
        // The default export first, as nbdkit lists it: by the name "".
        exports.add("", None)?;
        for entry in entries {
            let entry = entry.map_err(|e| readdir_error(&e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // As nbdkit: names a client could not open (with '.' or ':',
            // which hides dot files) and the default export's file are
            // left out; the directory's order is kept.
            if name.contains(['.', ':']) || name == "default" {
                continue;
            }
            exports.add(name, None)?;
        }
        Ok(())
    }
    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<Option<String>> {
        Ok(Some("default".into()))
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let name = match args.export_name {
            "" => "default",
            n => n,
        };
        if !valid_export_name(name) {
            return Err(Error::msg(
                Errno::EINVAL,
                format!("invalid exportname \u{2018}{name}\u{2019} rejected"),
            ));
        }
        let file = self.open_or_create(name)?;
        lock_exclusive(&file, self.wait).map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Error::msg(
                Errno::EBUSY,
                format!("{name}: filesystem is locked by another client"),
            ),
            _ => mkfs::os_error(format_args!("fcntl: {}/{name}", self.dir().display()), &e),
        })?;
        let size = file
            .metadata()
            .map_err(|e| mkfs::os_error(format_args!("fstat: {name}"), &e))?
            .len();
        crate::log::debug(
            None,
            format_args!(
                "ondemand: requested_size = {}, size = {size}",
                self.command.size.unwrap_or(0)
            ),
        );
        Ok(Box::new(WritableDisk { file, size }))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn export_names_are_checked() {
        assert!(valid_export_name("default"));
        assert!(valid_export_name("-x"));
        assert!(valid_export_name("a b$c"));
        assert!(!valid_export_name("a.b"));
        assert!(!valid_export_name("a/b"));
        assert!(!valid_export_name("a:b"));
        assert!(!valid_export_name(".x"));
        assert!(!valid_export_name(&"x".repeat(256)));
        assert!(valid_export_name(&"x".repeat(255)));
    }

    #[test]
    fn dir_and_size_are_required() {
        let mut p = OnDemand::default();
        p.config("size", "1M").unwrap();
        let e = p.config_complete().unwrap_err();
        assert_eq!(e.message.unwrap(), "dir and size parameters are required");
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = mkfs::TempDir::new_in(&std::env::temp_dir(), "ondemandtest").unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, b"x").unwrap();
        let a = File::options().read(true).write(true).open(&path).unwrap();
        let b = File::options().read(true).write(true).open(&path).unwrap();
        lock_exclusive(&a, false).unwrap();
        assert_eq!(
            lock_exclusive(&b, false).unwrap_err().raw_os_error(),
            Some(libc::EAGAIN)
        );
        drop(a);
        lock_exclusive(&b, false).unwrap();
    }
}
