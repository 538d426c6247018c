//! `sh`: a plugin written as a script (or any executable).
//!
//! Parameters:
//!
//! - `[script=]PATH`: the executable, called as `PATH METHOD ARGS...` for
//!   every plugin method (see the module above). It must come first. `-`
//!   reads the script from stdin into `$tmpdir/inline-script.sh`; a script
//!   without `#!` runs under /bin/sh. When it is set the script's `load`
//!   method runs, then `magic_config_key`, whose output names the key for
//!   later bare parameters.
//! - any other `KEY=VALUE`: passed to the script's `config` method.
//!
//! The thread model is the script's `thread_model` answer, by default
//! `serialize_all_requests`.

use std::path::PathBuf;
use std::sync::Arc;

use nbdkit_core::backend::{Error, Exports, Handle, OpenArgs, Plugin, Result, ThreadModel};

use super::{new_tmpdir, save_inline_script, unexpected_false, Code, Kind, Scripts};
use crate::plugins::realpath::realpath;

/// The sh plugin.
#[derive(Debug, Default)]
pub struct Sh {
    scripts: Option<Arc<Scripts>>,
    /// The key the script asked bare parameters to be given under.
    magic: Option<String>,
}

impl Sh {
    fn scripts(&self) -> Result<&Arc<Scripts>> {
        self.scripts
            .as_ref()
            .ok_or_else(|| Error::config("missing script parameter"))
    }

    /// `script=`: resolve (or read) the script, then run its `load` and
    /// `magic_config_key` methods.
    fn set_script(&mut self, value: &str) -> Result<()> {
        let tmpdir = new_tmpdir()?;
        let path = if value == "-" {
            save_inline_script(tmpdir.path())?
        } else {
            realpath(value)?
        };
        let scripts = Arc::new(Scripts::new(tmpdir, Kind::Sh(path)));
        self.scripts = Some(scripts.clone());
        scripts.call_void("load", &[])?;
        self.magic = None;
        if let Some((_, key)) = scripts_text(&scripts, "magic_config_key")? {
            if !key.is_empty() {
                self.magic = Some(key);
            }
        }
        Ok(())
    }
}

/// A method that prints text: `None` when missing.
fn scripts_text(scripts: &Scripts, method: &str) -> Result<Option<(PathBuf, String)>> {
    let (path, r) = scripts.call(method, &[]);
    match r.code {
        Code::Ok => Ok(Some((path, r.text()))),
        Code::Missing => Ok(None),
        Code::Error => Err(super::script_error(&path, &r)),
        Code::False => Err(unexpected_false(&path, method)),
    }
}

impl Plugin for Sh {
    fn name(&self) -> &'static str {
        "sh"
    }
    fn config_help(&self) -> &'static str {
        "script=<FILENAME>     (required) The shell script to run.\n\
         [other arguments may be used by the plugin that you load]"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("script")
    }
    fn callbacks(&self) -> nbdkit_core::backend::Callbacks {
        super::CALLBACKS
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        match &self.scripts {
            Some(s) => {
                s.dump_plugin();
                // nbdkit unloads the plugin after --dump-plugin.
                s.unload_on_drop();
            }
            None => println!("max_known_status={}", super::MAX_KNOWN_STATUS),
        }
        Vec::new()
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }
    fn thread_model(&self) -> ThreadModel {
        match &self.scripts {
            Some(s) => s.chosen_thread_model(),
            None => ThreadModel::Parallel,
        }
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let Some(scripts) = self.scripts.clone() else {
            if key == "script" {
                return self.set_script(value);
            }
            return Err(Error::config(
                "the first parameter must be script=/path/to/script",
            ));
        };
        let script = scripts.path("config");
        let key = if key == "script" {
            match &self.magic {
                Some(m) => m.as_str(),
                None => {
                    return Err(Error::config(format!(
                        "{}: expecting key=value on the command line but got: {value}",
                        script.display()
                    )))
                }
            }
        } else {
            key
        };
        let (path, r) = scripts.call("config", &[key.as_ref(), value.as_ref()]);
        match r.code {
            Code::Ok => Ok(()),
            Code::Missing => Err(Error::config(format!(
                "{}: this plugin does not need command line configuration",
                path.display()
            ))),
            Code::Error => Err(super::script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "config")),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let scripts = self.scripts()?;
        scripts.call_void("config_complete", &[])?;
        scripts.thread_model()?;
        Ok(())
    }

    super::forward_to_scripts!(scripts);
}

impl Drop for Sh {
    fn drop(&mut self) {
        if let Some(s) = &self.scripts {
            s.dropped();
        }
    }
}
