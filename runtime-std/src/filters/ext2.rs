//! The ext2 filter: serve one file from inside the ext2/3/4 filesystem
//! image that the layer below serves.
//!
//! Parameters:
//! - `ext2file=PATH` (required): the absolute path of the file inside the
//!   filesystem, or `exportname` to take the path from the export name the
//!   client asks for.
//!
//! The filesystem is read with the `ext4-view` crate, which cannot write:
//! this filter is read-only (nbdkit's can write through libext2fs), and a
//! connection that could write is served read-only with a message.
//!
//! `ext4-view` is single-threaded (`Rc`) and pulls its bytes from a reader
//! it owns, while a filter may only touch the layer below during a call.
//! So each connection runs the filesystem on a worker thread of its own,
//! and the calling thread services the worker's reads of the layer below
//! while it waits for the answer (requests in, "read this from below"
//! events out, until the answer comes). No second context is opened and
//! nothing touches the layer below outside a call.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use nbdkit_core::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

/// The largest read of the layer below the worker may ask for.
const MAX_BELOW_READ: usize = 32 << 20;

/// The ext2 filter.
#[derive(Debug, Default)]
pub struct Ext2 {
    file: Option<String>,
}

impl Filter for Ext2 {
    fn name(&self) -> &'static str {
        "ext2"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ext2 filter")
    }

    fn config_help(&self) -> &'static str {
        "ext2file=<FILENAME>  (required) Absolute name of file to serve inside the\n\
         \x20                    disk image, or 'exportname' for client choice."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "ext2file" {
            return Ok(false);
        }
        if value != "exportname" && !value.starts_with('/') {
            return Err(Error::config(
                "the file parameter must refer to an absolute path",
            ));
        }
        self.file = Some(value.to_string());
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::config(
                "you must supply ext2file=<FILE> parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeConnections
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        let file = self.file.as_deref().unwrap_or("/");
        let (path, below) = if file == "exportname" {
            if args.export_name.is_empty() {
                return Err(Error::msg(
                    Errno::EINVAL,
                    "default export (\"\") not permitted",
                ));
            }
            if !args.export_name.starts_with('/') {
                return Err(Error::msg(
                    Errno::EINVAL,
                    "exportname: the file parameter must refer to an absolute path",
                ));
            }
            (args.export_name.to_string(), "")
        } else {
            (file.to_string(), args.export_name)
        };
        if !args.readonly {
            crate::log::debug(
                None,
                format_args!("ext2: writing is not supported, serving {path} read-only"),
            );
        }
        // The filesystem is only read: the layer below need not be writable.
        next.open(true, below)?;
        Ok(Box::new(Ext2Handle {
            path,
            worker: Mutex::new(None),
            size: std::sync::OnceLock::new(),
        }))
    }
}

/// What the calling thread asks the worker, or answers it.
enum Cmd {
    Load(String),
    Read { offset: u64, len: usize },
    Below(std::result::Result<Vec<u8>, Error>),
}

/// What the worker says.
enum Event {
    /// Read this from the layer below and answer with `Cmd::Below`.
    NeedBelow {
        offset: u64,
        len: usize,
    },
    Loaded(Result<u64>),
    Data(Result<Vec<u8>>),
}

struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<Event>,
}

struct Ext2Handle {
    path: String,
    worker: Mutex<Option<Worker>>,
    size: std::sync::OnceLock<u64>,
}

fn worker_gone() -> Error {
    Error::msg(Errno::EIO, "ext2: the filesystem worker stopped")
}

impl Ext2Handle {
    /// Send `cmd` and serve the worker's reads of `next` until it answers.
    fn call(&self, next: &Context, cmd: Cmd) -> Result<Event> {
        let guard = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        let w = guard.as_ref().ok_or_else(worker_gone)?;
        w.tx.send(cmd).map_err(|_| worker_gone())?;
        loop {
            match w.rx.recv().map_err(|_| worker_gone())? {
                Event::NeedBelow { offset, len } => {
                    let r = read_below(next, offset, len);
                    w.tx.send(Cmd::Below(r)).map_err(|_| worker_gone())?;
                }
                ev => return Ok(ev),
            }
        }
    }
}

fn read_below(next: &Context, offset: u64, len: usize) -> Result<Vec<u8>> {
    let size = next.caps().size;
    if len > MAX_BELOW_READ || offset.checked_add(len as u64).map_or(true, |e| e > size) {
        return Err(Error::msg(
            Errno::EIO,
            format!("ext2: read of {len} bytes at {offset} is outside the filesystem image"),
        ));
    }
    let mut v = vec![0u8; len];
    next.pread(&mut v, offset, Flags::NONE)?;
    Ok(v)
}

/// The worker's view of the layer below: every read is a round trip to
/// the calling thread.
struct Below {
    tx: Sender<Event>,
    rx: Rc<Receiver<Cmd>>,
}

