use alloc::string::String;
use alloc::vec::Vec;

/// nbdkit's four thread models, ordered from most to least restrictive: the
/// effective model of a stack is the minimum over its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadModel {
    /// One connection at a time.
    SerializeConnections = 0,
    /// One request at a time across all connections.
    SerializeAllRequests = 1,
    /// One request at a time per connection.
    SerializeRequests = 2,
    /// Any number of requests at once.
    Parallel = 3,
}

impl ThreadModel {
    /// The name nbdkit prints (`--dump-plugin`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadModel::SerializeConnections => "serialize_connections",
            ThreadModel::SerializeAllRequests => "serialize_all_requests",
            ThreadModel::SerializeRequests => "serialize_requests",
            ThreadModel::Parallel => "parallel",
        }
    }

    /// Parse a name as nbdkit's script plugins print it.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "serialize_connections" => ThreadModel::SerializeConnections,
            "serialize_all_requests" => ThreadModel::SerializeAllRequests,
            "serialize_requests" => ThreadModel::SerializeRequests,
            "parallel" => ThreadModel::Parallel,
            _ => return None,
        })
    }
}

/// How a layer supports FUA, zeroing or caching (nbdkit's
/// `NBDKIT_{FUA,ZERO,CACHE}_{NONE,EMULATE,NATIVE}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Support {
    /// Not supported.
    #[default]
    None = 0,
    /// The server emulates it (FUA by flush, zero by writing zeroes, cache
    /// by reading).
    Emulate = 1,
    /// The layer implements it.
    Native = 2,
}

/// Flags of a data call (nbdkit's `NBDKIT_FLAG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// zero: holes may be punched (the client did not send NO_HOLE).
    pub const MAY_TRIM: Flags = Flags(1);
    /// Force unit access.
    pub const FUA: Flags = Flags(2);
    /// extents: one extent is enough.
    pub const REQ_ONE: Flags = Flags(4);
    /// zero: fail with ENOTSUP unless zeroing is fast.
    pub const FAST_ZERO: Flags = Flags(8);

    /// Whether every flag in `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags without `other`.
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// These flags and `other`.
    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size (power of 2, 1..=65536).
    pub minimum: u32,
    /// Preferred block size (power of 2, >= 512).
    pub preferred: u32,
    /// Maximum payload (0xffffffff = no limit).
    pub maximum: u32,
}

/// Who is at the other end of a connection (nbdkit_peer_name and
/// nbdkit_peer_pid/uid/gid).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Peer {
    /// Not known (stdin/stdout, or the runtime could not tell).
    #[default]
    Unknown,
    /// A Unix socket client, with its credentials where the kernel gave them.
    Unix {
        /// Process id.
        pid: Option<i32>,
        /// User id.
        uid: Option<u32>,
        /// Group id.
        gid: Option<u32>,
    },
    /// A TCP client.
    Inet(core::net::SocketAddr),
    /// An AF_VSOCK client.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// What a connection asked for when it opened an export.
#[derive(Debug, Clone, Copy)]
pub struct OpenArgs<'a> {
    /// The export is read-only (`-r`, or a filter asked for it).
    pub readonly: bool,
    /// The export name the client chose.
    pub export_name: &'a str,
    /// The connection is encrypted.
    pub is_tls: bool,
    /// Who is connected.
    pub peer: &'a Peer,
}

/// One entry of an export list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The export name.
    pub name: String,
    /// Its description, if any.
    pub description: Option<String>,
}

/// The list a plugin builds in `list_exports` (nbdkit_exports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exports {
    /// Exports added so far.
    pub list: Vec<Export>,
    /// `nbdkit_use_default_export` was called: list the default export.
    pub use_default: bool,
}

impl Exports {
    /// nbdkit's limit on the number of exports.
    pub const MAX: usize = 10_000;

    /// Add an export (`nbdkit_add_export`).
    pub fn add(&mut self, name: &str, description: Option<&str>) -> super::Result<()> {
        if self.list.len() >= Self::MAX {
            return Err(super::Error::msg(
                crate::errno::Errno::ENOMEM,
                "nbdkit_add_export: too many exports",
            ));
        }
        if name.len() > crate::wire::consts::MAX_STRING {
            return Err(super::Error::msg(
                crate::errno::Errno::EINVAL,
                "nbdkit_add_export: name too long",
            ));
        }
        self.list.push(Export {
            name: name.into(),
            description: description.map(Into::into),
        });
        Ok(())
    }
}
