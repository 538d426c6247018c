//! The cdi plugin against real podman, skopeo and jq, on an OCI image
//! built by the test (an OCI layout directory with two layers: a tar of
//! random bytes and a tar holding a disk image), pulled through the
//! `oci:` transport: nothing reaches the network.

use nbdkit_tests::{
    assert_bytes_eq, assert_one_error, find_tool, nbdkit_cmd, path_str, run, skip_unless,
    write_random_file, Output, TempDir, CMD_TIMEOUT,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `DIR/img` (an OCI layout, tag `latest`) whose layer 0 is
/// `layer0.tar` (a file of random bytes) and layer 1 `layer1.tar` (holding
/// `disk/disk.img`). Returns (image reference, layer bytes, disk bytes,
/// image id).
fn build_image(dir: &Path, seed: u64) -> (String, [Vec<u8>; 2], Vec<u8>, String) {
    let src0 = dir.join("src0");
    let src1 = dir.join("src1/disk");
    fs::create_dir_all(&src0).unwrap();
    fs::create_dir_all(&src1).unwrap();
    write_random_file(&src0.join("data.bin"), 200_000, seed);
    let disk = write_random_file(&src1.join("disk.img"), 1 << 20, seed + 1);
    let script = r#"set -e
cd "$1"
tar --sort=name --mtime=@0 --owner=0 --group=0 -C src0 -cf layer0.tar .
tar --sort=name --mtime=@0 --owner=0 --group=0 -C src1 -cf layer1.tar disk
mkdir -p img/blobs/sha256
blob() { h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" img/blobs/sha256/$h; echo $h $(stat -c %s "$1"); }
set -- $(blob layer0.tar); L0=$1 S0=$2
set -- $(blob layer1.tar); L1=$1 S1=$2
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' $L0 $L1 > config.json
set -- $(blob config.json); C=$1 CS=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' $C $CS $L0 $S0 $L1 $S1 > manifest.json
set -- $(blob manifest.json); M=$1 MS=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' $M $MS > img/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > img/oci-layout
echo $C
"#;
    let out = run(
        Command::new("/bin/sh").args(["-c", script, "sh"]).arg(dir),
        CMD_TIMEOUT,
    )
    .assert_success();
    let id = out.stdout.trim().to_string();
    let layers = [
        fs::read(dir.join("layer0.tar")).unwrap(),
        fs::read(dir.join("layer1.tar")).unwrap(),
    ];
    (
        format!("oci:{}:latest", path_str(&dir.join("img"))),
        layers,
        disk,
        id,
    )
}

/// `nbdkit -U - cdi ARGS --run 'nbdcopy "$uri" OUT'` with TMPDIR (and
/// PATH when given) set; returns the output and what was copied.
fn serve_copy(tmp: &Path, path: Option<&Path>, args: &[&str]) -> (Output, Option<Vec<u8>>) {
    let out_file = tmp.join("out.bin");
    let _ = fs::remove_file(&out_file);
    let tmpdir = tmp.join("tmpdir");
    fs::create_dir_all(&tmpdir).unwrap();
    let nbdcopy = find_tool("nbdcopy").expect("nbdcopy");
    let mut cmd = nbdkit_cmd();
    cmd.args(["-U", "-"]).args(args).args([
        "--run",
        &format!("{} \"$uri\" {}", path_str(&nbdcopy), path_str(&out_file)),
    ]);
    cmd.env("TMPDIR", &tmpdir);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = run(&mut cmd, CMD_TIMEOUT);
    let leftovers: Vec<_> = fs::read_dir(&tmpdir).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the layer's temporary files are removed: {leftovers:?}"
    );
    let data = fs::read(&out_file).ok();
    (out, data)
}

fn podman_works() -> bool {
    if !skip_unless("podman") {
        println!("SKIP: podman not installed");
        return false;
    }
    let out = run(Command::new("podman").args(["images", "-q"]), CMD_TIMEOUT);
    if !out.success() {
        println!("SKIP: podman cannot run here: {}", out.stderr.trim());
        return false;
    }
    true
}

fn tools(list: &[&str]) -> bool {
    for t in list {
        if !skip_unless(t) {
            println!("SKIP: {t} not installed");
            return false;
        }
    }
    true
}

/// A directory of symlinks to just `tools` (and what the script needs),
/// to stand for a PATH where the others are not installed.
fn bin_dir(tmp: &Path, tools: &[&str]) -> PathBuf {
    let bin = tmp.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for t in ["sh", "cut", "mv", "rm", "tail"].iter().chain(tools) {
        let target = find_tool(t).unwrap_or_else(|| panic!("{t} not found"));
        std::os::unix::fs::symlink(target, bin.join(t)).unwrap();
    }
    bin
}

#[test]
fn cdi_podman_layers() {
    if !tools(&["jq", "nbdcopy"]) || !podman_works() {
        return;
    }
    let tmp = TempDir::new();
    let (name, layers, disk, id) = build_image(tmp.path(), 41);

    let (out, data) = serve_copy(tmp.path(), None, &["cdi", &name]);
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("layer 0", &data.unwrap(), &layers[0]);

    let (out, data) = serve_copy(
        tmp.path(),
        None,
        &["cdi", &format!("name={name}"), "layer=1"],
    );
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("layer 1", &data.unwrap(), &layers[1]);

    let (out, data) = serve_copy(tmp.path(), None, &["cdi", &name, "layer=-1"]);
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("layer -1", &data.unwrap(), &layers[1]);

    // The disk inside the layer, through the tar filter (the manual's example).
    let (out, data) = serve_copy(
        tmp.path(),
        None,
        &[
            "--filter=tar",
            "cdi",
            &name,
            "layer=1",
            "tar-entry=disk/disk.img",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("disk in layer 1", &data.unwrap(), &disk);

    let (out, _) = serve_copy(tmp.path(), None, &["cdi", &name, "layer=2"]);
    assert_one_error(&out, "could not extract layer");

    // Pulling something that does not exist: podman's reason on the line.
    let missing = format!("oci:{}:latest", path_str(&tmp.join("nosuch")));
    let (out, _) = serve_copy(tmp.path(), None, &["cdi", &missing]);
    assert_one_error(&out, "podman: command failed with exit code");

    let _ = run(Command::new("podman").args(["rmi", "-f", &id]), CMD_TIMEOUT);
}

#[test]
fn cdi_skopeo_without_podman() {
    if !tools(&["jq", "nbdcopy", "skopeo"]) {
        return;
    }
    let tmp = TempDir::new();
    let (name, layers, _disk, _id) = build_image(tmp.path(), 43);
    let bin = bin_dir(tmp.path(), &["skopeo", "jq"]);
    let (out, data) = serve_copy(tmp.path(), Some(&bin), &["cdi", &name]);
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("layer 0", &data.unwrap(), &layers[0]);
    let (out, data) = serve_copy(tmp.path(), Some(&bin), &["cdi", &name, "layer=-1"]);
    assert!(out.success(), "{}", out.describe());
    assert_bytes_eq("layer -1", &data.unwrap(), &layers[1]);
    let (out, _) = serve_copy(tmp.path(), Some(&bin), &["cdi", &name, "layer=-3"]);
    assert_one_error(
        &out,
        "skopeo: command failed with exit code 1: cdi: could not extract layer",
    );
}

#[test]
fn cdi_missing_tools_and_parameters() {
    if !tools(&["jq", "nbdcopy"]) {
        return;
    }
    let tmp = TempDir::new();
    let bin = bin_dir(tmp.path(), &["jq"]);
    let (out, _) = serve_copy(tmp.path(), Some(&bin), &["cdi", "oci:/nonexistent:latest"]);
    assert_one_error(
        &out,
        "cdi: neither podman nor skopeo is installed (Debian package podman or skopeo)",
    );
    let nojq = tmp.join("nojq");
    fs::create_dir(&nojq).unwrap();
    std::os::unix::fs::symlink(find_tool("sh").unwrap(), nojq.join("sh")).unwrap();
    let (out, _) = serve_copy(tmp.path(), Some(&nojq), &["cdi", "oci:/nonexistent:latest"]);
    assert_one_error(&out, "cdi: jq is not installed (Debian package jq)");

    let out = run(nbdkit_cmd().args(["cdi", "layer=1"]), CMD_TIMEOUT);
    assert_one_error(
        &out,
        "you must supply the 'name' parameter after the plugin name on the command line",
    );
    let out = run(nbdkit_cmd().args(["cdi", "x", "layer=one"]), CMD_TIMEOUT);
    assert_one_error(&out, "layer: could not parse number");
    let out = run(nbdkit_cmd().args(["cdi", "x", "tag=1"]), CMD_TIMEOUT);
    assert_one_error(&out, "unknown parameter 'tag'");
}

#[test]
fn cdi_dump_plugin_and_help() {
    let out = run(nbdkit_cmd().args(["cdi", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    for line in [
        "name=cdi",
        "magic_config_key=name",
        "max_thread_model=parallel",
        "has_longname=1",
        "has_get_ready=1",
        "has_can_multi_conn=1",
        "has_can_cache=1",
        "has_pread=1",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line}: {}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("nbdkit-cdi-plugin.so"),
        "the built-in plugin, not Debian's: {}",
        out.stdout
    );
    let out = run(nbdkit_cmd().args(["cdi", "--help"]), CMD_TIMEOUT).assert_success();
    assert!(
        out.stdout
            .contains("name=NAME[:TAG|@DIGEST] (required) Name or URI of container image."),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("layer=<N>"), "{}", out.stdout);
}
