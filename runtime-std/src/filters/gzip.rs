//! The gzip filter: serve the decompressed contents of a gzip file,
//! read-only. gzip cannot seek, so the whole file is decompressed once
//! (when the first client opens it) into an unlinked temporary file in
//! `$TMPDIR` (default /var/tmp). No parameters.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};
use nbdkit_core::errno::Errno;

use super::util::{io_error, unlinked_tmpfile, NextReader};

/// The decompressed data.
#[derive(Debug)]
struct Data {
    file: File,
    size: u64,
}

/// The gzip filter.
#[derive(Debug, Default)]
pub struct Gzip {
    data: Arc<Mutex<Option<Arc<Data>>>>,
}

fn decompress(next: &Context) -> Result<Data> {
    let mut file = unlinked_tmpfile("/var/tmp", "gzip")?;
    let src = std::io::BufReader::with_capacity(1 << 20, NextReader::new(next));
    let mut gz = flate2::read::MultiGzDecoder::new(src);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // zlib's words for data that is not gzip at all.
                let what = e.to_string();
                let what = match what.as_str() {
                    "invalid gzip header" => "incorrect header check",
                    w => w,
                };
                return Err(Error::msg(Errno::EIO, format!("gzip: inflate: {what}")));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| io_error("gzip: write", e))?;
        size += n as u64;
        if size > i64::MAX as u64 {
            return Err(Error::msg(
                Errno::EFBIG,
                "gzip: uncompressed data too large",
            ));
        }
    }
    Ok(Data { file, size })
}

impl Filter for Gzip {
    fn name(&self) -> &'static str {
        "gzip"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit gzip filter")
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(true, args.export_name)?;
        Ok(Box::new(GzipHandle {
            shared: self.data.clone(),
            data: Mutex::new(None),
        }))
    }
}

struct GzipHandle {
    shared: Arc<Mutex<Option<Arc<Data>>>>,
    data: Mutex<Option<Arc<Data>>>,
}

impl GzipHandle {
    fn data(&self) -> Result<Arc<Data>> {
        self.data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::new(Errno::EIO))
    }
}

impl FilterHandle for GzipHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let d = match shared.as_ref() {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(decompress(next)?);
                *shared = Some(d.clone());
                d
            }
        };
        *self.data.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        Ok(())
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.data()?.size)
    }
    fn block_size(&self, _next: &Context) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Emulate)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, _next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.data()?
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("pread", e))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn multi_member_streams_decode() {
        let mut z = Vec::new();
        for part in [&b"hello "[..], &b"world"[..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            z.extend(e.finish().unwrap());
        }
        let mut out = String::new();
        flate2::read::MultiGzDecoder::new(&z[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
    }
}
