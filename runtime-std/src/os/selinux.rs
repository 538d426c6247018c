//! `--selinux-label`: the SELinux label of the listening sockets.
//!
//! - Linux: what setsockcreatecon(3) does, writing the label to
//!   `/proc/thread-self/attr/sockcreate` (for the sockets this thread
//!   creates next); a clear error where SELinux is not enabled.
//! - FreeBSD has no SELinux: a clear error.

/// Label the sockets this thread creates next (`None`: the default label
/// again).
#[cfg(target_os = "linux")]
pub(crate) fn set_socket_label(label: Option<&str>) -> Result<(), String> {
    let enabled = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    if !enabled {
        return match label {
            Some(_) => Err("--selinux-label: SELinux is not enabled on this system".into()),
            None => Ok(()),
        };
    }
    let path = "/proc/thread-self/attr/sockcreate";
    let value = label.unwrap_or("");
    std::fs::write(path, value)
        .map_err(|e| format!("--selinux-label: cannot set socket label {value:?}: {e}"))
}

/// FreeBSD has no SELinux.
#[cfg(target_os = "freebsd")]
pub(crate) fn set_socket_label(label: Option<&str>) -> Result<(), String> {
    match label {
        Some(_) => Err("--selinux-label: SELinux is not available on FreeBSD".into()),
        None => Ok(()),
    }
}
