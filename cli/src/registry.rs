//! The plugins and filters of this nbdkit, by name: those built in (the
//! core's, which need only memory, then those that need the operating
//! system), else compiled ones loaded through nbdkit's C ABI from a file
//! named on the command line or found in the plugin/filter directory.

use std::path::{Path, PathBuf};

use nbdkit_core::backend::{Filter, Plugin};
use nbdkit_runtime_std::cabi::{self, LoadError};

/// The short name of a plugin or filter given as a name or as a path such
/// as `/usr/lib/nbdkit/plugins/nbdkit-file-plugin.so`.
pub(crate) fn short_name(arg: &str, kind: &str) -> String {
    let base = arg.rsplit('/').next().unwrap_or(arg);
    let prefix = "nbdkit-";
    let suffix = format!("-{kind}.so");
    match base
        .strip_prefix(prefix)
        .and_then(|b| b.strip_suffix(&suffix))
    {
        Some(n) if cabi::is_path(arg) => n.to_string(),
        _ => arg.to_string(),
    }
}

fn builtin_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    nbdkit_core::plugins::by_name(name).or_else(|| nbdkit_runtime_std::plugins::by_name(name))
}

fn builtin_filter(name: &str) -> Option<Box<dyn Filter>> {
    nbdkit_core::filters::by_name(name).or_else(|| nbdkit_runtime_std::filters::by_name(name))
}

/// Load `arg`: the file it names if that exists, else the built-in of
/// its short name, else `nbdkit-NAME-KIND.so` from the directories (a
/// path to a missing file of a built-in's name, such as
/// `/usr/lib/nbdkit/plugins/nbdkit-file-plugin.so` from another system,
/// also gets the built-in).
fn load<T: ?Sized>(
    arg: &str,
    kind: &str,
    builtin: impl FnOnce(&str) -> Option<Box<T>>,
    load: impl FnOnce(&str, &Path) -> Result<Box<T>, LoadError>,
) -> Result<Box<T>, LoadError> {
    let is_path = cabi::is_path(arg);
    if !(is_path && Path::new(arg).exists()) {
        if let Some(b) = builtin(&short_name(arg, kind)) {
            return Ok(b);
        }
    }
    let path = if is_path {
        PathBuf::from(arg)
    } else {
        cabi::find(arg, kind)
    };
    load(arg, &path)
}

/// A fresh, unconfigured plugin.
pub(crate) fn plugin(arg: &str) -> Result<Box<dyn Plugin>, LoadError> {
    // The exported nbdkit_* functions are only reachable from loaded
    // objects: keep them linked in.
    std::hint::black_box(cabi::keep_exports());
    load(arg, "plugin", builtin_plugin, cabi::load_plugin)
}

/// A fresh, unconfigured filter.
pub(crate) fn filter(arg: &str) -> Result<Box<dyn Filter>, LoadError> {
    load(arg, "filter", builtin_filter, cabi::load_filter)
}

/// A plugin written in a scripting language and installed, executable,
/// as `nbdkit-NAME-plugin` beside this executable or in the plugin
/// directory, with a shebang `#!/path/to/nbdkit LANG`: `(LANG, its path)`.
/// `None` when NAME is a path, a built-in or a shared object.
pub(crate) fn script_plugin(name: &str) -> Option<(String, String)> {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    if cabi::is_path(name) || builtin_plugin(name).is_some() || cabi::find(name, "plugin").exists()
    {
        return None;
    }
    let file = format!("nbdkit-{name}-plugin");
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&file)));
    let system = Path::new(cabi::SYSTEM_PLUGINDIR).join(&file);
    let path = beside.into_iter().chain([system]).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })?;
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::open(&path).ok()?)
        .read_line(&mut line)
        .ok()?;
    let mut words = line.strip_prefix("#!")?.split_whitespace();
    let interpreter = words.next()?;
    let lang = words.next()?;
    (Path::new(interpreter).file_name()? == "nbdkit")
        .then(|| (lang.to_string(), path.display().to_string()))
}
