//! qemu-img against the server: copy a 64 MiB random image in and out,
//! compare, and inspect the export with `qemu-img info`.

use nbdkit_tests::{
    assert_bytes_eq, path_str, run_tool, skip_unless, write_random_file, Json, Server, TempDir,
};
use std::fs;

const SIZE: usize = 64 << 20;

#[test]
fn qemu_img_convert_in_and_out_64m() {
    skip_unless!("qemu-img");
    let dir = TempDir::new();
    let src = dir.join("src.img");
    let out = dir.join("out.img");
    let data = write_random_file(&src, SIZE, 0x5eed_0001);

    let srv = Server::start(["memory", "64M"]);
    let uri = srv.uri();
    run_tool(
        "qemu-img",
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path_str(&src),
            &uri,
        ],
    )
    .assert_success();
    run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", &uri, path_str(&out)],
    )
    .assert_success();
    run_tool(
        "qemu-img",
        [
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            path_str(&src),
            path_str(&out),
        ],
    )
    .assert_success();
    let got = fs::read(&out).expect("read out.img");
    assert_bytes_eq("image copied through nbdkit", &got, &data);
}

#[test]
fn qemu_img_info_reports_size() {
    skip_unless!("qemu-img");
    let srv = Server::start(["memory", "64M"]);
    let out = run_tool("qemu-img", ["info", "--output=json", &srv.uri()]).assert_success();
    let info = Json::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(
        info.get("virtual-size").and_then(Json::as_u64),
        Some(SIZE as u64),
        "{}",
        out.stdout
    );
    assert_eq!(
        info.get("format").and_then(Json::as_str),
        Some("raw"),
        "{}",
        out.stdout
    );
    // The human-readable form too.
    let out = run_tool("qemu-img", ["info", &srv.uri()]).assert_success();
    assert!(
        out.stdout.contains("64 MiB") && out.stdout.contains(&SIZE.to_string()),
        "qemu-img info: {}",
        out.stdout
    );
}
