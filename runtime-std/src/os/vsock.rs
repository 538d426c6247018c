//! `--vsock`: listening on `AF_VSOCK` (virtual machine sockets).
//!
//! - Linux: `AF_VSOCK`, any CID; the peer's CID and port are recorded for
//!   the ip filter's `vsock-cid:`/`vsock-port:` rules.
//! - FreeBSD has no `AF_VSOCK` (its Hyper-V sockets are another family):
//!   a clear error when the server starts.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nbdkit_core::backend::Peer;

/// A non-blocking, close-on-exec listening socket on `port`.
#[cfg(target_os = "linux")]
pub(crate) fn listen(port: u32) -> Result<OwnedFd, String> {
    let sock = socket2::Socket::new(
        socket2::Domain::VSOCK,
        socket2::Type::STREAM.cloexec(),
        None,
    )
    .map_err(|e| format!("socket: AF_VSOCK: {e}"))?;
    let addr = socket2::SockAddr::vsock(libc::VMADDR_CID_ANY, port);
    sock.bind(&addr)
        .map_err(|e| format!("bind: vsock port {port}: {e}"))?;
    sock.listen(1024)
        .map_err(|e| format!("listen: vsock: {e}"))?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(sock.into())
}

/// FreeBSD has no `AF_VSOCK`.
#[cfg(target_os = "freebsd")]
pub(crate) fn listen(_port: u32) -> Result<OwnedFd, String> {
    Err("--vsock: AF_VSOCK is not available on FreeBSD".into())
}

/// Accept one connection (non-blocking, close-on-exec) from a listener
/// made by [`listen`], with its peer's address.
#[cfg(target_os = "linux")]
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, Peer)> {
    // socket2 accepts with accept4(SOCK_CLOEXEC).
    let (sock, addr) = socket2::SockRef::from(&listener).accept()?;
    sock.set_nonblocking(true)?;
    let peer = match addr.as_vsock_address() {
        Some((cid, port)) => Peer::Vsock { cid, port },
        None => Peer::Unknown,
    };
    Ok((sock.into(), peer))
}

/// FreeBSD has no `AF_VSOCK` ([`listen`] fails, so this is not reached).
#[cfg(target_os = "freebsd")]
pub(crate) fn accept(_listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, Peer)> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Write a vsock peer's address into `ss` (for `nbdkit_peer_name`) and
/// return its length.
#[cfg(target_os = "linux")]
pub(crate) fn write_sockaddr(ss: &mut libc::sockaddr_storage, cid: u32, port: u32) -> usize {
    // SAFETY: sockaddr_storage is large and aligned enough for any socket
    // address type, and the reference is to a live, exclusive value.
    let s = unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_vm>() };
    s.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    s.svm_cid = cid;
    s.svm_port = port;
    core::mem::size_of::<libc::sockaddr_vm>()
}

/// FreeBSD has no `AF_VSOCK`, so no connection has a vsock peer; should
/// one be asked for, the address is the family alone, `AF_UNSPEC`.
#[cfg(target_os = "freebsd")]
pub(crate) fn write_sockaddr(ss: &mut libc::sockaddr_storage, _cid: u32, _port: u32) -> usize {
    ss.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
    core::mem::size_of::<libc::sa_family_t>()
}
