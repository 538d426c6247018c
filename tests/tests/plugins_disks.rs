//! Disk builders: the split plugin.

use nbdkit_tests::{path_str, Server, TempDir};
use std::fs;

#[test]
fn split_concatenates_files_and_writes_to_the_right_one() {
    let dir = TempDir::new();
    let a = dir.join("a");
    let b = dir.join("b");
    let c = dir.join("c");
    fs::write(&a, vec![b'a'; 4096]).unwrap();
    fs::write(&b, vec![b'b'; 8192]).unwrap();
    fs::write(&c, vec![b'c'; 512]).unwrap();
    let srv = Server::start(["split", path_str(&a), path_str(&b), path_str(&c)]);
    let mut cl = srv.connect_raw();
    let e = cl.handshake_go("").expect("handshake");
    assert_eq!(e.size, 4096 + 8192 + 512);
    let got = cl.pread(4090, 12, 1).unwrap().expect("read");
    assert_eq!(got, b"aaaaaabbbbbb");
    let got = cl.pread(12280, 16, 2).unwrap().expect("read");
    assert_eq!(got, b"bbbbbbbbcccccccc");
    assert_eq!(cl.pwrite(4094, b"XYZW", 3).unwrap(), 0);
    assert_eq!(&fs::read(&a).unwrap()[4094..], b"XY");
    assert_eq!(&fs::read(&b).unwrap()[..2], b"ZW");
    let got = cl.pread(4092, 8, 4).unwrap().expect("read");
    assert_eq!(got, b"aaXYZWbb");
}

#[test]
fn split_reading_past_the_end_fails() {
    let dir = TempDir::new();
    let a = dir.join("a");
    fs::write(&a, vec![0u8; 1024]).unwrap();
    let srv = Server::start(["split", &format!("file={}", path_str(&a))]);
    let mut cl = srv.connect_raw();
    let e = cl.handshake_go("").expect("handshake");
    assert_eq!(e.size, 1024);
    assert!(cl.pread(1024, 512, 1).unwrap().is_err());
}
