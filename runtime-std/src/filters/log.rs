//! The log filter: log every transaction to a file or a script.
//!
//! Parameters:
//! - `logfile=FILE`: write one line per event, `YYYY-MM-DD HH:MM:SS.uuuuuu`
//!   then `[connection=N ]ACTION k=v ...`; calls are logged twice, as
//!   `Act id=I args ...` and `...Act id=I [results ]return=R[ error=ENAME]`;
//! - `logappend=BOOL`: append to FILE instead of truncating it;
//! - `logscript=SCRIPT`: run SCRIPT (with bash, else sh) for every event,
//!   with `type` (ENTER, LEAVE or PRINT), `act`, `connection`, `id`,
//!   `return`, `error` and the event's own fields set as shell variables.
//!
//! Neither given: the filter does nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    Context, Error, Exports, Extents, Filter, FilterHandle, Flags, NextExports, NextOpener,
    OpenArgs, Peer, Result, Support, ThreadModel,
};

use super::util::{parse_bool, shell_quote, timestamp};

/// The log filter.
#[derive(Debug, Default)]
pub struct Log {
    file: Option<String>,
    append: bool,
    script: Option<String>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    out: Mutex<Option<File>>,
    script: Option<String>,
    connections: AtomicU64,
    preconnects: AtomicU64,
    list_exports: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Enter,
    Leave,
    Print,
}

/// One log event: rendered as a line for the file and as variables for
/// the script.
struct Entry<'a> {
    kind: Kind,
    act: &'a str,
    connection: Option<u64>,
    id: Option<u64>,
    fields: Vec<(&'static str, String)>,
    result: Option<std::result::Result<(), &'a Error>>,
}

/// The symbolic name of an errno, as nbdkit prints it.
fn errno_name(e: nbdkit_core::errno::Errno) -> String {
    let name = match e.0 {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        9 => "EBADF",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        22 => "EINVAL",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        32 => "EPIPE",
        34 => "ERANGE",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        122 => "EDQUOT",
        n => return n.to_string(),
    };
    name.to_string()
}

impl Entry<'_> {
    fn line(&self) -> String {
        let mut s = String::new();
        if let Some(c) = self.connection {
            s.push_str(&format!("connection={c} "));
        }
        if self.kind == Kind::Leave {
            s.push_str("...");
        }
        s.push_str(self.act);
        if let Some(id) = self.id {
            s.push_str(&format!(" id={id}"));
        }
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v}"));
        }
        match self.result {
            Some(Ok(())) => s.push_str(" return=0"),
            Some(Err(e)) => s.push_str(&format!(" return=-1 error={}", errno_name(e.errno))),
            None => {}
        }
        if self.kind == Kind::Enter {
            s.push_str(" ...");
        }
        s
    }

    fn script_vars(&self) -> String {
        let mut s = String::new();
        let kind = match self.kind {
            Kind::Enter => "ENTER",
            Kind::Leave => "LEAVE",
            Kind::Print => "PRINT",
        };
        s.push_str(&format!("type={kind}\nact={}\n", self.act));
        if let Some(c) = self.connection {
            s.push_str(&format!("connection={c}\n"));
        }
        if let Some(id) = self.id {
            s.push_str(&format!("id={id}\n"));
        }
        for (k, v) in &self.fields {
            s.push_str(&format!("{k}={v}\n"));
        }
        match self.result {
            Some(Ok(())) => s.push_str("return=0\n"),
            Some(Err(e)) => s.push_str(&format!("return=-1\nerror={}\n", errno_name(e.errno))),
            None => {}
        }
        s
    }
}

impl Shared {
    fn active(&self) -> bool {
        self.script.is_some() || self.out.lock().map(|o| o.is_some()).unwrap_or(false)
    }

    fn log(&self, e: &Entry<'_>) {
        {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = out.as_mut() {
                let line = format!("{} {}\n", timestamp(), e.line());
                let _ = f.write_all(line.as_bytes());
            }
        }
        if let Some(script) = &self.script {
            let text = format!("{}{}", e.script_vars(), script);
            let shell = if std::path::Path::new("/bin/bash").exists() {
                "/bin/bash"
            } else {
                "/bin/sh"
            };
            let _ = std::process::Command::new(shell)
                .arg("-c")
                .arg(text)
                .stdin(std::process::Stdio::null())
                .status();
        }
    }
}

fn b(v: bool) -> String {
    u8::from(v).to_string()
}

