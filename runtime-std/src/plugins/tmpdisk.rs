//! `tmpdisk`: every connection gets a fresh, empty file system of its own,
//! deleted when the client disconnects.
//!
//! Parameters:
//!
//! - `[size=]SIZE` (required): the disk size (only a suggestion when
//!   `command=` makes the disk).
//! - `type=FS`: the file system type for `mkfs -t` (default `ext4`).
//! - `label=LABEL`: the file system label.
//! - `command='SCRIPT'`: a shell script that creates `$disk` instead of
//!   mkfs; the size served is whatever size it makes the file.
//! - any other `key=value` becomes the shell variable `$key` of the script;
//!   `disk=` is refused because `$disk` is where the script must write.
//!
//! For each connection the plugin makes `$TMPDIR/tmpdiskXXXXXX` (default
//! `/var/tmp`), runs the script with `$disk` set to `DIR/disk` and `$size`
//! to the size in bytes, opens the disk and removes the directory, so the
//! disk disappears with the connection.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use nbdkit_core::backend::{Callbacks, Error, Handle, OpenArgs, Plugin, Result};

use super::mkfs::{self, DiskCommand, TempDir, WritableDisk};

/// The tmpdisk plugin.
#[derive(Debug, Default)]
pub struct TmpDisk {
    command: DiskCommand,
}

impl Plugin for TmpDisk {
    fn name(&self) -> &'static str {
        "tmpdisk"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>      (required) Virtual filesystem size.\n\
         label=<LABEL>               The filesystem label.\n\
         type=ext4|...               The filesystem type.\n\
         command=<COMMAND>           Alternate command instead of mkfs."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LOAD
            | Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
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
        self.command.config(key, value)
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.command.size.is_none() {
            return Err(Error::config("size parameter is required"));
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let dir = TempDir::new_in(&mkfs::tmpdir(), "tmpdisk")?;
        let disk = dir.path().join("disk");
        self.command.run(&disk)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&disk)
            .map_err(|e| mkfs::os_error(format_args!("open: {}", disk.display()), &e))?;
        let size = file
            .metadata()
            .map_err(|e| mkfs::os_error(format_args!("fstat: {}", disk.display()), &e))?
            .len();
        // The open descriptor keeps the disk alive; the name goes now.
        drop(dir);
        Ok(Box::new(WritableDisk { file, size }))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn size_is_required() {
        let mut p = TmpDisk::default();
        p.config("type", "xfs").unwrap();
        let e = p.config_complete().unwrap_err();
        assert_eq!(e.message.unwrap(), "size parameter is required");
    }
}
