//! The credentials of a Unix socket's peer, for the ip filter's `uid:`,
//! `gid:` and `pid:` rules and for logging.
//!
//! tokio's `peer_cred` already has one body per operating system:
//! - Linux: `getsockopt(SO_PEERCRED)` (`struct ucred`: pid, uid, gid).
//! - FreeBSD: `getsockopt(LOCAL_PEERCRED)` (`struct xucred`: uid, the
//!   first group, and the pid since FreeBSD 13).

use nbdkit_core::backend::Peer;

/// A Unix peer whose credentials could not be read.
const UNKNOWN: Peer = Peer::Unix {
    pid: None,
    uid: None,
    gid: None,
};

/// The peer of a Unix socket connection (all unknown when the call fails).
pub(crate) fn unix_peer(s: &tokio::net::UnixStream) -> Peer {
    match s.peer_cred() {
        Ok(c) => Peer::Unix {
            pid: c.pid(),
            uid: Some(c.uid()),
            gid: Some(c.gid()),
        },
        Err(_) => UNKNOWN,
    }
}

/// [`unix_peer`] of a socket outside the runtime (`getsockopt(SO_PEERCRED)`).
#[cfg(target_os = "linux")]
pub(crate) fn unix_peer_std(s: &std::os::unix::net::UnixStream) -> Peer {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(s, PeerCredentials) {
        Ok(c) => Peer::Unix {
            pid: Some(c.pid()),
            uid: Some(c.uid()),
            gid: Some(c.gid()),
        },
        Err(_) => UNKNOWN,
    }
}
