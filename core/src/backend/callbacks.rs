//! The optional callbacks a plugin has: one typed set per plugin, which
//! `--dump-plugin` prints as its `has_*` lines and from which the server
//! decides whether to ask the plugin a `can_*` question or answer it with
//! nbdkit's default.

bitflags::bitflags! {
    /// The callbacks of nbdkit's `struct nbdkit_plugin` that a plugin fills
    /// in. Each plugin states its set once ([`Plugin::callbacks`]): it is
    /// what `--dump-plugin` prints as `has_NAME=1`, in nbdkit's order, and
    /// the server asks a plugin's handle `can_write`, `can_zero`, ... only
    /// when the set holds `CAN_WRITE`, `CAN_ZERO`, ...; otherwise it gives
    /// nbdkit's default for a plugin without that callback (for example
    /// `can_write` is whether the set holds `PWRITE` or `PWRITE_V1`).
    ///
    /// The `*_V1` flags are the data callbacks of API 1 plugins (nbdkit's
    /// `_pread_v1`, ...): they count for those defaults but have no
    /// `has_` line, as in nbdkit.
    ///
    /// [`Plugin::callbacks`]: super::Plugin::callbacks
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Callbacks: u64 {
        /// `.longname`
        const LONGNAME = 1 << 0;
        /// `.version`
        const VERSION = 1 << 1;
        /// `.description`
        const DESCRIPTION = 1 << 2;
        /// `.load`
        const LOAD = 1 << 3;
        /// `.unload`
        const UNLOAD = 1 << 4;
        /// `.dump_plugin`
        const DUMP_PLUGIN = 1 << 5;
        /// `.config`
        const CONFIG = 1 << 6;
        /// `.config_complete`
        const CONFIG_COMPLETE = 1 << 7;
        /// `.config_help`
        const CONFIG_HELP = 1 << 8;
        /// `.thread_model`
        const THREAD_MODEL = 1 << 9;
        /// `.get_ready`
        const GET_READY = 1 << 10;
        /// `.after_fork`
        const AFTER_FORK = 1 << 11;
        /// `.cleanup`
        const CLEANUP = 1 << 12;
        /// `.preconnect`
        const PRECONNECT = 1 << 13;
        /// `.list_exports`
        const LIST_EXPORTS = 1 << 14;
        /// `.default_export`
        const DEFAULT_EXPORT = 1 << 15;
        /// `.open`
        const OPEN = 1 << 16;
        /// `.close`
        const CLOSE = 1 << 17;
        /// `.export_description`
        const EXPORT_DESCRIPTION = 1 << 18;
        /// `.get_size`
        const GET_SIZE = 1 << 19;
        /// `.block_size`
        const BLOCK_SIZE = 1 << 20;
        /// `.can_write`
        const CAN_WRITE = 1 << 21;
        /// `.can_flush`
        const CAN_FLUSH = 1 << 22;
        /// `.is_rotational`
        const IS_ROTATIONAL = 1 << 23;
        /// `.can_trim`
        const CAN_TRIM = 1 << 24;
        /// `.can_zero`
        const CAN_ZERO = 1 << 25;
        /// `.can_fast_zero`
        const CAN_FAST_ZERO = 1 << 26;
        /// `.can_extents`
        const CAN_EXTENTS = 1 << 27;
        /// `.can_fua`
        const CAN_FUA = 1 << 28;
        /// `.can_multi_conn`
        const CAN_MULTI_CONN = 1 << 29;
        /// `.can_cache`
        const CAN_CACHE = 1 << 30;
        /// `.pread`
        const PREAD = 1 << 31;
        /// `.pwrite`
        const PWRITE = 1 << 32;
        /// `.flush`
        const FLUSH = 1 << 33;
        /// `.trim`
        const TRIM = 1 << 34;
        /// `.zero`
        const ZERO = 1 << 35;
        /// `.extents`
        const EXTENTS = 1 << 36;
        /// `.cache`
        const CACHE = 1 << 37;
        /// `._pread_v1` (API 1; no `has_` line)
        const PREAD_V1 = 1 << 38;
        /// `._pwrite_v1` (API 1; no `has_` line)
        const PWRITE_V1 = 1 << 39;
        /// `._flush_v1` (API 1; no `has_` line)
        const FLUSH_V1 = 1 << 40;
        /// `._trim_v1` (API 1; no `has_` line)
        const TRIM_V1 = 1 << 41;
        /// `._zero_v1` (API 1; no `has_` line)
        const ZERO_V1 = 1 << 42;
    }
}

