//! Typed forms of the transmission phase's integers: command flags, NBD
//! error numbers, and the export's transmission flags computed from what
//! the export can do (one function for every runtime).

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};

use crate::errno::Errno;
use crate::wire::consts::*;

/// The flags of one request (`NBD_CMD_FLAG_*`). Bits the protocol does not
/// define are kept, so that validation can refuse them.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CmdFlags(u16);

impl CmdFlags {
    /// No flag.
    pub const NONE: CmdFlags = CmdFlags(0);
    /// `NBD_CMD_FLAG_FUA`: force unit access.
    pub const FUA: CmdFlags = CmdFlags(CMD_FLAG_FUA);
    /// `NBD_CMD_FLAG_NO_HOLE`: zero without punching holes.
    pub const NO_HOLE: CmdFlags = CmdFlags(CMD_FLAG_NO_HOLE);
    /// `NBD_CMD_FLAG_DF`: do not fragment the read reply.
    pub const DF: CmdFlags = CmdFlags(CMD_FLAG_DF);
    /// `NBD_CMD_FLAG_REQ_ONE`: one extent only.
    pub const REQ_ONE: CmdFlags = CmdFlags(CMD_FLAG_REQ_ONE);
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail unless zeroing is fast.
    pub const FAST_ZERO: CmdFlags = CmdFlags(CMD_FLAG_FAST_ZERO);
    /// `NBD_CMD_FLAG_PAYLOAD_LEN`: the length is a payload length.
    pub const PAYLOAD_LEN: CmdFlags = CmdFlags(CMD_FLAG_PAYLOAD_LEN);
    /// Every flag the protocol defines.
    pub const KNOWN: CmdFlags = CmdFlags(
        CMD_FLAG_FUA
            | CMD_FLAG_NO_HOLE
            | CMD_FLAG_DF
            | CMD_FLAG_REQ_ONE
            | CMD_FLAG_FAST_ZERO
            | CMD_FLAG_PAYLOAD_LEN,
    );

    /// The flags of a wire value, unknown bits included.
    pub const fn from_bits_retain(bits: u16) -> Self {
        CmdFlags(bits)
    }

    /// The wire value.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: CmdFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any flag of `other` is set.
    pub const fn intersects(self, other: CmdFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// True when no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set here and not in `other`.
    pub const fn difference(self, other: CmdFlags) -> Self {
        CmdFlags(self.0 & !other.0)
    }
}

impl BitOr for CmdFlags {
    type Output = CmdFlags;
    fn bitor(self, rhs: CmdFlags) -> CmdFlags {
        CmdFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for CmdFlags {
    fn bitor_assign(&mut self, rhs: CmdFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for CmdFlags {
    type Output = CmdFlags;
    fn bitand(self, rhs: CmdFlags) -> CmdFlags {
        CmdFlags(self.0 & rhs.0)
    }
}

impl fmt::Debug for CmdFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(CmdFlags, &str); 6] = [
            (CmdFlags::FUA, "FUA"),
            (CmdFlags::NO_HOLE, "NO_HOLE"),
            (CmdFlags::DF, "DF"),
            (CmdFlags::REQ_ONE, "REQ_ONE"),
            (CmdFlags::FAST_ZERO, "FAST_ZERO"),
            (CmdFlags::PAYLOAD_LEN, "PAYLOAD_LEN"),
        ];
        f.write_str("CmdFlags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.difference(CmdFlags::KNOWN).bits();
        if unknown != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{unknown:#x}")?;
        }
        f.write_str(")")
    }
}

/// An error number of the NBD protocol, as sent in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NbdError {
    /// `NBD_EPERM`: operation not permitted (e.g. a write to a read-only export).
    Perm,
    /// `NBD_EIO`: input/output error.
    Io,
    /// `NBD_ENOMEM`: out of memory (nbdkit: a request too large).
    NoMem,
    /// `NBD_EINVAL`: invalid argument.
    Inval,
    /// `NBD_ENOSPC`: no space left (a write past the end).
    NoSpc,
    /// `NBD_EOVERFLOW`: value too large (DF on a read that must split).
    Overflow,
    /// `NBD_ENOTSUP`: not supported (FAST_ZERO that would be slow).
    NotSup,
    /// `NBD_ESHUTDOWN`: the server is shutting down.
    Shutdown,
}

impl NbdError {
    /// The number on the wire.
    pub const fn to_wire(self) -> u32 {
        match self {
            NbdError::Perm => NBD_EPERM,
            NbdError::Io => NBD_EIO,
            NbdError::NoMem => NBD_ENOMEM,
            NbdError::Inval => NBD_EINVAL,
            NbdError::NoSpc => NBD_ENOSPC,
            NbdError::Overflow => NBD_EOVERFLOW,
            NbdError::NotSup => NBD_ENOTSUP,
            NbdError::Shutdown => NBD_ESHUTDOWN,
        }
    }

    /// The error for a wire number: `None` for 0 (success); a number the
    /// protocol does not define is EINVAL, as the spec asks servers to map it.
    pub const fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => return None,
            NBD_EPERM => NbdError::Perm,
            NBD_EIO => NbdError::Io,
            NBD_ENOMEM => NbdError::NoMem,
            NBD_ENOSPC => NbdError::NoSpc,
            NBD_EOVERFLOW => NbdError::Overflow,
            NBD_ENOTSUP => NbdError::NotSup,
            NBD_ESHUTDOWN => NbdError::Shutdown,
            _ => NbdError::Inval,
        })
    }
}

