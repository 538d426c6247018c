//! `multi-conn`: change whether multi-conn is advertised, and emulate it.
//!
//! Parameters: `multi-conn-mode=auto|emulate|plugin|disable|unsafe`
//! (default `auto`), `multi-conn-track-dirty=conn|fast|off` (default
//! `conn`), `multi-conn-exportname=BOOL` (default false).
//!
//! `auto` is `disable` when connections are serialized, `plugin` when the
//! layer below advertises multi-conn, and `emulate` otherwise. `emulate`
//! needs a working flush below (a client cannot connect without one).
//!
//! How `emulate` reaches another connection's layers below: as nbdkit's
//! filter keeps each connection's `next`, an emulating handle keeps its
//! connection's context of the layers below
//! ([`FilterHandle::keep_next`]) in a reference-counted [`Member`] that is
//! put in a registry shared by every connection: one group per export name
//! with `multi-conn-exportname=true`, a single group otherwise. A flush (or
//! a FUA write, trim or zero, which is done without FUA and then flushed)
//! on one connection walks its group under the registry lock and flushes
//! each member's context, skipping clean ones as `multi-conn-track-dirty`
//! allows, before replying. Dirtiness is tracked as nbdkit does.
//!
//! Safety of the cross-connection calls: a member leaves the registry (under
//! the same lock) in `finalize` or when its handle is dropped, before its
//! context is finalized and closed, so a flush never uses a closed context.
//! With the parallel thread model the layers below accept concurrent calls
//! on one context; with a serialized model every call on a member's context
//! (its own requests and flushes from other connections) takes the member's
//! own lock, so the layers below never see two calls at once on it. No lock
//! is held while taking another: a flush takes the registry lock and then
//! one member lock at a time, and a request takes only its member lock, so
//! there is no lock-order cycle.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::params::bool_param;
use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
    ThreadModel,
};
use crate::sync::{lock, Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Auto,
    Emulate,
    Plugin,
    Disable,
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Track {
    #[default]
    Conn,
    Fast,
    Off,
}

/// Dirty bits of a connection.
const DIRTY_WRITE: u8 = 1;
const DIRTY_READ: u8 = 2;

/// One open connection, as seen by the other connections of its group.
struct Member {
    /// The connection's context of the layers below (emulate only).
    ctx: Option<alloc::sync::Arc<Context>>,
    /// Serializes calls on `ctx` when the thread model is not parallel.
    io: Option<Mutex<()>>,
    /// [`DIRTY_WRITE`] and [`DIRTY_READ`] since the last flush.
    dirty: Mutex<u8>,
}

impl Member {
    fn call<T>(&self, next: &Context, op: impl FnOnce(&Context) -> Result<T>) -> Result<T> {
        let ctx = self.ctx.as_deref().unwrap_or(next);
        match &self.io {
            Some(m) => {
                let _g = lock(m);
                op(ctx)
            }
            None => op(ctx),
        }
    }
}

/// The connections sharing an export (or all of them).
#[derive(Default)]
struct Group {
    members: Vec<Arc<Member>>,
    /// Something was written since the last flush (`fast` tracking).
    dirty: bool,
}

/// Every group, by export name ("" when export names are not told apart).
type Registry = Mutex<BTreeMap<String, Group>>;

/// The multi-conn filter.
#[derive(Default)]
pub struct MultiConn {
    mode: Mode,
    track: Track,
    by_export: bool,
    thread_model: Mutex<Option<ThreadModel>>,
    registry: Arc<Registry>,
}

impl core::fmt::Debug for MultiConn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MultiConn")
            .field("mode", &self.mode)
            .field("track", &self.track)
            .field("by_export", &self.by_export)
            .finish()
    }
}

