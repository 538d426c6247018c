//! Unit tests of the script protocol.

use super::*;
use std::ffi::OsStr;
use std::path::Path;

use nbdkit_core::backend::Flags;
use nbdkit_core::errno::Errno;
use std::os::unix::ffi::OsStrExt;

#[test]
fn error_names_errno_and_message() {
    assert_eq!(
        parse_error(b"ENOSPC no room\n"),
        Some((Errno::ENOSPC, "no room".into()))
    );
    assert_eq!(
        parse_error(b"eio lower\n"),
        Some((Errno::EIO, "lower".into()))
    );
    assert_eq!(
        parse_error(b"EPERM\rx\nmore"),
        Some((Errno::EPERM, "x".into()))
    );
    assert_eq!(parse_error(b"ENOMEM"), Some((Errno::ENOMEM, "".into())));
    assert_eq!(
        parse_error(b"EOPNOTSUPP x"),
        Some((Errno::ENOTSUP, "x".into()))
    );
}

#[test]
fn error_without_known_name_is_eio_with_whole_line() {
    assert_eq!(
        parse_error(b"EBADF whatever\nline2"),
        Some((Errno::EIO, "EBADF whatever".into()))
    );
    assert_eq!(
        parse_error(b"EROFSfoo bar"),
        Some((Errno::EIO, "EROFSfoo bar".into()))
    );
    assert_eq!(
        parse_error(b"ENOTSUP: x"),
        Some((Errno::EIO, "ENOTSUP: x".into()))
    );
    assert_eq!(parse_error(b"\nENOMEM"), Some((Errno::EIO, "".into())));
    assert_eq!(parse_error(b""), None);
}

#[test]
fn export_list_modes() {
    let n = |v: &[(&str, Option<&str>)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.map(String::from)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        parse_exports(b"NAMES\na\nb\n"),
        n(&[("a", None), ("b", None)])
    );
    assert_eq!(parse_exports(b"a\nb"), n(&[("a", None)]));
    assert_eq!(
        parse_exports(b"names\na\n"),
        n(&[("names", None), ("a", None)])
    );
    assert_eq!(
        parse_exports(b"INTERLEAVED\na\nad\nb\n"),
        n(&[("a", Some("ad")), ("b", None)])
    );
    assert_eq!(
        parse_exports(b"NAMES+DESCRIPTIONS\na\nb\nc\n"),
        n(&[("a", Some("c")), ("b", None)])
    );
    assert_eq!(
        parse_exports(b"NAMES+DESCRIPTIONS\na\nb\nc\nad\nbd\n"),
        n(&[("a", Some("ad")), ("b", Some("bd")), ("c", None)])
    );
    assert_eq!(parse_exports(b"foo"), n(&[]));
}

#[test]
fn default_export_is_first_name() {
    assert_eq!(parse_default_export(b"foo"), "foo");
    assert_eq!(parse_default_export(b"x\ny"), "x");
    assert_eq!(parse_default_export(b"INTERLEAVED\nz"), "z");
    assert_eq!(parse_default_export(b"NAMES\n"), "");
    assert_eq!(parse_default_export(b"\n"), "");
}

#[test]
fn extents_lines() {
    let p = Path::new("s");
    assert_eq!(
        parse_extents(p, b"0 4096 hole,zero\n4096 4K zero\n8192 1M 7\n").unwrap(),
        vec![(0, 4096, 3), (4096, 4096, 2), (8192, 1 << 20, 3)]
    );
    assert_eq!(
        parse_extents(p, b"  0 4096 \t hole  zero").unwrap(),
        vec![(0, 4096, 1)]
    );
    assert_eq!(
        parse_extents(p, b"0 4096 HOLE,junk\n").unwrap(),
        vec![(0, 4096, 0)]
    );
    assert!(parse_extents(p, b"\n0 4096\n").is_err());
    assert!(parse_extents(p, b"0\n").is_err());
    assert!(parse_extents(p, b"").unwrap().is_empty());
}

#[test]
fn flags_words() {
    assert_eq!(flags_arg(Flags::NONE), "");
    assert_eq!(
        flags_arg(Flags::FUA | Flags::MAY_TRIM | Flags::FAST_ZERO),
        "fua,may_trim,fast"
    );
    assert_eq!(flags_arg(Flags::REQ_ONE), "req_one");
}

#[test]
fn runs_script_with_input_and_exit_codes() {
    let dir = new_tmpdir().unwrap();
    let script = dir.path().join("s");
    write_executable(
        &script,
        b"#!/bin/sh\ncase \"$1\" in\n cat) cat ;;\n missing) exit 2 ;;\n false) exit 3 ;;\n tmp) printf %s \"$tmpdir\" ;;\n *) echo 'ENOSPC full' >&2; exit 1 ;;\nesac\n",
    )
    .unwrap();
    let input = vec![7u8; 300_000];
    let r = run(
        &script,
        false,
        &[OsStr::new("cat")],
        dir.path(),
        &input,
        None,
    );
    assert_eq!(r.code, Code::Ok);
    assert_eq!(r.out, input);
    let mut buf = [0u8; 10];
    let r = run(
        &script,
        false,
        &[OsStr::new("cat")],
        dir.path(),
        &input,
        Some(&mut buf),
    );
    assert_eq!(r.out_len, 300_000);
    assert_eq!(buf, [7u8; 10]);
    let r = run(
        &script,
        false,
        &[OsStr::new("missing")],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(r.code, Code::Missing);
    let r = run(
        &script,
        false,
        &[OsStr::new("false")],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(r.code, Code::False);
    let r = run(&script, false, &[OsStr::new("tmp")], dir.path(), &[], None);
    assert_eq!(r.out, dir.path().as_os_str().as_bytes());
    let r = run(&script, false, &[OsStr::new("x")], dir.path(), &[], None);
    assert_eq!(r.code, Code::Error);
    let e = script_error(&script, &r);
    assert_eq!(e.errno, Errno::ENOSPC);
    assert_eq!(e.message.unwrap(), format!("{}: full", script.display()));
}

#[test]
fn script_without_shebang_runs_under_sh() {
    let dir = new_tmpdir().unwrap();
    let script = dir.path().join("s");
    write_executable(&script, b"echo \"$1\"\n").unwrap();
    let r = run(&script, false, &[OsStr::new("hi")], dir.path(), &[], None);
    assert_eq!(r.code, Code::Ok);
    assert_eq!(r.out, b"hi\n");
}

#[test]
fn unstartable_script_is_an_error_naming_it() {
    let dir = new_tmpdir().unwrap();
    let script = dir.path().join("nonexistent");
    let r = run(&script, false, &[], dir.path(), &[], None);
    assert_eq!(r.code, Code::Error);
    let e = script_error(&script, &r);
    assert!(e.message.unwrap().ends_with("No such file or directory"));
}

#[test]
fn tmpdir_is_removed() {
    let dir = new_tmpdir().unwrap();
    let p = dir.path().to_path_buf();
    std::fs::write(p.join("f"), b"x").unwrap();
    drop(dir);
    assert!(!p.exists());
}