impl NbdError {
    /// The error nbdkit sends for a call that failed with `errno`, on a
    /// request with `flags`: ENOTSUP is told only to FAST_ZERO, EOVERFLOW
    /// only to DF, and a failure without an errno (0) is EIO.
    pub fn from_errno(errno: Errno, flags: CmdFlags) -> Self {
        let wire = errno.to_nbd(
            flags.contains(CmdFlags::FAST_ZERO),
            flags.contains(CmdFlags::DF),
        );
        NbdError::from_wire(wire).unwrap_or(NbdError::Io)
    }
}

impl From<NbdError> for u32 {
    fn from(e: NbdError) -> u32 {
        e.to_wire()
    }
}

/// What an open export can do on one connection: the input of
/// [`eflags`], filled by each runtime from its backend (the Plugin/Filter
/// stack's capabilities, or a device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Writes possible.
    pub write: bool,
    /// FLUSH possible.
    pub flush: bool,
    /// FUA honoured (natively or by flush).
    pub fua: bool,
    /// A rotational medium.
    pub rotational: bool,
    /// TRIM possible.
    pub trim: bool,
    /// WRITE_ZEROES possible (natively or emulated).
    pub zero: bool,
    /// FAST_ZERO honoured (only meaningful with `zero`).
    pub fast_zero: bool,
    /// Connections see each other's writes (the runtime folds in its
    /// thread model: nbdkit never advertises it with
    /// serialize_connections).
    pub multi_conn: bool,
    /// CACHE possible.
    pub cache: bool,
}

/// The transmission flags of an export as nbdkit computes them
/// (`NBD_FLAG_*`, without SEND_DF: the handshake adds it when structured
/// replies are on).
pub fn eflags(f: &Features) -> u16 {
    let mut flags = FLAG_HAS_FLAGS;
    let mut set = |on: bool, flag: u16| {
        if on {
            flags |= flag;
        }
    };
    set(!f.write, FLAG_READ_ONLY);
    set(f.flush, FLAG_SEND_FLUSH);
    set(f.fua, FLAG_SEND_FUA);
    set(f.rotational, FLAG_ROTATIONAL);
    set(f.trim, FLAG_SEND_TRIM);
    set(f.zero, FLAG_SEND_WRITE_ZEROES);
    set(f.zero && f.fast_zero, FLAG_SEND_FAST_ZERO);
    set(f.multi_conn, FLAG_CAN_MULTI_CONN);
    set(f.cache, FLAG_SEND_CACHE);
    flags
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn nbd_errors_round_trip_and_unknown_is_einval() {
        for e in [
            NbdError::Perm,
            NbdError::Io,
            NbdError::NoMem,
            NbdError::Inval,
            NbdError::NoSpc,
            NbdError::Overflow,
            NbdError::NotSup,
            NbdError::Shutdown,
        ] {
            assert_eq!(NbdError::from_wire(e.to_wire()), Some(e));
        }
        assert_eq!(NbdError::from_wire(0), None);
        assert_eq!(NbdError::from_wire(9999), Some(NbdError::Inval));
    }

    #[test]
    fn errnos_become_nbd_errors_as_nbdkit_sends_them() {
        let none = CmdFlags::NONE;
        assert_eq!(NbdError::from_errno(Errno(0), none), NbdError::Io);
        assert_eq!(NbdError::from_errno(Errno::EROFS, none), NbdError::Perm);
        assert_eq!(NbdError::from_errno(Errno::EFBIG, none), NbdError::NoSpc);
        assert_eq!(NbdError::from_errno(Errno::EBUSY, none), NbdError::Inval);
        assert_eq!(NbdError::from_errno(Errno::ENOTSUP, none), NbdError::Inval);
        assert_eq!(
            NbdError::from_errno(Errno::ENOTSUP, CmdFlags::FAST_ZERO),
            NbdError::NotSup
        );
        assert_eq!(
            NbdError::from_errno(Errno::EOVERFLOW, none),
            NbdError::Inval
        );
        assert_eq!(
            NbdError::from_errno(Errno::EOVERFLOW, CmdFlags::DF),
            NbdError::Overflow
        );
    }

    #[test]
    fn cmd_flags_keep_unknown_bits() {
        let f = CmdFlags::from_bits_retain(CMD_FLAG_FUA | 0x8000);
        assert!(f.contains(CmdFlags::FUA));
        assert!(!f.difference(CmdFlags::KNOWN).is_empty());
        extern crate alloc;
        assert_eq!(alloc::format!("{f:?}"), "CmdFlags(FUA | 0x8000)");
    }

    #[test]
    fn eflags_from_features() {
        assert_eq!(
            eflags(&Features::default()),
            FLAG_HAS_FLAGS | FLAG_READ_ONLY
        );
        let all = Features {
            write: true,
            flush: true,
            fua: true,
            rotational: true,
            trim: true,
            zero: true,
            fast_zero: true,
            multi_conn: true,
            cache: true,
        };
        assert_eq!(
            eflags(&all),
            FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_ROTATIONAL
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES
                | FLAG_SEND_FAST_ZERO
                | FLAG_CAN_MULTI_CONN
                | FLAG_SEND_CACHE
        );
        // FAST_ZERO means nothing without WRITE_ZEROES.
        let no_zero = Features { zero: false, ..all };
        assert_eq!(eflags(&no_zero) & FLAG_SEND_FAST_ZERO, 0);
    }
}
