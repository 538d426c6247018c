//! `iso`: a read-only CD-ROM image built from one or more directories by
//! xorriso, genisoimage or mkisofs.
//!
//! Parameters:
//!
//! - `[dir=]DIRECTORY` (required, repeatable): directories merged into the
//!   root of the image; each is resolved with `realpath` when given.
//! - `params='PARAMETERS'`: extra options for the program, e.g. `-JrT`.
//!   They pass through `/bin/sh`, as nbdkit documents, so they may quote.
//! - `prog=PROGRAM`: the program to run. By default the first of xorriso,
//!   genisoimage and mkisofs found on `$PATH` (nbdkit fixes it when it is
//!   compiled); xorriso is run as `xorriso -as mkisofs`.
//!
//! The image is built once, in `get_ready`, into an unlinked file in
//! `$TMPDIR` (default `/var/tmp`), and served from there.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nbdkit_core::backend::{Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;

use super::mkfs;
use crate::plugins::realpath::realpath;

/// The programs nbdkit's configure looks for, in its order.
const PROGRAMS: &[&str] = &["xorriso", "genisoimage", "mkisofs"];

/// The iso plugin.
#[derive(Default)]
pub struct Iso {
    dirs: Vec<PathBuf>,
    params: Option<String>,
    prog: Option<String>,
    image: std::sync::OnceLock<std::sync::Arc<Image>>,
}

/// The built image.
struct Image {
    file: File,
    size: u64,
}

fn default_prog() -> String {
    PROGRAMS
        .iter()
        .find(|p| mkfs::which(p).is_some())
        .unwrap_or(&PROGRAMS[0])
        .to_string()
}

impl Iso {
    /// The shell command that writes the image to stdout.
    fn command_line(&self, prog: &str) -> String {
        let mut cmd = mkfs::shell_quote(prog);
        let base = prog.rsplit('/').next().unwrap_or(prog);
        if base.contains("xorriso") {
            cmd += " -as mkisofs";
        }
        cmd += " -quiet";
        if let Some(p) = &self.params {
            cmd.push(' ');
            cmd += p;
        }
        for d in &self.dirs {
            cmd.push(' ');
            cmd += &mkfs::shell_quote(&d.to_string_lossy());
        }
        cmd
    }
}

impl Plugin for Iso {
    fn name(&self) -> &'static str {
        "iso"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit iso plugin")
    }
    fn config_help(&self) -> &'static str {
        "dir=<DIRECTORY>     (required) The directory to serve.\n\
         params='<PARAMS>'              Extra parameters to pass.\n\
         prog=<ISOPROG>                 The program used to make ISOs."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("dir")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LONGNAME
            | Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "dir" => {
                self.dirs.push(realpath(value)?);
            }
            "params" => self.params = Some(value.to_string()),
            "prog" => self.prog = Some(value.to_string()),
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.dirs.is_empty() {
            return Err(Error::config(
                "you must supply the dir=<DIRECTORY> parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }
    fn get_ready(&self) -> Result<()> {
        let prog = self.prog.clone().unwrap_or_else(default_prog);
        let file = mkfs::temp_file("iso")?;
        let line = self.command_line(&prog);
        crate::log::debug(None, format_args!("{line}"));
        let out = file.try_clone().map_err(|e| mkfs::os_error("dup", &e))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&line)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::inherit());
        mkfs::run(&prog, &mut cmd)?;
        let size = file
            .metadata()
            .map_err(|e| mkfs::os_error("fstat", &e))?
            .len();
        let _ = self.image.set(std::sync::Arc::new(Image { file, size }));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let image = self
            .image
            .get()
            .ok_or_else(|| Error::msg(Errno::EIO, "iso: the image was not built"))?;
        Ok(Box::new(IsoHandle(image.clone())))
    }
}

struct IsoHandle(std::sync::Arc<Image>);

impl Handle for IsoHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.0.size)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        mkfs::read_exact(&self.0.file, buf, offset)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn xorriso_runs_as_mkisofs() {
        let iso = Iso {
            dirs: vec![PathBuf::from("/tmp/a b"), PathBuf::from("/srv")],
            params: Some("-JrT -V \"My Disk\"".into()),
            ..Iso::default()
        };
        assert_eq!(
            iso.command_line("xorriso"),
            "xorriso -as mkisofs -quiet -JrT -V \"My Disk\" '/tmp/a b' /srv"
        );
        assert_eq!(
            iso.command_line("/usr/bin/genisoimage"),
            "/usr/bin/genisoimage -quiet -JrT -V \"My Disk\" '/tmp/a b' /srv"
        );
    }

    #[test]
    fn dir_is_required() {
        let e = Iso::default().config_complete().unwrap_err();
        assert!(e.message.unwrap().starts_with("you must supply the dir="));
    }
}
