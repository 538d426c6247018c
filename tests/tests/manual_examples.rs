//! Examples from nbdkit(1), run unchanged.

use nbdkit_tests::{run_python, skip_unless, Server};

#[test]
fn error_and_delay_filters_example() {
    skip_unless!("python3-nbd");
    let srv = Server::start([
        "--filter=error",
        "--filter=delay",
        "memory",
        "100M",
        "error-rate=10%",
        "rdelay=1",
        "wdelay=1",
    ]);
    let out = run_python("error_delay_example.py", [srv.uri()]);
    assert!(
        out.success() && out.stdout.lines().any(|l| l == "ok"),
        "{}\n--- server stderr ---\n{}",
        out.describe(),
        srv.stderr()
    );
}

#[test]
fn data_plugin_example() {
    skip_unless!("nbdcopy");
    let srv = Server::start(["data", " ( 0x55 0xAA )*2048 "]);
    let dir = nbdkit_tests::TempDir::new();
    let out_file = dir.join("out.img");
    let r = nbdkit_tests::run_tool(
        "nbdcopy",
        [srv.uri().as_str(), nbdkit_tests::path_str(&out_file)],
    );
    assert!(r.success(), "{}", r.describe());
    let bytes = std::fs::read(&out_file).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert!(bytes.chunks(2).all(|c| c == [0x55, 0xaa]));
}
