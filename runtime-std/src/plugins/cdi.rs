//! `cdi` (Containerized Data Importer): serve one layer of a container
//! image, as nbdkit-cdi-plugin(1) describes.
//!
//! Parameters: `[name=]NAME[:TAG|@DIGEST]` (required; any name or
//! transport `podman pull` accepts) and `layer=N` (default 0; negative
//! counts from the last layer, as jq's indexes do).
//!
//! When the server gets ready, a shell script pulls the image with
//! `podman pull`, saves it with `podman save --format oci-dir
//! --uncompressed` (by the image id `podman pull` printed, so images
//! pulled from `oci:`, `dir:` or archive transports work too, not only
//! registry names) and picks the layer's blob with `jq`. The layer is
//! moved to `$TMPDIR/imageXXXXXX` (default `/var/tmp`), opened and
//! unlinked; it is served read-only.
//!
//! Where podman is not installed (or cannot run, e.g. in a container
//! without user namespaces), the plugin uses `skopeo copy
//! --dest-decompress NAME dir:DIR` instead, with `docker://` put in front
//! of a name that has no transport, which is how podman resolves such
//! names on a registry.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nbdkit_core::backend::{Callbacks, Error, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;

use super::example2::io_error;

/// The cdi plugin.
#[derive(Default)]
pub struct Cdi {
    name: Option<String>,
    layer: i32,
    /// The layer, unlinked, once get_ready made it.
    file: std::sync::OnceLock<std::sync::Arc<File>>,
}

/// Pulls `$name` with podman and leaves the save in `$d`.
const PODMAN_PULL: &str = r#"id="$(podman pull -q "$name" | tail -n 1)"
test -n "$id"
podman save --format oci-dir --uncompressed -o "$d" "$id" >/dev/null
"#;

/// Copies `$src` with skopeo into `$d` (a `dir:` layout).
const SKOPEO_COPY: &str = r#"skopeo copy -q --dest-decompress "$src" "dir:$d" >/dev/null
"#;

/// Finds the layer's blob in `$d` (a `dir:` layout with manifest.json, or
/// an OCI layout with index.json) and moves it to `$tmpfile`.
const PICK_LAYER: &str = r#"if test -f "$d/manifest.json"; then
    m="$d/manifest.json"
    blobs="$d"
else
    blobs="$d/blobs/sha256"
    m="$blobs/$(jq -r '.manifests[0].digest' < "$d/index.json" | cut -d: -f2)"
fi
f="$blobs/$(jq -r ".layers[$layer].digest" < "$m" | cut -d: -f2)"
if ! test -f "$f"; then
    echo "cdi: could not extract layer" >&2
    rm -rf "$d"
    exit 1
fi
mv "$f" "$tmpfile"
rm -rf "$d"
"#;

/// Transports containers/image understands (`TRANSPORT:REST`).
const TRANSPORTS: &[&str] = &[
    "containers-storage",
    "dir",
    "docker",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
];

/// The skopeo source for `name`: as given when it names a transport,
/// else a registry image (`docker://NAME`).
fn skopeo_source(name: &str) -> String {
    match name.split_once(':') {
        Some((t, _)) if TRANSPORTS.contains(&t) => name.to_string(),
        _ => format!("docker://{name}"),
    }
}

/// `'...'` quoting for a shell variable assignment.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn in_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(tool)).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    })
}

