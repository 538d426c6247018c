//! `--exit-with-parent`: have the kernel send this process `SIGTERM` when
//! its parent exits.
//!
//! - Linux: `prctl(PR_SET_PDEATHSIG)`.
//! - FreeBSD (11.2 or later): `procctl(P_PID, 0, PROC_PDEATHSIG_CTL)`.
//!
//! Either way the setting is cleared by `fork`, so it is made in the
//! process that serves (after `--background` forked).

/// Ask for `SIGTERM` when the parent exits.
#[cfg(target_os = "linux")]
pub(crate) fn exit_with_parent() -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("--exit-with-parent: prctl: {}", e.desc()))
}

/// Ask for `SIGTERM` when the parent exits.
#[cfg(target_os = "freebsd")]
pub(crate) fn exit_with_parent() -> Result<(), String> {
    let mut sig: libc::c_int = libc::SIGTERM;
    // SAFETY: PROC_PDEATHSIG_CTL reads one int through the pointer, which
    // points to a live c_int; id 0 with P_PID is this process.
    let r = unsafe {
        libc::procctl(
            libc::P_PID,
            0,
            libc::PROC_PDEATHSIG_CTL,
            (&mut sig as *mut libc::c_int).cast(),
        )
    };
    nix::errno::Errno::result(r)
        .map(drop)
        .map_err(|e| format!("--exit-with-parent: procctl: {}", e.desc()))
}
