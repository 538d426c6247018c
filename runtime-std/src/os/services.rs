//! Service names (`/etc/services`) for `-p` and the nbd plugin's `port=`:
//! `getservbyname(3)`, which neither nix nor the standard library wraps.

use std::ffi::CString;

/// The TCP port of the service `name` (`nbd` is 10809), if it is known.
///
/// Called while the command line and the plugin's parameters are read,
/// before the server starts its threads (getservbyname returns static
/// storage of the C library).
pub fn tcp_service_port(name: &str) -> Option<u16> {
    let name = CString::new(name).ok()?;
    // SAFETY: both strings are NUL-terminated; the result is NULL or
    // points into the C library's static storage, read at once, before
    // another call can reuse it (see above: no other thread looks up
    // services meanwhile).
    unsafe {
        let ent = libc::getservbyname(name.as_ptr(), c"tcp".as_ptr());
        if ent.is_null() {
            None
        } else {
            Some(u16::from_be((*ent).s_port as u16))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_service_has_no_port() {
        assert_eq!(super::tcp_service_port("no-such-service-nbdkit"), None);
        assert_eq!(super::tcp_service_port("a\0b"), None);
    }
}