impl Filter for MultiConn {
    fn name(&self) -> &'static str {
        "multi-conn"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit multi-conn filter")
    }
    fn config_help(&self) -> &'static str {
        "multi-conn-mode=<MODE>          'auto' (default), 'emulate', 'plugin',\n\
         \x20                               'disable', or 'unsafe'.\n\
         multi-conn-track-dirty=<LEVEL>  'conn' (default), 'fast', or 'off'.\n\
         multi-conn-exportname=<BOOL>    true to limit emulation by export name."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "multi-conn-mode" => {
                self.mode = match value {
                    "auto" => Mode::Auto,
                    "emulate" => Mode::Emulate,
                    "plugin" => Mode::Plugin,
                    "disable" => Mode::Disable,
                    "unsafe" => Mode::Unsafe,
                    _ => return Err(Error::config(format!("unknown multi-conn mode '{value}'"))),
                }
            }
            "multi-conn-track-dirty" => {
                self.track = match value {
                    "conn" | "connection" => Track::Conn,
                    "fast" => Track::Fast,
                    "off" => Track::Off,
                    _ => {
                        return Err(Error::config(format!(
                            "unknown multi-conn track-dirty setting '{value}'"
                        )))
                    }
                }
            }
            "multi-conn-exportname" | "multi-conn-export-name" => {
                self.by_export = bool_param(value)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn get_ready(&self, thread_model: ThreadModel) -> Result<()> {
        *lock(&self.thread_model) = Some(thread_model);
        Ok(())
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        let thread_model = lock(&self.thread_model).unwrap_or(ThreadModel::Parallel);
        let mode = match self.mode {
            Mode::Auto if thread_model == ThreadModel::SerializeConnections => Mode::Disable,
            m => m,
        };
        Ok(Box::new(MultiConnHandle {
            mode,
            track: self.track,
            serialize: thread_model != ThreadModel::Parallel,
            key: if self.by_export {
                args.export_name.into()
            } else {
                String::new()
            },
            below: Mutex::new(None),
            registry: Arc::clone(&self.registry),
            joined: Mutex::new(None),
        }))
    }
}

/// What `prepare` decided for a connection.
#[derive(Clone)]
struct Joined {
    /// `Emulate`, `Plugin`, `Disable` or `Unsafe` (never `Auto`).
    mode: Mode,
    member: Arc<Member>,
}

struct MultiConnHandle {
    /// As configured (`Auto` not yet resolved).
    mode: Mode,
    track: Track,
    serialize: bool,
    /// The registry group this connection belongs to.
    key: String,
    /// The connection's layers below, until `prepare` decides.
    below: Mutex<Option<alloc::sync::Arc<Context>>>,
    registry: Arc<Registry>,
    joined: Mutex<Option<Joined>>,
}

impl MultiConnHandle {
    fn joined(&self) -> Result<Joined> {
        lock(&self.joined)
            .clone()
            .ok_or_else(|| Error::msg(crate::errno::Errno::EIO, "multi-conn: not prepared"))
    }

    /// Leave the registry; returns the member, if this connection had one.
    fn leave(&self) -> Option<Joined> {
        let joined = lock(&self.joined).take()?;
        let mut reg = lock(&self.registry);
        if let Some(g) = reg.get_mut(&self.key) {
            g.members.retain(|m| !Arc::ptr_eq(m, &joined.member));
            if g.members.is_empty() {
                reg.remove(&self.key);
            }
        }
        Some(joined)
    }

    /// Note what a request may have left in a cache (nbdkit's rules:
    /// with `conn` tracking the connection remembers reads and writes,
    /// and any write makes the group dirty).
    fn mark_dirty(&self, j: &Joined, is_write: bool) {
        match self.track {
            Track::Conn => {
                *lock(&j.member.dirty) |= if is_write { DIRTY_WRITE } else { DIRTY_READ };
                if is_write {
                    self.group_dirty();
                }
            }
            Track::Fast => {
                if is_write {
                    self.group_dirty();
                }
            }
            Track::Off => {}
        }
    }

    fn group_dirty(&self) {
        if let Some(g) = lock(&self.registry).get_mut(&self.key) {
            g.dirty = true;
        }
    }

    /// A flush from the client, or the flush completing a FUA request.
    fn do_flush(&self, j: &Joined, next: &Context, flags: Flags) -> Result<()> {
        let mut reg = lock(&self.registry);
        let Some(g) = reg.get_mut(&self.key) else {
            return j.member.call(next, |c| c.flush(flags));
        };
        if j.mode == Mode::Emulate {
            // Flush every connection of the group that may hold data the
            // others cannot see yet.
            for m in &g.members {
                let mut d = lock(&m.dirty);
                let needed = self.track == Track::Off
                    || (g.dirty && (self.track == Track::Fast || *d & DIRTY_READ != 0))
                    || *d & DIRTY_WRITE != 0;
                if needed {
                    m.call(next, |c| c.flush(flags))?;
                    *d = 0;
                }
            }
            g.dirty = false;
            return Ok(());
        }
        // Not emulating: nothing written anywhere in the group since the
        // last flush means there is nothing to flush.
        if self.track != Track::Off && !g.dirty {
            return Ok(());
        }
        next.flush(flags)?;
        match self.track {
            Track::Conn if next.caps().can_multi_conn => {
                for m in &g.members {
                    *lock(&m.dirty) = 0;
                }
                g.dirty = false;
            }
            Track::Conn => *lock(&j.member.dirty) = 0,
            Track::Fast => g.dirty = false,
            Track::Off => {}
        }
        Ok(())
    }