impl ext4_view::Ext4Read for Below {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.tx.send(Event::NeedBelow {
            offset: start_byte,
            len: dst.len(),
        })?;
        match self.rx.recv()? {
            Cmd::Below(Ok(v)) if v.len() == dst.len() => {
                dst.copy_from_slice(&v);
                Ok(())
            }
            Cmd::Below(Ok(_)) => Err("short read from the layer below".into()),
            Cmd::Below(Err(e)) => Err(e.to_string().into()),
            _ => Err("unexpected request while reading".into()),
        }
    }
}

fn ext_error(e: ext4_view::Ext4Error) -> Error {
    use ext4_view::Ext4Error as E;
    let errno = match e {
        E::NotFound => Errno::ENOENT,
        E::IsADirectory | E::NotADirectory | E::IsASpecialFile => Errno::EINVAL,
        _ => Errno::EIO,
    };
    Error::msg(errno, e.to_string())
}

/// The worker thread: owns the filesystem and the open file.
fn worker(tx: Sender<Event>, rx: Receiver<Cmd>) {
    let rx = Rc::new(rx);
    let below = || Below {
        tx: tx.clone(),
        rx: Rc::clone(&rx),
    };
    let file: RefCell<Option<ext4_view::File>> = RefCell::new(None);
    while let Ok(cmd) = rx.recv() {
        let ev = match cmd {
            Cmd::Load(path) => Event::Loaded(load(Box::new(below()), &path).map(|f| {
                let len = f.metadata().len();
                *file.borrow_mut() = Some(f);
                len
            })),
            Cmd::Read { offset, len } => Event::Data(match file.borrow_mut().as_mut() {
                Some(f) => read_file(f, offset, len),
                None => Err(worker_gone()),
            }),
            Cmd::Below(_) => continue,
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

fn load(reader: Box<dyn ext4_view::Ext4Read>, path: &str) -> Result<ext4_view::File> {
    let fs = ext4_view::Ext4::load(reader)
        .map_err(|e| Error::msg(Errno::EINVAL, format!("open: {e}")))?;
    let meta = fs
        .metadata(path)
        .map_err(|e| Error::msg(Errno::ENOENT, format!("{path}: {}", ext_error(e))))?;
    if meta.file_type() != ext4_view::FileType::Regular {
        return Err(Error::msg(
            Errno::EINVAL,
            format!("{path}: must be a regular file in the disk image"),
        ));
    }
    fs.open(path)
        .map_err(|e| Error::msg(Errno::EIO, format!("{path}: {}", ext_error(e))))
}

fn read_file(f: &mut ext4_view::File, offset: u64, len: usize) -> Result<Vec<u8>> {
    f.seek_to(offset).map_err(ext_error)?;
    let mut v = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_bytes(&mut v[got..]).map_err(ext_error)?;
        if n == 0 {
            return Err(Error::msg(
                Errno::EIO,
                "ext2: read past the end of the file",
            ));
        }
        got += n;
    }
    Ok(v)
}

impl FilterHandle for Ext2Handle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let (tx_cmd, rx_cmd) = channel();
        let (tx_ev, rx_ev) = channel();
        std::thread::Builder::new()
            .name("ext2".into())
            .spawn(move || worker(tx_ev, rx_cmd))
            .map_err(|e| Error::msg(Errno::EIO, format!("ext2: thread: {e}")))?;
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(Worker {
            tx: tx_cmd,
            rx: rx_ev,
        });
        match self.call(next, Cmd::Load(self.path.clone()))? {
            Event::Loaded(r) => {
                let _ = self.size.set(r?);
                Ok(())
            }
            _ => Err(worker_gone()),
        }
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        self.size.get().copied().ok_or_else(worker_gone)
    }

    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::None)
    }

    fn block_size(&self, _next: &Context) -> Result<Option<nbdkit_core::backend::BlockSize>> {
        Ok(None)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        match self.call(
            next,
            Cmd::Read {
                offset,
                len: buf.len(),
            },
        )? {
            Event::Data(r) => {
                let v = r?;
                buf.copy_from_slice(&v);
                Ok(())
            }
            _ => Err(worker_gone()),
        }
    }

    fn pwrite(&self, _next: &Context, _buf: &[u8], _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::msg(
            Errno::EROFS,
            "ext2: writing is not supported by this implementation",
        ))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn path_must_be_absolute() {
        let mut f = Ext2::default();
        assert_eq!(
            f.config("ext2file", "foo").unwrap_err().to_string(),
            "the file parameter must refer to an absolute path"
        );
        assert!(f.config("ext2file", "exportname").unwrap());
        assert!(f.config("ext2file", "/disks/disk.raw").unwrap());
        assert!(!f.config("file", "x").unwrap());
    }

    #[test]
    fn ext2file_is_required() {
        let mut f = Ext2::default();
        assert_eq!(
            f.config_complete().unwrap_err().to_string(),
            "you must supply ext2file=<FILE> parameter after the plugin name on the command line"
        );
    }
}
