//! The stats filter: count operations, bytes and time, and write the totals
//! (with request size and alignment histograms) to a file when the server
//! exits.
//!
//! Parameters: `statsfile=FILE` (required), `statsappend=BOOL`,
//! `statsthreshold=PERCENTILE` (0..100, default 95; 0 turns the
//! histograms off).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nbdkit_core::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, ThreadModel,
};

use super::util::{absolute_path, parse_bool, parse_unsigned};

/// One size bucket of a histogram.
#[derive(Debug, Clone)]
struct Bucket {
    count: u64,
    bytes: u64,
    /// Requests by the number of trailing zero bits of their offset (64 for
    /// offset 0).
    align: [u64; 65],
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            count: 0,
            bytes: 0,
            align: [0; 65],
        }
    }
}

/// What was counted for one kind of operation.
#[derive(Debug, Default, Clone)]
struct Stat {
    ops: u64,
    bytes: u64,
    usecs: u64,
    /// By floor(log2(size)).
    sizes: BTreeMap<u32, Bucket>,
}

impl Stat {
    fn record(&mut self, offset: u64, count: u64, usecs: u64, histogram: bool) {
        self.ops += 1;
        self.bytes = self.bytes.saturating_add(count);
        self.usecs = self.usecs.saturating_add(usecs);
        if histogram && count > 0 {
            let b = self.sizes.entry(63 - count.leading_zeros()).or_default();
            b.count += 1;
            b.bytes = b.bytes.saturating_add(count);
            b.align[offset.trailing_zeros().min(64) as usize] += 1;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Read = 0,
    Write,
    Trim,
    Zero,
    Extents,
    Cache,
    Flush,
}

const NAMES: [&str; 7] = ["read", "write", "trim", "zero", "extents", "cache", "flush"];

/// nbdkit's human-readable sizes.
fn humansize(bytes: f64) -> String {
    const KIB: f64 = 1024.0;
    if bytes < KIB {
        format!("{} bytes", bytes as u64)
    } else if bytes < KIB * KIB {
        format!("{:.2} KiB", bytes / KIB)
    } else if bytes < KIB * KIB * KIB {
        format!("{:.2} MiB", bytes / (KIB * KIB))
    } else if bytes < KIB * KIB * KIB * KIB {
        format!("{:.2} GiB", bytes / (KIB * KIB * KIB))
    } else {
        format!("{:.2} TiB", bytes / (KIB * KIB * KIB * KIB))
    }
}

fn humanrate(bytes: u64, usecs: u64) -> String {
    let secs = usecs as f64 / 1e6;
    if secs != 0.0 {
        humansize(bytes as f64 / secs)
    } else {
        "(n/a)".to_string()
    }
}

fn print_histogram(out: &mut String, st: &Stat, threshold: u32) {
    out.push_str("  Request size and alignment breakdown:\n");
    let mut buckets: Vec<(&u32, &Bucket)> = st.sizes.iter().collect();
    buckets.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let ops = st.ops.max(1) as f64;
    let mut printed = 0u64;
    for (i, (bits, b)) in buckets.iter().enumerate() {
        let after = (printed + b.count) as f64 * 100.0 / ops;
        if after > f64::from(threshold) && !(i == 0 && b.count > 1) {
            break;
        }
        printed += b.count;
        out.push_str(&format!(
            "    {:2} bits: {:4.1}% ({} reqs, {} total)\n",
            bits,
            b.count as f64 * 100.0 / ops,
            b.count,
            humansize(b.bytes as f64)
        ));
        let mut at_least = b.count;
        for (a, n) in b.align.iter().enumerate().take(64) {
            if *n > 0 {
                out.push_str(&format!(
                    "         {:2} bit aligned: {:5.1}% ({})\n",
                    a,
                    at_least as f64 * 100.0 / b.count as f64,
                    at_least
                ));
            }
            at_least -= n;
        }
    }
    if printed < st.ops {
        let rest = st.ops - printed;
        out.push_str(&format!(
            "    other sizes: {:4.1}% ({} reqs, {} total)\n",
            rest as f64 * 100.0 / ops,
            rest,
            humansize(st.bytes as f64)
        ));
    }
    out.push('\n');
}

fn report(stats: &[Stat; 7], elapsed_usecs: u64, threshold: u32) -> String {
    let mut out = String::new();
    let ops: u64 = stats
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != Op::Cache as usize)
        .map(|(_, s)| s.ops)
        .sum();
    let bytes: u64 = stats[..=Op::Zero as usize].iter().map(|s| s.bytes).sum();
    out.push_str(&format!(
        "total: {} ops, {:.6} s, {}, {}/s\n",
        ops,
        elapsed_usecs as f64 / 1e6,
        humansize(bytes as f64),
        humanrate(bytes, elapsed_usecs).replace("(n/a)", "0 bytes")
    ));
    for (i, st) in stats.iter().enumerate() {
        if st.ops == 0 {
            continue;
        }
        out.push_str(&format!(
            "{}: {} ops, {:.6} s, {}, {}/s op, {}/s total\n",
            NAMES[i],
            st.ops,
            st.usecs as f64 / 1e6,
            humansize(st.bytes as f64),
            humanrate(st.bytes, st.usecs),
            humanrate(st.bytes, elapsed_usecs)
        ));
        if threshold > 0 && i != Op::Flush as usize {
            print_histogram(&mut out, st, threshold);
        }
    }
    out
}

/// The stats filter.
#[derive(Debug)]
pub struct Stats {
    file: Option<std::path::PathBuf>,
    append: bool,
    threshold: u32,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stats: Mutex<[Stat; 7]>,
    start: Mutex<Instant>,
    histogram: bool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            file: None,
            append: false,
            threshold: 95,
            shared: Arc::new(Shared {
                stats: Mutex::new(Default::default()),
                start: Mutex::new(Instant::now()),
                histogram: true,
            }),
        }
    }
}