fn support(s: Support) -> String {
    (s as u8).to_string()
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

impl Filter for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit log filter")
    }

    fn config_help(&self) -> &'static str {
        "logfile=<FILE>               The file to place the log in.\n\
         logappend=<BOOL>             True to append to the log (default false).\n\
         logscript=<SCRIPT>           Script to run for logging."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "logfile" => self.file = Some(value.to_string()),
            "logappend" => self.append = parse_bool(value)?,
            "logscript" => self.script = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let file = match &self.file {
            Some(path) => {
                let mut o = OpenOptions::new();
                o.create(true);
                if self.append {
                    o.append(true);
                } else {
                    o.write(true).truncate(true);
                }
                Some(
                    o.open(path)
                        .map_err(|e| Error::config(format!("open: {path}: {e}")))?,
                )
            }
            None => None,
        };
        self.shared = Arc::new(Shared {
            out: Mutex::new(file),
            script: self.script.clone(),
            ..Shared::default()
        });
        Ok(())
    }

    fn get_ready(&self, thread_model: ThreadModel) -> Result<()> {
        self.shared.log(&Entry {
            kind: Kind::Print,
            act: "Ready",
            connection: None,
            id: None,
            fields: vec![("thread_model", (thread_model as u8).to_string())],
            result: None,
        });
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        self.shared.log(&Entry {
            kind: Kind::Print,
            act: "Fork",
            connection: None,
            id: None,
            fields: vec![],
            result: None,
        });
        Ok(())
    }

    fn preconnect(&self, readonly: bool, _peer: &Peer) -> Result<()> {
        let id = self.shared.preconnects.fetch_add(1, Ordering::SeqCst) + 1;
        let mut e = Entry {
            kind: Kind::Enter,
            act: "Preconnect",
            connection: None,
            id: Some(id),
            fields: vec![("readonly", b(readonly))],
            result: None,
        };
        self.shared.log(&e);
        e.kind = Kind::Leave;
        e.fields.clear();
        e.result = Some(Ok(()));
        self.shared.log(&e);
        Ok(())
    }

    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        let id = self.shared.list_exports.fetch_add(1, Ordering::SeqCst) + 1;
        let mut e = Entry {
            kind: Kind::Enter,
            act: "ListExports",
            connection: None,
            id: Some(id),
            fields: vec![("readonly", b(readonly)), ("tls", b(is_tls))],
            result: None,
        };
        self.shared.log(&e);
        let r = next.list_exports(readonly, is_tls, exports);
        e.kind = Kind::Leave;
        e.fields.clear();
        if r.is_ok() {
            let mut names: Vec<String> =
                exports.list.iter().map(|x| shell_quote(&x.name)).collect();
            if exports.use_default {
                names.insert(0, shell_quote(""));
            }
            e.fields.push(("exports", format!("({})", names.join(" "))));
        }
        e.result = Some(r.as_ref().map(|_| ()));
        self.shared.log(&e);
        r
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        let connection = self.shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Box::new(LogHandle {
            shared: self.shared.clone(),
            active: self.shared.active(),
            connection,
            export: args.export_name.to_string(),
            tls: args.is_tls,
            ids: AtomicU64::new(0),
        }))
    }
}

struct LogHandle {
    shared: Arc<Shared>,
    active: bool,
    connection: u64,
    export: String,
    tls: bool,
    ids: AtomicU64,
}

