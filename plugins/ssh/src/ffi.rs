//! The part of libssh's C API (`libssh/libssh.h`, `libssh/sftp.h`,
//! `libssh/callbacks.h`, libssh 0.9 and later) that this plugin uses,
//! declared by hand: the system library is linked (Debian's `libssh-dev`),
//! no bindings are generated at build time.

#![allow(non_camel_case_types, dead_code)]

use core::ffi::{c_char, c_int, c_long, c_uint, c_void};

#[repr(C)]
pub(crate) struct ssh_session_struct {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct sftp_session_struct {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct sftp_file_struct {
    _private: [u8; 0],
}

pub(crate) type ssh_session = *mut ssh_session_struct;
pub(crate) type sftp_session = *mut sftp_session_struct;
pub(crate) type sftp_file = *mut sftp_file_struct;

/// `struct sftp_attributes_struct`.
#[repr(C)]
pub(crate) struct sftp_attributes_struct {
    pub(crate) name: *mut c_char,
    pub(crate) longname: *mut c_char,
    pub(crate) flags: u32,
    pub(crate) type_: u8,
    pub(crate) size: u64,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) owner: *mut c_char,
    pub(crate) group: *mut c_char,
    pub(crate) permissions: u32,
    pub atime64: u64,
    pub(crate) atime: u32,
    pub(crate) atime_nseconds: u32,
    pub(crate) createtime: u64,
    pub(crate) createtime_nseconds: u32,
    pub mtime64: u64,
    pub(crate) mtime: u32,
    pub(crate) mtime_nseconds: u32,
    pub(crate) acl: *mut c_void,
    pub(crate) extended_count: u32,
    pub(crate) extended_type: *mut c_void,
    pub(crate) extended_data: *mut c_void,
}
pub(crate) type sftp_attributes = *mut sftp_attributes_struct;

pub(crate) const SSH_OK: c_int = 0;
pub(crate) const SSH_AGAIN: c_int = -2;

// enum ssh_options_e
pub(crate) const SSH_OPTIONS_HOST: c_int = 0;
pub(crate) const SSH_OPTIONS_PORT_STR: c_int = 2;
pub(crate) const SSH_OPTIONS_USER: c_int = 4;
pub(crate) const SSH_OPTIONS_ADD_IDENTITY: c_int = 7;
pub(crate) const SSH_OPTIONS_KNOWNHOSTS: c_int = 8;
pub(crate) const SSH_OPTIONS_TIMEOUT: c_int = 9;
pub(crate) const SSH_OPTIONS_LOG_VERBOSITY: c_int = 13;
pub(crate) const SSH_OPTIONS_COMPRESSION: c_int = 22;
pub(crate) const SSH_OPTIONS_NODELAY: c_int = 36;

// enum ssh_auth_e
pub(crate) const SSH_AUTH_SUCCESS: c_int = 0;
pub(crate) const SSH_AUTH_ERROR: c_int = -1;

pub(crate) const SSH_AUTH_METHOD_NONE: c_uint = 0x0001;
pub(crate) const SSH_AUTH_METHOD_PASSWORD: c_uint = 0x0002;
pub(crate) const SSH_AUTH_METHOD_PUBLICKEY: c_uint = 0x0004;
pub(crate) const SSH_AUTH_METHOD_HOSTBASED: c_uint = 0x0008;
pub(crate) const SSH_AUTH_METHOD_INTERACTIVE: c_uint = 0x0010;
pub(crate) const SSH_AUTH_METHOD_GSSAPI_MIC: c_uint = 0x0020;

// enum ssh_known_hosts_e
pub(crate) const SSH_KNOWN_HOSTS_NOT_FOUND: c_int = -1;
pub(crate) const SSH_KNOWN_HOSTS_UNKNOWN: c_int = 0;
pub(crate) const SSH_KNOWN_HOSTS_OK: c_int = 1;
pub(crate) const SSH_KNOWN_HOSTS_CHANGED: c_int = 2;
pub(crate) const SSH_KNOWN_HOSTS_OTHER: c_int = 3;

pub(crate) const SSH_FILEXFER_ATTR_SIZE: u32 = 0x0000_0001;
pub(crate) const SSH_FILEXFER_ATTR_PERMISSIONS: u32 = 0x0000_0004;

pub(crate) type ssh_logging_callback = unsafe extern "C" fn(
    priority: c_int,
    function: *const c_char,
    buffer: *const c_char,
    userdata: *mut c_void,
);

#[link(name = "ssh")]
extern "C" {
    pub(crate) fn ssh_new() -> ssh_session;
    pub(crate) fn ssh_free(session: ssh_session);
    pub(crate) fn ssh_options_set(session: ssh_session, typ: c_int, value: *const c_void) -> c_int;
    pub(crate) fn ssh_options_parse_config(session: ssh_session, filename: *const c_char) -> c_int;
    pub(crate) fn ssh_connect(session: ssh_session) -> c_int;
    pub(crate) fn ssh_disconnect(session: ssh_session);
    pub(crate) fn ssh_get_error(error: *mut c_void) -> *const c_char;
    pub(crate) fn ssh_get_fd(session: ssh_session) -> c_int;
    pub(crate) fn ssh_session_is_known_server(session: ssh_session) -> c_int;
    pub(crate) fn ssh_userauth_none(session: ssh_session, username: *const c_char) -> c_int;
    pub(crate) fn ssh_userauth_list(session: ssh_session, username: *const c_char) -> c_int;
    pub(crate) fn ssh_userauth_publickey_auto(
        session: ssh_session,
        username: *const c_char,
        passphrase: *const c_char,
    ) -> c_int;
    pub(crate) fn ssh_userauth_password(
        session: ssh_session,
        username: *const c_char,
        password: *const c_char,
    ) -> c_int;
    pub(crate) fn ssh_set_log_callback(cb: Option<ssh_logging_callback>) -> c_int;

    pub(crate) fn sftp_new(session: ssh_session) -> sftp_session;
    pub(crate) fn sftp_init(sftp: sftp_session) -> c_int;
    pub(crate) fn sftp_free(sftp: sftp_session);
    pub(crate) fn sftp_extension_supported(
        sftp: sftp_session,
        name: *const c_char,
        data: *const c_char,
    ) -> c_int;
    pub(crate) fn sftp_open(
        sftp: sftp_session,
        file: *const c_char,
        accesstype: c_int,
        mode: libc::mode_t,
    ) -> sftp_file;
    pub(crate) fn sftp_close(file: sftp_file) -> c_int;
    pub(crate) fn sftp_fstat(file: sftp_file) -> sftp_attributes;
    pub(crate) fn sftp_attributes_free(attrs: sftp_attributes);
    pub(crate) fn sftp_setstat(
        sftp: sftp_session,
        file: *const c_char,
        attr: sftp_attributes,
    ) -> c_int;
    pub(crate) fn sftp_unlink(sftp: sftp_session, file: *const c_char) -> c_int;
    pub(crate) fn sftp_seek64(file: sftp_file, new_offset: u64) -> c_int;
    pub(crate) fn sftp_read(file: sftp_file, buf: *mut c_void, count: usize) -> isize;
    pub(crate) fn sftp_async_read_begin(file: sftp_file, len: u32) -> c_int;
    pub(crate) fn sftp_async_read(file: sftp_file, data: *mut c_void, len: u32, id: u32) -> c_int;
    pub(crate) fn sftp_write(file: sftp_file, buf: *const c_void, count: usize) -> isize;
    pub(crate) fn sftp_fsync(file: sftp_file) -> c_int;
}

/// `SSH_OPTIONS_TIMEOUT` takes a `long`.
pub(crate) type TimeoutArg = c_long;