impl Filter for Stats {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit stats filter")
    }

    fn config_help(&self) -> &'static str {
        "statsfile=<FILE>    (required) The file to place the log in.\n\
         statsappend=<BOOL>  True to append to the log (default false).\n\
         statsthreshold=<PERCENTILE> Threshold for histograms (default 95)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "statsfile" => self.file = Some(absolute_path(value)?),
            "statsappend" => self.append = parse_bool(value)?,
            "statsthreshold" => {
                let v = value.trim().parse::<i64>().ok();
                match v {
                    Some(n) if (0..=100).contains(&n) => self.threshold = n as u32,
                    Some(_) => {
                        return Err(Error::config(
                            "statsthreshold must be between 0 and 100 (percent)",
                        ))
                    }
                    None => {
                        parse_unsigned(key, value)?;
                        return Err(Error::config(
                            "statsthreshold must be between 0 and 100 (percent)",
                        ));
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(path) = &self.file else {
            return Err(Error::config("stats filter requires statsfile parameter"));
        };
        // Check now that the file can be written, as nbdkit does.
        let mut o = OpenOptions::new();
        o.create(true);
        if self.append {
            o.append(true);
        } else {
            o.write(true).truncate(true);
        }
        o.open(path)
            .map_err(|e| Error::config(format!("open: {}: {e}", path.display())))?;
        self.shared = Arc::new(Shared {
            stats: Mutex::new(Default::default()),
            start: Mutex::new(Instant::now()),
            histogram: self.threshold > 0,
        });
        Ok(())
    }

    fn get_ready(&self, _thread_model: ThreadModel) -> Result<()> {
        *self.shared.start.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }

    fn cleanup(&self) {
        let Some(path) = &self.file else { return };
        let start = *self.shared.start.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = start.elapsed().as_micros() as u64;
        let stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let text = report(&stats, elapsed, self.threshold);
        let mut o = OpenOptions::new();
        o.create(true).append(true);
        if let Ok(mut f) = o.open(path) {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(StatsHandle(self.shared.clone())))
    }
}

struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    fn time<T>(&self, op: Op, offset: u64, count: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        if r.is_ok() {
            let usecs = t.elapsed().as_micros() as u64;
            let mut s = self.0.stats.lock().unwrap_or_else(|p| p.into_inner());
            s[op as usize].record(offset, count, usecs, self.0.histogram);
        }
        r
    }
}

impl FilterHandle for StatsHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let n = buf.len() as u64;
        self.time(Op::Read, offset, n, || next.pread(buf, offset, flags))
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.time(Op::Write, offset, buf.len() as u64, || {
            next.pwrite(buf, offset, flags)
        })
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.time(Op::Trim, offset, count, || next.trim(count, offset, flags))
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.time(Op::Zero, offset, count, || next.zero(count, offset, flags))
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.time(Op::Extents, offset, count, || {
            next.extents(count, offset, flags, extents)
        })
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.time(Op::Cache, offset, count, || {
            next.cache(count, offset, flags)
        })
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        self.time(Op::Flush, 0, 0, || next.flush(flags))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn sizes_print_like_nbdkit() {
        assert_eq!(humansize(0.0), "0 bytes");
        assert_eq!(humansize(12288.0), "12.00 KiB");
        assert_eq!(humansize(1048576.0), "1.00 MiB");
        assert_eq!(humanrate(1, 0), "(n/a)");
    }

    #[test]
    fn report_shape() {
        let mut s: [Stat; 7] = Default::default();
        for i in 0..3u64 {
            s[Op::Read as usize].record(i * 4096, 4096, 1, true);
        }
        s[Op::Write as usize].record(0, 8192, 0, true);
        let text = report(&s, 1_000_000, 95);
        assert!(
            text.starts_with("total: 4 ops, 1.000000 s, 20.00 KiB, 20.00 KiB/s\n"),
            "{text}"
        );
        assert!(
            text.contains("read: 3 ops, 0.000003 s, 12.00 KiB, "),
            "{text}"
        );
        assert!(
            text.contains("    12 bits: 100.0% (3 reqs, 12.00 KiB total)\n"),
            "{text}"
        );
        assert!(
            text.contains("         12 bit aligned: 100.0% (3)\n"),
            "{text}"
        );
        assert!(
            text.contains("         13 bit aligned:  66.7% (2)\n"),
            "{text}"
        );
        assert!(
            text.contains("    other sizes: 100.0% (1 reqs, 8.00 KiB total)\n"),
            "{text}"
        );
    }
}
