//! Evaluation: the expression written into a sparse image, within a budget
//! of work; files and scripts it reads.

use super::*;
use crate::os::errno::io_error;
use std::io::Read;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, PoisonError, RwLock};

use nbdkit_core::backend::{Error, Extents, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::memory::Backing;

/// Counts work against [`MAX_WORK`], and evaluation steps against
/// [`MAX_STEPS`].
#[derive(Default)]
pub(super) struct Budget {
    pub(super) used: u64,
    pub(super) steps: u64,
}

/// The most expressions an evaluation may visit (names can double the
/// work at each definition).
pub(super) const MAX_STEPS: u64 = 1 << 22;

/// What one operation on an image is charged: the memory of the chunks
/// it may add.
pub(super) const OP_COST: u64 = 64 * 17;

impl Budget {
    pub(super) fn step(&mut self) -> Result<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(Error::msg(
                Errno::ENOMEM,
                "data: the expression takes too many steps to evaluate, which is not supported",
            ));
        }
        self.spend(OP_COST)
    }

    pub(super) fn spend(&mut self, n: u64) -> Result<()> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_WORK {
            return Err(Error::msg(
                Errno::ENOMEM,
                format!(
                    "data: the expression needs more than {} MiB of memory, which is not supported",
                    MAX_WORK >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// Names defined so far, innermost first.
pub(super) struct Env<'a> {
    pub(super) name: &'a str,
    pub(super) expr: &'a Expr,
    pub(super) next: Option<Rc<Env<'a>>>,
}

pub(super) struct Evaluator {
    pub(super) budget: Budget,
}

pub(super) fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .filter(|&v| v <= MAX_SIZE)
        .ok_or_else(|| err("data parameter: offset is larger than 2^63-1"))
}

/// Where an evaluation writes, and how far it got.
pub(super) struct Cursor<'i> {
    pub(super) img: &'i mut Image,
    pub(super) offset: u64,
    pub(super) size: u64,
    /// Nothing at or past this is kept.
    pub(super) limit: u64,
}

impl Evaluator {
    /// Evaluate `e` (each element, when it is a list) into `cur`, as
    /// nbdkit does.
    pub(super) fn eval<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        cur: &mut Cursor<'_>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH * 10 {
            return Err(err("data parameter: expression is nested too deeply"));
        }
        let items = match e {
            Expr::List(l) => l.as_slice(),
            e => std::slice::from_ref(e),
        };
        let mut env = env;
        for e in items {
            self.budget.step()?;
            let limit = cur.limit;
            let at = cur.offset;
            match e {
                Expr::Null => {}
                Expr::Byte(b) => {
                    cur.img.write(at, &[*b], limit);
                    cur.offset = add(at, 1)?;
                }
                Expr::Str(b) => {
                    cur.img.write(at, b, limit);
                    cur.offset = add(at, b.len() as u64)?;
                }
                Expr::Fill(b, n) => {
                    cur.offset = add(at, *n)?;
                    cur.img.fill(at, *b, *n, limit);
                }
                Expr::AbsOffset(o) => cur.offset = add(*o, 0)?,
                Expr::RelOffset(d) => {
                    if *d < 0 {
                        let back = d.unsigned_abs();
                        if back > at {
                            return Err(err(format!(
                                "data parameter @-{back} must not be larger than the current offset {at}"
                            )));
                        }
                        cur.offset = at - back;
                    } else {
                        cur.offset = add(at, *d as u64)?;
                    }
                }
                Expr::Align(a) => cur.offset = add(at, (a - at % a) % a)?,
                Expr::File(name) => {
                    let data = read_file(name, 0, None, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Script(script) => {
                    let data = run_script(script, None, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Assign(name, value) => {
                    env = Some(Rc::new(Env {
                        name,
                        expr: value,
                        next: env.take(),
                    }));
                }
                Expr::Name(name) => {
                    let mut t = env.as_ref();
                    let def = loop {
                        match t {
                            None => return Err(err(format!("\\{name} not defined"))),
                            Some(d) if d.name == name => break d,
                            Some(d) => t = d.next.as_ref(),
                        }
                    };
                    // The definition sees the names defined before it.
                    let (sub, n) =
                        self.sub(def.expr, def.next.clone(), limit.saturating_sub(at), depth)?;
                    cur.img.blit(&sub, 0, n, at, limit);
                    cur.offset = add(at, n)?;
                }
                Expr::Slice(inner, n, m) if matches!(**inner, Expr::File(_)) => {
                    let Expr::File(name) = &**inner else {
                        unreachable!()
                    };
                    if (*m >= 0 && *n > *m as u64) || *m < -2 {
                        return Err(err("<FILE[N:M] does not describe a valid slice"));
                    }
                    let len = (*m >= 0).then(|| *m as u64 - n);
                    let len = if *m == -2 { Some(0) } else { len };
                    let data = read_file(name, *n, len, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Slice(inner, 0, m) if matches!(**inner, Expr::Script(_)) => {
                    let Expr::Script(script) = &**inner else {
                        unreachable!()
                    };
                    let data = run_script(script, Some((*m).max(0) as u64), &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::List(_) => {
                    let (sub, n) = self.sub(e, env.clone(), limit.saturating_sub(at), depth)?;
                    cur.img.blit(&sub, 0, n, at, limit);
                    cur.offset = add(at, n)?;
                }
                Expr::Repeat(inner, count) => {
                    let (sub, n) = self.sub(inner, env.clone(), limit.saturating_sub(at), depth)?;
                    let total = n
                        .checked_mul(*count)
                        .ok_or_else(|| err("data parameter: offset is larger than 2^63-1"))?;
                    cur.offset = add(at, total)?;
                    if n < 64 * 1024 {
                        // A short period is expanded into a pattern.
                        self.budget.spend(128 * 1024)?;
                    }
                    cur.img.repeat(&sub, n, *count, at, limit);
                }
                Expr::Slice(inner, from, to) => {
                    let room = limit.saturating_sub(at);
                    let sub_limit = from.saturating_add(room);
                    let sub_limit = if *to >= 0 {
                        sub_limit.min(*to as u64)
                    } else {
                        sub_limit
                    };
                    let (sub, n) = self.sub(inner, env.clone(), sub_limit, depth)?;
                    let m = if *to < 0 { n } else { *to as u64 };
                    if *from > n || m > n || *from > m {
                        return Err(err("[N:M] does not describe a valid slice"));
                    }
                    cur.img.blit(&sub, *from, m - from, at, limit);
                    cur.offset = add(at, m - from)?;
                }
            }
            cur.size = cur.size.max(cur.offset);
        }
        Ok(())
    }

    /// Evaluate `e` into a new image kept up to `limit`; returns it and
    /// the expression's size.
    pub(super) fn sub<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        limit: u64,
        depth: usize,
    ) -> Result<(Arc<Image>, u64)> {
        let (img, size) = self.image(e, env, limit, depth + 1)?;
        Ok((Arc::new(img), size))
    }

    /// Evaluate `e` into a new image kept up to `limit`, at `depth`.
    pub(super) fn image<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        limit: u64,
        depth: usize,
    ) -> Result<(Image, u64)> {
        let mut img = Image::default();
        let mut cur = Cursor {
            img: &mut img,
            offset: 0,
            size: 0,
            limit,
        };
        self.eval(e, env, &mut cur, depth)?;
        let size = cur.size;
        Ok((img, size))
    }

    /// Write bytes read from a file or a script at the cursor.
    pub(super) fn store(&mut self, cur: &mut Cursor<'_>, data: &[u8]) -> Result<()> {
        cur.img.write(cur.offset, data, cur.limit);
        cur.offset = add(cur.offset, data.len() as u64)?;
        Ok(())
    }
}

/// Read a file, or `len` bytes of it from `skip`.
pub(super) fn read_file(
    name: &str,
    skip: u64,
    len: Option<u64>,
    budget: &mut Budget,
) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(name).map_err(|e| io_error(name, &e))?;
    if skip > 0 {
        f.seek(SeekFrom::Start(skip))
            .map_err(|e| io_error(&format!("{name}: fseek"), &e))?;
    }
    read_bounded(&mut f, len, budget).map_err(|e| match e {
        Bounded::Io(e) => io_error(&format!("fread: {name}"), &e),
        Bounded::Budget(e) => e,
    })
}

pub(super) enum Bounded {
    Io(std::io::Error),
    Budget(Error),
}

/// Read to the end, or `len` bytes, spending the budget as it goes.
pub(super) fn read_bounded(
    r: &mut dyn Read,
    len: Option<u64>,
    budget: &mut Budget,
) -> std::result::Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let want = match len {
            Some(l) => (l - out.len() as u64).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        budget.spend(n as u64).map_err(Bounded::Budget)?;
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// Run `/bin/sh -c script` and take its output (the first `len` bytes,
/// if given; then the script's exit status does not matter).
pub(super) fn run_script(script: &str, len: Option<u64>, budget: &mut Budget) -> Result<Vec<u8>> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io_error("popen", &e))?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let got = read_bounded(&mut out, len, budget);
    drop(out);
    if got.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| io_error("pclose", &e))?;
    let data = got.map_err(|e| match e {
        Bounded::Io(e) => io_error("fread", &e),
        Bounded::Budget(e) => e,
    })?;
    if len.is_none() && !status.success() {
        return Err(err("pclose: external command failed"));
    }
    Ok(data)
}

/// Parse, optimize and evaluate a data expression; only bytes below
/// `limit` are kept. Returns the image and the size of the expression.
pub(super) fn evaluate(expr: &str, vars: &dyn Vars, limit: u64) -> Result<(Image, u64)> {
    let parser = Parser { vars };
    let mut pos = 0;
    let list = parser.list(expr.as_bytes(), &mut pos, 0, false)?;
    let root = optimize(Expr::List(list));
    if nbdkit_core::debug::enabled("data", "AST") {
        crate::log::debug(None, format_args!("BEGIN AST (-D data.AST=1)"));
        print_ast(&root, 0);
        crate::log::debug(None, format_args!("END AST"));
    }
    let mut ev = Evaluator {
        budget: Budget::default(),
    };
    ev.image(&root, None, limit, 0)
}

/// The image a connection reads and writes (`allocator=sparse`).
pub(super) struct Served(pub(super) RwLock<Image>);

impl Backing for Served {
    fn read(&self, buf: &mut [u8], offset: u64) {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .read(buf, offset);
    }
    fn write(&self, buf: &[u8], offset: u64) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, buf, u64::MAX);
    }
    fn zero(&self, count: u64, offset: u64) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .zero(offset, count, u64::MAX);
    }
    fn extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .extents(count, offset, extents)
    }
}