/// The callbacks nbdkit prints as `has_NAME=1`, in its order.
const LISTED: [(Callbacks, &str); 38] = [
    (Callbacks::LONGNAME, "longname"),
    (Callbacks::VERSION, "version"),
    (Callbacks::DESCRIPTION, "description"),
    (Callbacks::LOAD, "load"),
    (Callbacks::UNLOAD, "unload"),
    (Callbacks::DUMP_PLUGIN, "dump_plugin"),
    (Callbacks::CONFIG, "config"),
    (Callbacks::CONFIG_COMPLETE, "config_complete"),
    (Callbacks::CONFIG_HELP, "config_help"),
    (Callbacks::THREAD_MODEL, "thread_model"),
    (Callbacks::GET_READY, "get_ready"),
    (Callbacks::AFTER_FORK, "after_fork"),
    (Callbacks::CLEANUP, "cleanup"),
    (Callbacks::PRECONNECT, "preconnect"),
    (Callbacks::LIST_EXPORTS, "list_exports"),
    (Callbacks::DEFAULT_EXPORT, "default_export"),
    (Callbacks::OPEN, "open"),
    (Callbacks::CLOSE, "close"),
    (Callbacks::EXPORT_DESCRIPTION, "export_description"),
    (Callbacks::GET_SIZE, "get_size"),
    (Callbacks::BLOCK_SIZE, "block_size"),
    (Callbacks::CAN_WRITE, "can_write"),
    (Callbacks::CAN_FLUSH, "can_flush"),
    (Callbacks::IS_ROTATIONAL, "is_rotational"),
    (Callbacks::CAN_TRIM, "can_trim"),
    (Callbacks::CAN_ZERO, "can_zero"),
    (Callbacks::CAN_FAST_ZERO, "can_fast_zero"),
    (Callbacks::CAN_EXTENTS, "can_extents"),
    (Callbacks::CAN_FUA, "can_fua"),
    (Callbacks::CAN_MULTI_CONN, "can_multi_conn"),
    (Callbacks::CAN_CACHE, "can_cache"),
    (Callbacks::PREAD, "pread"),
    (Callbacks::PWRITE, "pwrite"),
    (Callbacks::FLUSH, "flush"),
    (Callbacks::TRIM, "trim"),
    (Callbacks::ZERO, "zero"),
    (Callbacks::EXTENTS, "extents"),
    (Callbacks::CACHE, "cache"),
];

impl Callbacks {
    /// Every callback that has a `has_` line (all but the API 1 ones).
    pub const LISTED: Callbacks = Callbacks::from_bits_truncate((Callbacks::CACHE.bits() << 1) - 1);

    /// The `has_` names of the callbacks in this set, in nbdkit's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        LISTED
            .iter()
            .filter(move |(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
    }

    /// Every `has_` name nbdkit knows, in its order.
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        LISTED.iter().map(|(_, n)| *n)
    }

    /// The callback nbdkit names `name` (`"can_write"`), if any.
    pub fn from_has_name(name: &str) -> Option<Callbacks> {
        LISTED.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }

    /// The plugin can write (`.pwrite` or `._pwrite_v1`): nbdkit's
    /// `can_write` without `.can_write`.
    pub fn writes(self) -> bool {
        self.intersects(Callbacks::PWRITE | Callbacks::PWRITE_V1)
    }

    /// nbdkit's `can_flush` without `.can_flush`.
    pub fn flushes(self) -> bool {
        self.intersects(Callbacks::FLUSH | Callbacks::FLUSH_V1)
    }

    /// nbdkit's `can_trim` without `.can_trim`.
    pub fn trims(self) -> bool {
        self.intersects(Callbacks::TRIM | Callbacks::TRIM_V1)
    }