impl Cdi {
    /// Pull the image and leave its layer in an unlinked temporary file.
    fn make_layer(&self, name: &str) -> Result<File> {
        if !in_path("jq") {
            return Err(Error::config(
                "cdi: jq is not installed (Debian package jq)",
            ));
        }
        let tool = if in_path("podman") {
            "podman"
        } else if in_path("skopeo") {
            "skopeo"
        } else {
            return Err(Error::config(
                "cdi: neither podman nor skopeo is installed (Debian package podman or skopeo)",
            ));
        };
        let tmpdir = crate::os::tmpfile::dir("/var/tmp");
        let (tmp, template) = mkstemp(&tmpdir)?;
        drop(tmp);
        let mut script = format!(
            "name={}\nsrc={}\nlayer={}\ntmpfile={}\nd=\"$tmpfile.d\"\nset -e\nexec </dev/null\n",
            shell_quote(name),
            shell_quote(&skopeo_source(name)),
            self.layer,
            shell_quote(&template.to_string_lossy()),
        );
        script.push_str(if tool == "podman" {
            PODMAN_PULL
        } else {
            SKOPEO_COPY
        });
        script.push_str(PICK_LAYER);
        nbdkit_core::debug::debug(format_args!("{script}"));
        let result = run_script(&script);
        let cleanup = |e: Error| {
            let _ = std::fs::remove_file(&template);
            let mut d = template.clone().into_os_string();
            d.push(".d");
            let _ = std::fs::remove_dir_all(PathBuf::from(d));
            e
        };
        if let Err(msg) = result {
            return Err(cleanup(Error::config(format!("{tool}: {msg}"))));
        }
        let file = File::open(&template)
            .map_err(|e| cleanup(io_error(&format!("open: {}", template.display()), &e)))?;
        let _ = std::fs::remove_file(&template);
        Ok(file)
    }
}

/// `mkstemp DIR/imageXXXXXX`.
fn mkstemp(dir: &Path) -> Result<(File, PathBuf)> {
    let template = dir.join("imageXXXXXX");
    crate::os::tmpfile::mkstemp(&template).map_err(|e| {
        Error::msg(
            Errno(e as i32),
            format!("mkstemp: {}: {}", template.display(), e.desc()),
        )
    })
}

/// Run the script with `sh`; a failure is its exit status and the last
/// line it printed on stderr.
fn run_script(script: &str) -> core::result::Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let mut err = Vec::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut err);
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&err);
    for line in text.lines() {
        nbdkit_core::debug::debug(format_args!("cdi: {line}"));
    }
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    let why = match status.code() {
        Some(c) => format!("command failed with exit code {c}"),
        None => format!("command killed by {status}"),
    };
    Err(match last {
        Some(l) => format!("{why}: {}", l.trim()),
        None => why,
    })
}

impl Plugin for Cdi {
    fn name(&self) -> &'static str {
        "cdi"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit containerized data importer plugin")
    }
    fn config_help(&self) -> &'static str {
        "name=NAME[:TAG|@DIGEST] (required) Name or URI of container image.\n\
         layer=<N>                          Layer of image to export."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("name")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LONGNAME
            | Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "name" => self.name = Some(value.to_string()),
            "layer" => {
                let v = value.trim_start();
                self.layer = v.parse().map_err(|_| {
                    Error::config(format!("layer: could not parse number: \"{value}\""))
                })?;
            }
            _ => return Err(Error::config(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.name.is_none() {
            return Err(Error::config(
                "you must supply the 'name' parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }
    fn get_ready(&self) -> Result<()> {
        let name = self.name.as_deref().expect("checked in config_complete");
        let f = self.make_layer(name)?;
        let _ = self.file.set(std::sync::Arc::new(f));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let file = self.file.get().expect("made in get_ready").clone();
        Ok(Box::new(Layer { file }))
    }
}

struct Layer {
    file: std::sync::Arc<File>,
}

impl Handle for Layer {
    fn get_size(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io_error("fstat", &e))
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        // The server reads to populate the page cache.
        Ok(Support::Emulate)
    }
    fn pread(
        &self,
        buf: &mut [u8],
        offset: u64,
        _flags: nbdkit_core::backend::Flags,
    ) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(Error::msg(Errno::EIO, "pread: unexpected end of file"));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("pread", &e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn skopeo_sources() {
        assert_eq!(skopeo_source("oci:/tmp/x:latest"), "oci:/tmp/x:latest");
        assert_eq!(skopeo_source("docker://a/b"), "docker://a/b");
        assert_eq!(
            skopeo_source("kubevirt/fedora:35"),
            "docker://kubevirt/fedora:35"
        );
        assert_eq!(skopeo_source("quay.io:443/a/b"), "docker://quay.io:443/a/b");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