impl LogHandle {
    /// Log the start of a call; `None` when the filter is inactive.
    fn enter(&self, act: &str, fields: Vec<(&'static str, String)>) -> Option<u64> {
        if !self.active {
            return None;
        }
        let id = self.ids.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.log(&Entry {
            kind: Kind::Enter,
            act,
            connection: Some(self.connection),
            id: Some(id),
            fields,
            result: None,
        });
        Some(id)
    }

    /// Log the end of a call.
    fn leave(
        &self,
        act: &str,
        id: Option<u64>,
        fields: Vec<(&'static str, String)>,
        result: &Result<()>,
    ) {
        let Some(id) = id else { return };
        self.shared.log(&Entry {
            kind: Kind::Leave,
            act,
            connection: Some(self.connection),
            id: Some(id),
            fields: if result.is_ok() { fields } else { vec![] },
            result: Some(result.as_ref().map(|_| ())),
        });
    }

    /// Log the call, run it, log its result.
    fn call(
        &self,
        act: &str,
        fields: Vec<(&'static str, String)>,
        run: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let id = self.enter(act, fields);
        let r = run();
        self.leave(act, id, vec![], &r);
        r
    }
}

/// How the log shows an extent's type.
fn extent_type(flags: u32) -> &'static str {
    match flags & 3 {
        0 => "\"\"",
        1 => "\"hole\"",
        2 => "\"zero\"",
        _ => "\"hole,zero\"",
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        if self.active {
            self.shared.log(&Entry {
                kind: Kind::Print,
                act: "Disconnect",
                connection: Some(self.connection),
                id: None,
                fields: vec![("transactions", self.ids.load(Ordering::SeqCst).to_string())],
                result: None,
            });
        }
    }
}

impl FilterHandle for LogHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        let c = next.caps();
        let bs = c.block_size;
        let fields = vec![
            ("export", shell_quote(&self.export)),
            ("tls", b(self.tls)),
            ("size", hex(c.size)),
            ("minsize", hex(bs.map_or(0, |b| u64::from(b.minimum)))),
            ("prefsize", hex(bs.map_or(0, |b| u64::from(b.preferred)))),
            ("maxsize", hex(bs.map_or(0, |b| u64::from(b.maximum)))),
            ("write", b(c.can_write)),
            ("flush", b(c.can_flush)),
            ("rotational", b(c.is_rotational)),
            ("trim", b(c.can_trim)),
            ("zero", support(c.can_zero)),
            ("fua", support(c.can_fua)),
            ("extents", b(c.can_extents)),
            ("cache", support(c.can_cache)),
            ("fast_zero", b(c.can_fast_zero)),
        ];
        self.shared.log(&Entry {
            kind: Kind::Print,
            act: "Connect",
            connection: Some(self.connection),
            id: None,
            fields,
            result: None,
        });
        Ok(())
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        self.call(
            "Read",
            vec![("offset", hex(offset)), ("count", hex(count))],
            || next.pread(buf, offset, flags),
        )
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.call(
            "Write",
            vec![
                ("offset", hex(offset)),
                ("count", hex(buf.len() as u64)),
                ("fua", b(flags.contains(Flags::FUA))),
            ],
            || next.pwrite(buf, offset, flags),
        )
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        self.call("Flush", vec![], || next.flush(flags))
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.call(
            "Trim",
            vec![
                ("offset", hex(offset)),
                ("count", hex(count)),
                ("fua", b(flags.contains(Flags::FUA))),
            ],
            || next.trim(count, offset, flags),
        )
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.call(
            "Zero",
            vec![
                ("offset", hex(offset)),
                ("count", hex(count)),
                ("trim", b(flags.contains(Flags::MAY_TRIM))),
                ("fua", b(flags.contains(Flags::FUA))),
                ("fast", b(flags.contains(Flags::FAST_ZERO))),
            ],
            || next.zero(count, offset, flags),
        )
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let fields = vec![
            ("offset", hex(offset)),
            ("count", hex(count)),
            ("req_one", b(flags.contains(Flags::REQ_ONE))),
        ];
        let id = self.enter("Extents", fields);
        let r = next.extents(count, offset, flags, extents);
        let mut list = Vec::new();
        if id.is_some() && r.is_ok() {
            for x in extents.as_slice() {
                list.push(format!(
                    "{} {} {}",
                    hex(x.offset),
                    hex(x.length),
                    extent_type(x.flags)
                ));
            }
        }
        self.leave(
            "Extents",
            id,
            vec![("extents", format!("({})", list.join(" ")))],
            &r,
        );
        r
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.call(
            "Cache",
            vec![("offset", hex(offset)), ("count", hex(count))],
            || next.cache(count, offset, flags),
        )
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn line_shapes() {
        let e = Entry {
            kind: Kind::Enter,
            act: "Read",
            connection: Some(1),
            id: Some(2),
            fields: vec![("offset", hex(4096)), ("count", hex(512))],
            result: None,
        };
        assert_eq!(
            e.line(),
            "connection=1 Read id=2 offset=0x1000 count=0x200 ..."
        );
        let err = Error::new(nbdkit_core::errno::Errno::EIO);
        let e = Entry {
            kind: Kind::Leave,
            act: "Read",
            connection: Some(1),
            id: Some(2),
            fields: vec![],
            result: Some(Err(&err)),
        };
        assert_eq!(e.line(), "connection=1 ...Read id=2 return=-1 error=EIO");
        let e = Entry {
            kind: Kind::Print,
            act: "Ready",
            connection: None,
            id: None,
            fields: vec![("thread_model", "3".into())],
            result: None,
        };
        assert_eq!(e.line(), "Ready thread_model=3");
    }
}