    /// The plugin zeroes natively (`.zero` or `._zero_v1`): nbdkit's
    /// `can_zero` without `.can_zero` is native then, emulated otherwise.
    pub fn zeroes(self) -> bool {
        self.intersects(Callbacks::ZERO | Callbacks::ZERO_V1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_in_bit_order_and_complete() {
        // The `has_` lines follow the declaration order: nbdkit's.
        for (i, (c, _)) in LISTED.iter().enumerate() {
            assert_eq!(c.bits(), 1 << i);
        }
        let v1 = Callbacks::PREAD_V1
            | Callbacks::PWRITE_V1
            | Callbacks::FLUSH_V1
            | Callbacks::TRIM_V1
            | Callbacks::ZERO_V1;
        assert_eq!(Callbacks::all().names().count() + v1.iter().count(), 43);
        assert_eq!(
            Callbacks::from_has_name("can_fua"),
            Some(Callbacks::CAN_FUA)
        );
        assert_eq!(Callbacks::from_has_name("pread_v1"), None);
        assert_eq!(Callbacks::LISTED.names().count(), 38);
        assert!((Callbacks::LISTED & v1).is_empty());
    }

    #[test]
    fn names_keep_nbdkits_order() {
        let set = Callbacks::PREAD | Callbacks::CONFIG | Callbacks::LONGNAME;
        let names: alloc::vec::Vec<_> = set.names().collect();
        assert_eq!(names, ["longname", "config", "pread"]);
    }

    use crate::backend::{Flags, Handle, OpenArgs, Peer, Plugin, Result, Stack, Support};
    use alloc::boxed::Box;

    /// A plugin with the callbacks `0` whose handle claims everything.
    struct Claims(Callbacks);
    struct ClaimsHandle;

    impl Plugin for Claims {
        fn name(&self) -> &'static str {
            "claims"
        }
        fn callbacks(&self) -> Callbacks {
            self.0
        }
        fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
            Ok(Box::new(ClaimsHandle))
        }
    }

    impl Handle for ClaimsHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(512)
        }
        fn can_write(&self) -> Result<bool> {
            Ok(true)
        }
        fn can_flush(&self) -> Result<bool> {
            Ok(true)
        }
        fn can_zero(&self) -> Result<Support> {
            Ok(Support::Native)
        }
        fn can_extents(&self) -> Result<bool> {
            Ok(true)
        }
        fn can_cache(&self) -> Result<Support> {
            Ok(Support::Native)
        }
        fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
    }

    fn caps_of(set: Callbacks) -> crate::backend::Caps {
        let stack = Stack::new(Box::new(Claims(set)), alloc::vec![]);
        let peer = Peer::Unknown;
        let args = OpenArgs {
            readonly: false,
            export_name: "",
            is_tls: false,
            peer: &peer,
        };
        stack.open(&args).unwrap().caps().clone()
    }

    #[test]
    fn a_can_callback_outside_the_set_is_not_asked() {
        let c = caps_of(Callbacks::OPEN | Callbacks::GET_SIZE | Callbacks::PREAD);
        assert!(!c.can_write && !c.can_flush && !c.can_extents);
        assert_eq!(c.can_cache, Support::None);
    }

    #[test]
    fn defaults_derive_from_the_data_callbacks() {
        let c = caps_of(Callbacks::PREAD_V1 | Callbacks::PWRITE_V1 | Callbacks::FLUSH_V1);
        assert!(c.can_write && c.can_flush && !c.can_trim && !c.can_extents);
        assert_eq!(c.can_zero, Support::Emulate);
        assert!(c.can_fast_zero);
        assert_eq!(c.can_fua, Support::Emulate);
        let c =
            caps_of(Callbacks::PWRITE | Callbacks::ZERO | Callbacks::EXTENTS | Callbacks::CACHE);
        assert!(c.can_write && !c.can_flush && c.can_extents);
        assert_eq!(c.can_zero, Support::Native);
        assert!(!c.can_fast_zero);
        assert_eq!(c.can_fua, Support::None);
        assert_eq!(c.can_cache, Support::Native);
    }

    #[test]
    fn a_can_callback_in_the_set_is_asked() {
        let set = Callbacks::CAN_WRITE | Callbacks::CAN_ZERO | Callbacks::CAN_CACHE;
        let c = caps_of(set);
        assert!(c.can_write && !c.can_flush);
        assert_eq!(c.can_zero, Support::Native);
        assert_eq!(c.can_cache, Support::Native);
    }
}
