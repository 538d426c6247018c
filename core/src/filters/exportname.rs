//! `exportname`: change the export names and descriptions a client sees.
//!
//! Parameters: `default-export=NAME`, `exportname-list=keep|error|empty|
//! defaultonly|explicit` (default `keep`), `exportname-strict=BOOL`,
//! `exportname=NAME` (repeatable), `exportdesc=keep|none|fixed:STRING|
//! script:SCRIPT`.
//!
//! `script:SCRIPT` needs a shell: the runtime gives the filter a function
//! that runs the script with `$name` set to the export name and returns its
//! output ([`ExportName::with_script_runner`]). Without one (a runtime with
//! no processes) the parameter fails with "not supported yet". An empty
//! output (or a script that cannot run) gives no description.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use super::params::bool_param;
use crate::backend::{
    Context, Error, Exports, Filter, FilterHandle, NextExports, NextOpener, OpenArgs, PassThrough,
    Result,
};
use crate::errno::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ListMode {
    #[default]
    Keep,
    Error,
    Empty,
    DefaultOnly,
    Explicit,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum DescMode {
    #[default]
    Keep,
    None,
    Fixed(String),
    Script(String),
}

/// Runs a description script with `$name` set to the export name, and
/// returns its output (`None`: no description).
pub type RunScript = fn(script: &str, name: &str) -> Option<String>;

/// The exportname filter.
#[derive(Debug, Default)]
pub struct ExportName {
    default_export: Option<String>,
    list: ListMode,
    strict: bool,
    /// The explicit `exportname=` list.
    names: Exports,
    desc: DescMode,
    run_script: Option<RunScript>,
}

impl ExportName {
    /// An exportname filter that supports `exportdesc=script:` by running
    /// scripts with `run`.
    pub fn with_script_runner(run: RunScript) -> Self {
        ExportName {
            run_script: Some(run),
            ..ExportName::default()
        }
    }

    fn describe(&self, name: &str, below: Option<String>) -> Option<String> {
        describe(&self.desc, self.run_script, name, below)
    }
}

fn describe(
    desc: &DescMode,
    run: Option<RunScript>,
    name: &str,
    below: Option<String>,
) -> Option<String> {
    match desc {
        DescMode::Keep => below,
        DescMode::None => None,
        DescMode::Fixed(s) => Some(s.clone()),
        DescMode::Script(script) => run.and_then(|r| r(script, name)),
    }
}

impl Filter for ExportName {
    fn name(&self) -> &'static str {
        "exportname"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exportname filter")
    }
    fn config_help(&self) -> &'static str {
        "default-export=<NAME>     Canonical name for the \"\" default export.\n\
         exportname-list=<MODE>    Which exports to advertise: keep (default), error,\n\
         \x20                         empty, defaultonly, explicit.\n\
         exportname-strict=<BOOL>  Limit clients to explicit exports (default false).\n\
         exportname=<NAME>         Add an explicit export name, may be repeated.\n\
         exportdesc=<MODE>         Set descriptions according to mode: keep (default),\n\
         \x20                         none, fixed:STRING, script:SCRIPT."
    }
    fn blocks(&self) -> bool {
        // Running a description script waits for a process.
        matches!(self.desc, DescMode::Script(_))
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "default-export" | "default_export" => {
                self.default_export = (!value.is_empty()).then(|| value.into())
            }
            "exportname-list" => {
                self.list = match value {
                    "keep" => ListMode::Keep,
                    "error" => ListMode::Error,
                    "empty" => ListMode::Empty,
                    "defaultonly" | "default-only" => ListMode::DefaultOnly,
                    "explicit" => ListMode::Explicit,
                    _ => {
                        return Err(Error::config(format!(
                            "unrecognized exportname-list mode: {value}"
                        )))
                    }
                }
            }
            "exportname-strict" => self.strict = bool_param(value)?,
            "exportname" => self.names.add(value, None)?,
            "exportdesc" => {
                self.desc = match value {
                    "keep" => DescMode::Keep,
                    "none" => DescMode::None,
                    _ if value.starts_with("fixed:") => DescMode::Fixed(value[6..].into()),
                    _ if value.starts_with("script:") => match self.run_script {
                        Some(_) => DescMode::Script(value[7..].into()),
                        None => {
                            return Err(Error::config("exportdesc=script: is not supported yet"))
                        }
                    },
                    _ => {
                        return Err(Error::config(format!(
                            "unrecognized exportdesc mode: {value}"
                        )))
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        let mut below = Exports::default();
        let source = match self.list {
            ListMode::Keep => {
                // The layer below's list arrives with its default export
                // already resolved, so the description applies to it too.
                next.list_exports(readonly, is_tls, &mut below)?;
                &below.list
            }
            ListMode::Error => {
                return Err(Error::msg(Errno::EPERM, "export list restricted by policy"))
            }
            ListMode::Empty => return Ok(()),
            // The server resolves it with this filter's default_export.
            ListMode::DefaultOnly => {
                exports.use_default = true;
                return Ok(());
            }
            ListMode::Explicit => &self.names.list,
        };
        for e in source {
            let desc = self.describe(&e.name, e.description.clone());
            exports.add(&e.name, desc.as_deref())?;
        }
        Ok(())
    }
    fn default_export(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<String>> {
        // When strict, "" is allowed only if it was listed explicitly, and
        // then stands for default-export= (or for "" itself).
        if self.strict {
            return Ok(self
                .names
                .list
                .iter()
                .any(|e| e.name.is_empty())
                .then(|| self.default_export.clone().unwrap_or_default()));
        }
        match &self.default_export {
            Some(n) => Ok(Some(n.clone())),
            None => next.default_export(readonly, is_tls),
        }
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        // The server already replaced "" by default_export's answer.
        let name = args.export_name;
        if self.strict && !self.names.list.iter().any(|e| e.name == name) {
            return Err(Error::msg(
                Errno::ENOENT,
                format!("export '{name}' not found"),
            ));
        }
        next.open(args.readonly, name)?;
        Ok(match &self.desc {
            DescMode::Keep => Box::new(PassThrough),
            d => Box::new(Described {
                desc: d.clone(),
                run: self.run_script,
                name: name.into(),
            }),
        })
    }
}

/// A handle that replaces the export's description.
struct Described {
    desc: DescMode,
    run: Option<RunScript>,
    /// The export name as opened below.
    name: String,
}

impl FilterHandle for Described {
    fn export_description(&self, next: &Context) -> Result<Option<String>> {
        // Only `keep` asks the layer below.
        let below = match self.desc {
            DescMode::Keep => next.export_description()?,
            _ => None,
        };
        Ok(describe(&self.desc, self.run, &self.name, below))
    }
}
