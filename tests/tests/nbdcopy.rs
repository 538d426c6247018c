//! nbdcopy in both directions between a local file and the server.

use nbdkit_tests::{
    assert_bytes_eq, path_str, run_tool, skip_unless, write_random_file, Server, TempDir,
};
use std::fs;

#[test]
fn nbdcopy_file_to_nbd_and_back() {
    skip_unless!("nbdcopy");
    const SIZE: usize = 32 << 20;
    let dir = TempDir::new();
    let src = dir.join("src.img");
    let out = dir.join("out.img");
    let mut data = write_random_file(&src, SIZE, 0xc0b1);
    // A zero region in the middle, so sparse/zero paths are exercised.
    data[8 << 20..12 << 20].fill(0);
    fs::write(&src, &data).expect("write src.img");

    let srv = Server::start(["memory", "32M"]);
    run_tool("nbdcopy", [path_str(&src), &srv.uri()]).assert_success();
    run_tool("nbdcopy", [&srv.uri(), path_str(&out)]).assert_success();
    let got = fs::read(&out).expect("read out.img");
    assert_bytes_eq("nbdcopy round trip", &got, &data);
}

#[test]
fn nbdcopy_between_two_servers() {
    skip_unless!("nbdcopy");
    const SIZE: usize = 8 << 20;
    let dir = TempDir::new();
    let src = dir.join("src.img");
    let out = dir.join("out.img");
    let data = write_random_file(&src, SIZE, 0xc0b2);
    let a = Server::start(["memory", "8M"]);
    let b = Server::start(["memory", "8M"]);
    run_tool("nbdcopy", [path_str(&src), &a.uri()]).assert_success();
    run_tool("nbdcopy", ["--connections=4", &a.uri(), &b.uri()]).assert_success();
    run_tool("nbdcopy", [&b.uri(), path_str(&out)]).assert_success();
    assert_bytes_eq("nbd -> nbd copy", &fs::read(&out).expect("read"), &data);
}