    /// A write-like request: when emulating, a FUA request is done
    /// without FUA and then flushed across the group; otherwise FUA is
    /// passed down (and, as nbdkit, such a request leaves nothing dirty).
    fn write_like(
        &self,
        next: &Context,
        flags: Flags,
        op: impl FnOnce(&Context, Flags) -> Result<()>,
    ) -> Result<()> {
        let j = self.joined()?;
        let fua = flags.contains(Flags::FUA);
        if !fua || j.mode == Mode::Emulate {
            self.mark_dirty(&j, true);
        }
        if j.mode == Mode::Emulate && fua {
            j.member.call(next, |c| op(c, flags.without(Flags::FUA)))?;
            self.do_flush(&j, next, Flags::NONE)
        } else {
            j.member.call(next, |c| op(c, flags))
        }
    }
}

impl FilterHandle for MultiConnHandle {
    fn keep_next(&self, next: &alloc::sync::Arc<Context>) {
        *lock(&self.below) = Some(alloc::sync::Arc::clone(next));
    }

    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let below = lock(&self.below).take();
        let mode = match self.mode {
            Mode::Auto if next.can_multi_conn()? => Mode::Plugin,
            Mode::Auto => Mode::Emulate,
            m => m,
        };
        let ctx = if mode == Mode::Emulate {
            if !next.can_flush()? {
                return Err(Error::msg(
                    crate::errno::Errno::EINVAL,
                    "emulating multi-conn requires working flush",
                ));
            }
            below
        } else {
            None
        };
        let member = Arc::new(Member {
            io: (ctx.is_some() && self.serialize).then(|| Mutex::new(())),
            ctx,
            dirty: Mutex::new(0),
        });
        lock(&self.registry)
            .entry(self.key.clone())
            .or_default()
            .members
            .push(Arc::clone(&member));
        if let Some(old) = lock(&self.joined).replace(Joined { mode, member }) {
            // Prepared twice: forget the earlier membership.
            let mut reg = lock(&self.registry);
            if let Some(g) = reg.get_mut(&self.key) {
                g.members.retain(|m| !Arc::ptr_eq(m, &old.member));
            }
        }
        Ok(())
    }

    fn finalize(&self, _next: &Context) -> Result<()> {
        // Leave the group (letting go of the layers below) before they
        // are finalized.
        drop(self.leave());
        Ok(())
    }

    fn can_fua(&self, next: &Context) -> Result<Support> {
        // Emulating, a FUA request is flushed across every connection:
        // say so, as nbdkit does. Otherwise FUA goes down as it came.
        let emulate = lock(&self.joined)
            .as_ref()
            .is_some_and(|j| j.mode == Mode::Emulate);
        Ok(match next.caps().can_fua {
            Support::None => Support::None,
            _ if emulate => Support::Emulate,
            _ => Support::Native,
        })
    }

    fn can_multi_conn(&self, next: &Context) -> Result<bool> {
        let mode = lock(&self.joined).as_ref().map_or(self.mode, |j| j.mode);
        Ok(match mode {
            Mode::Auto | Mode::Plugin => next.can_multi_conn()?,
            Mode::Emulate | Mode::Unsafe => true,
            Mode::Disable => false,
        })
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let j = self.joined()?;
        self.mark_dirty(&j, false);
        j.member.call(next, |c| c.pread(buf, offset, flags))
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.write_like(next, flags, |c, f| c.pwrite(buf, offset, f))
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.write_like(next, flags, |c, f| c.trim(count, offset, f))
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.write_like(next, flags, |c, f| c.zero(count, offset, f))
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        let j = self.joined()?;
        self.do_flush(&j, next, flags)
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        // Block status leaves nothing in a cache (nbdkit does not look).
        let j = self.joined()?;
        j.member
            .call(next, |c| c.extents(count, offset, flags, extents))
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let j = self.joined()?;
        self.mark_dirty(&j, false);
        j.member.call(next, |c| c.cache(count, offset, flags))
    }
}

impl Drop for MultiConnHandle {
    fn drop(&mut self) {
        // Leave the registry before the member's context can be closed.
        // Our Arc is then the last one, and the context closes with it.
        drop(self.leave());
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = MultiConn::default();
        assert!(f.config("multi-conn-mode", "emulate").unwrap());
        assert_eq!(f.mode, Mode::Emulate);
        assert!(f.config("multi-conn-track-dirty", "fast").unwrap());
        assert_eq!(f.track, Track::Fast);
        assert!(f.config("multi-conn-track-dirty", "connection").unwrap());
        assert_eq!(f.track, Track::Conn);
        assert!(f.config("multi-conn-exportname", "true").unwrap());
        assert!(f.by_export);
        assert!(f.config("multi-conn-mode", "bogus").is_err());
        assert!(f.config("multi-conn-track-dirty", "bogus").is_err());
        assert!(!f.config("file", "x").unwrap());
    }
}
