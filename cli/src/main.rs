//! `nbdkit`: the command line of nbdkit(1), parsed with clap into a stack
//! of plugin and filters and a server configuration for runtime-std.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std crate

mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, Command};
use nbdkit_core::backend::{Stack, CALLBACK_NAMES};
use nbdkit_core::handshake::Config as HsConfig;
use nbdkit_core::wire::consts::{FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES};
use nbdkit_runtime_std::{log, Family, Listen, ServeConfig};

const USAGE: &str = "\
nbdkit [-4|--ipv4-only] [-6|--ipv6-only]
       [-D|--debug PLUGIN|FILTER|nbdkit.FLAG=N]
       [--exit-with-parent] [-e|--exportname EXPORTNAME]
       [--filter=FILTER ...] [-f|--foreground]
       [-g|--group GROUP] [-i|--ipaddr IPADDR]
       [--log=stderr|syslog|null] [--mask-handshake=MASK]
       [-n|--newstyle] [--no-sr] [-o|--oldstyle]
       [-P|--pidfile PIDFILE] [-p|--port PORT]
       [-r|--readonly] [--run 'COMMAND ARGS ...']
       [--selinux-label=LABEL] [-s|--single] [--swap]
       [-t|--threads THREADS] [--tls=off|on|require]
       [--tls-certificates=/path/to/certificates]
       [--tls-psk=/path/to/pskfile] [--tls-verify-peer]
       [-U|--unix SOCKET|-] [-u|--user USER]
       [-v|--verbose] [--vsock]
       PLUGIN [[KEY=]VALUE [KEY=VALUE [...]]]

nbdkit --dump-config

nbdkit PLUGIN --dump-plugin

nbdkit --help

nbdkit [-V|--version]

Please read the nbdkit(1) manual page for full usage.";

fn flag(name: &'static str) -> Arg {
    Arg::new(name).action(ArgAction::SetTrue)
}

fn value(name: &'static str) -> Arg {
    Arg::new(name)
        .action(ArgAction::Set)
        .num_args(1)
        .allow_hyphen_values(true)
}

fn command() -> Command {
    Command::new("nbdkit")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .dont_delimit_trailing_values(true)
        .arg(
            flag("ipv4")
                .short('4')
                .long("ipv4-only")
                .overrides_with("ipv6"),
        )
        .arg(
            flag("ipv6")
                .short('6')
                .long("ipv6-only")
                .overrides_with("ipv4"),
        )
        .arg(
            value("debug")
                .short('D')
                .long("debug")
                .action(ArgAction::Append),
        )
        .arg(flag("dump-config").long("dump-config"))
        .arg(flag("dump-plugin").long("dump-plugin"))
        .arg(flag("exit-with-parent").long("exit-with-parent"))
        .arg(
            value("exportname")
                .short('e')
                .long("exportname")
                .visible_aliases(["export", "export-name"]),
        )
        .arg(value("filter").long("filter").action(ArgAction::Append))
        .arg(
            flag("foreground")
                .short('f')
                .long("foreground")
                .visible_alias("no-fork"),
        )
        .arg(value("group").short('g').long("group"))
        .arg(flag("help").long("help"))
        .arg(
            value("ipaddr")
                .short('i')
                .long("ipaddr")
                .visible_alias("ip-addr"),
        )
        .arg(value("log").long("log"))
        .arg(value("mask-handshake").long("mask-handshake"))
        .arg(
            flag("newstyle")
                .short('n')
                .long("newstyle")
                .visible_alias("new-style"),
        )
        .arg(flag("no-sr").long("no-sr"))
        .arg(
            flag("oldstyle")
                .short('o')
                .long("oldstyle")
                .visible_alias("old-style"),
        )
        .arg(
            value("pidfile")
                .short('P')
                .long("pidfile")
                .visible_alias("pid-file"),
        )
        .arg(value("port").short('p').long("port"))
        .arg(
            flag("readonly")
                .short('r')
                .long("readonly")
                .visible_alias("read-only"),
        )
        .arg(value("run").long("run"))
        .arg(value("selinux-label").long("selinux-label"))
        .arg(
            flag("single")
                .short('s')
                .long("single")
                .visible_alias("stdin"),
        )
        .arg(flag("swap").long("swap"))
        .arg(value("threads").short('t').long("threads"))
        .arg(value("tls").long("tls"))
        .arg(value("tls-certificates").long("tls-certificates"))
        .arg(value("tls-psk").long("tls-psk"))
        .arg(flag("tls-verify-peer").long("tls-verify-peer"))
        .arg(value("unix").short('U').long("unix"))
        .arg(value("user").short('u').long("user"))
        .arg(flag("verbose").short('v').long("verbose"))
        .arg(flag("version").short('V').long("version"))
        .arg(flag("vsock").long("vsock"))
        .arg(
            Arg::new("args")
                .action(ArgAction::Append)
                .num_args(0..)
                .allow_hyphen_values(false),
        )
}

/// A command-line mistake: one `nbdkit: error:` line, exit status 1.
fn fail(msg: impl AsRef<str>) -> ExitCode {
    log::error(None, msg.as_ref());
    ExitCode::from(1)
}

/// A plugin or filter that cannot be loaded, reported as nbdkit does.
fn load_failed(e: nbdkit_runtime_std::cabi::LoadError) -> ExitCode {
    if e.usage_hint {
        fail(format!(
            "{}\nUse 'nbdkit --help' or read the nbdkit(1) manual page for documentation.",
            e.message
        ))
    } else {
        fail(e.message)
    }
}

fn is_config_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn dump_config() {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nbdkit".into());
    let bindir = std::path::Path::new(&exe)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let lines = [
        ("binary", exe.clone()),
        ("bindir", bindir.clone()),
        ("exit_with_parent", "yes".into()),
        ("filterdir", format!("{bindir} (filters are built in)")),
        ("host_cpu", std::env::consts::ARCH.into()),
        ("host_os", "linux-gnu".into()),
        ("libdir", "/usr/lib".into()),
        ("mandir", "/usr/share/man".into()),
        ("name", "nbdkit".into()),
        ("plugindir", format!("{bindir} (plugins are built in)")),
        ("root_tls_certificates_dir", "/etc/pki/nbdkit".into()),
        ("sbindir", bindir),
        ("selinux", "no".into()),
        ("sysconfdir", "/etc".into()),
        ("tls", "yes".into()),
        ("version", nbdkit_core::NBDKIT_VERSION.into()),
        ("version_extra", nbdkit_core::VERSION_EXTRA.into()),
        (
            "version_major",
            nbdkit_core::NBDKIT_VERSION_MAJOR.to_string(),
        ),
        (
            "version_minor",
            nbdkit_core::NBDKIT_VERSION_MINOR.to_string(),
        ),
        ("zstd", "no".into()),
    ];
    for (k, v) in lines {
        println!("{k}={v}");
    }
}

fn version_line() -> String {
    format!(
        "nbdkit {} ({})",
        nbdkit_core::NBDKIT_VERSION,
        nbdkit_core::VERSION_EXTRA
    )
}

fn dump_plugin(stack: &Stack) {
    if nbdkit_runtime_std::cabi::dump_plugin(stack.plugin()) {
        return;
    }
    let p = stack.plugin();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nbdkit".into());
    println!("path={exe}");
    println!("name={}", p.name());
    println!("version={}", p.version());
    println!("api_version=2");
    println!("struct_size=384");
    println!("max_thread_model={}", p.max_thread_model().name());
    println!("thread_model={}", p.thread_model().name());
    println!("errno_is_preserved=1");
    if let Some(k) = p.magic_config_key() {
        println!("magic_config_key={k}");
    }
    for name in CALLBACK_NAMES {
        if p.callbacks().contains(name) {
            println!("has_{name}=1");
        }
    }
    for (k, v) in p.dump_plugin() {
        println!("{k}={v}");
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let m = match command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            let first = first.trim_start_matches("error: ");
            return fail(format!(
                "{first}\nUse 'nbdkit --help' or read the nbdkit(1) manual page for documentation."
            ));
        }
    };
    let get = |n: &str| m.get_one::<String>(n).cloned();
    let on = |n: &str| m.get_flag(n);

    log::set_verbose(on("verbose"));
    nbdkit_runtime_std::cabi::set_stdio_safe(!on("single"));
    if let Some(l) = get("log") {
        match l.as_str() {
            "stderr" => log::set_destination(log::LogTo::Stderr),
            "null" => log::set_destination(log::LogTo::Null),
            "syslog" => log::set_destination(log::LogTo::Syslog),
            _ => {
                return fail(format!(
                    "--log must be \"stderr\", \"syslog\" or \"null\": {l}"
                ))
            }
        }
    }
    if on("dump-config") {
        dump_config();
        return ExitCode::SUCCESS;
    }
    let positional: Vec<String> = m
        .get_many::<String>("args")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    if positional.is_empty() {
        if on("help") {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        if on("version") {
            println!("{}", version_line());
            return ExitCode::SUCCESS;
        }
        eprintln!("nbdkit: no plugins given on the command line.\nUse 'nbdkit --help' or read the nbdkit(1) manual page for documentation.");
        return ExitCode::from(1);
    }

    // Load the plugin and filters.
    let plugin_arg = &positional[0];
    let plugin = match registry::plugin(plugin_arg) {
        Ok(p) => p,
        Err(e) => return load_failed(e),
    };
    let mut filters = Vec::new();
    for f in m.get_many::<String>("filter").into_iter().flatten() {
        match registry::filter(f) {
            Ok(filter) => filters.push(filter),
            Err(e) => return load_failed(e),
        }
    }
    let mut stack = Stack::new(plugin, filters);

    // -D flags.
    let mut datapath = None;
    let mut controlpath = None;
    let mut environ = false;
    for d in m.get_many::<String>("debug").into_iter().flatten() {
        let Some((k, v)) = d.split_once('=') else {
            return fail(format!(
                "-D (Debug Flag) must have the format NAME.FLAG=N: {d}"
            ));
        };
        if !k.contains('.') || v.parse::<i64>().is_err() {
            return fail(format!(
                "-D (Debug Flag) must have the format NAME.FLAG=N: {d}"
            ));
        }
        match k {
            "nbdkit.backend.datapath" => datapath = Some(v != "0"),
            "nbdkit.backend.controlpath" => controlpath = Some(v != "0"),
            "nbdkit.tls.session" => nbdkit_runtime_std::tls::set_debug_session(v != "0"),
            "nbdkit.environ" => environ = v != "0",
            _ => {
                nbdkit_runtime_std::cabi::apply_debug_flag(k, v);
            }
        }
    }
    log::set_backend_debug(datapath, controlpath);
    if environ {
        for (k, v) in std::env::vars_os() {
            log::debug(
                None,
                format_args!("{}={}", k.to_string_lossy(), v.to_string_lossy()),
            );
        }
    }

    if on("help") {
        println!("{USAGE}");
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let title = |name: &str, long: Option<&str>| match long {
            Some(l) => format!("{name} ({l})"),
            None => name.to_string(),
        };
        for f in stack.filters() {
            println!("\nfilter: {}", title(f.name(), f.longname()));
            let path = nbdkit_runtime_std::cabi::path_of(f.name());
            println!("({})", path.as_deref().unwrap_or(&exe));
            if !f.config_help().is_empty() {
                println!("{}", f.config_help());
            }
        }
        let p = stack.plugin();
        println!("\nplugin: {}", title(p.name(), p.longname()));
        let path = nbdkit_runtime_std::cabi::path_of(p.name());
        println!("({})", path.as_deref().unwrap_or(&exe));
        if let Some(d) = p.description() {
            println!("{d}");
        }
        if !p.config_help().is_empty() {
            println!("{}", p.config_help());
        }
        return ExitCode::SUCCESS;
    }
    if on("version") {
        println!("{}", version_line());
        for f in stack.filters() {
            println!("{} {}", f.name(), f.version());
        }
        let p = stack.plugin();
        println!("{} {}", p.name(), p.version());
        return ExitCode::SUCCESS;
    }

    // Configuration.
    let magic = stack.plugin().magic_config_key();
    for (i, a) in positional[1..].iter().enumerate() {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) if is_config_key(k) => (k.to_string(), v.to_string()),
            _ => match magic {
                Some(mk) => (mk.to_string(), a.clone()),
                None if i == 0 => ("script".to_string(), a.clone()),
                None => {
                    return fail(format!(
                        "{}: this plugin does not need a bare parameter (use KEY=VALUE): {a}",
                        stack.plugin().name()
                    ))
                }
            },
        };
        if let Err(e) = stack.config(&k, &v) {
            return fail(e.to_string());
        }
    }
    if on("dump-plugin") {
        dump_plugin(&stack);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = stack.config_complete() {
        return fail(e.to_string());
    }

    // Options that belong to later work say so clearly.
    let tls_arg = get("tls");
    if let Some(other) = tls_arg
        .as_deref()
        .filter(|t| !["off", "on", "require"].contains(t))
    {
        return fail(format!(
            "--tls: invalid value: {other} (expected off, on or require)"
        ));
    }
    let (tls, tls_creds) = match nbdkit_runtime_std::tls::configure(
        tls_arg.as_deref(),
        get("tls-certificates").as_deref(),
        get("tls-psk").as_deref(),
        on("tls-verify-peer"),
    ) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let mut hs = HsConfig {
        tls,
        ..HsConfig::default()
    };
    if let Some(mask) = get("mask-handshake") {
        let parsed = if let Some(h) = mask.strip_prefix("0x").or_else(|| mask.strip_prefix("0X")) {
            u16::from_str_radix(h, 16).ok()
        } else if mask.len() > 1 && mask.starts_with('0') {
            u16::from_str_radix(&mask[1..], 8).ok()
        } else {
            mask.parse::<u16>().ok()
        };
        match parsed {
            Some(v) => hs.handshake_flags = v & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
            None => return fail(format!("--mask-handshake: could not parse number: {mask}")),
        }
    }
    if on("no-sr") {
        hs.structured_replies = false;
        hs.extended_headers = false;
    }
    if on("oldstyle") && !on("newstyle") {
        hs.oldstyle = true;
    }
    if hs.oldstyle && hs.tls == nbdkit_core::handshake::TlsMode::Require {
        return fail("cannot use oldstyle protocol (-o) and require TLS");
    }
    let threads = match get("threads") {
        None => 16,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return fail(format!("cannot parse number of threads: {t}")),
        },
    };
    let run = get("run");
    let single = on("single");
    let unix = get("unix");
    let port = get("port");
    let ipaddr = get("ipaddr");
    if single && run.is_some() {
        return fail("--run and -s/--single options cannot be used together");
    }
    if unix.is_some() && (port.is_some() || ipaddr.is_some()) {
        return fail("-U and -p/-i options cannot be used together");
    }
    if single && (unix.is_some() || port.is_some() || ipaddr.is_some()) {
        return fail("-s/--single and -U/-p/-i options cannot be used together");
    }
    // systemd socket activation: LISTEN_PID names this process.
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var_os("LISTEN_FDS").is_some();
    if activated
        && (unix.is_some() || port.is_some() || ipaddr.is_some() || run.is_some() || single)
    {
        return fail("socket activation cannot be used with -i, -p, --run, -s or -U options");
    }
    let vsock = on("vsock");
    if vsock && (unix.is_some() || single || ipaddr.is_some()) {
        return fail("--vsock cannot be used with -U, -s or -i options");
    }
    let listen = if activated {
        Listen::Activated
    } else if vsock {
        let port = match port.as_deref().map(str::parse::<u32>) {
            None => u32::from(nbdkit_core::wire::consts::DEFAULT_PORT),
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return fail(format!(
                    "cannot parse port number: {}",
                    port.unwrap_or_default()
                ))
            }
        };
        Listen::Vsock { port }
    } else if single {
        Listen::Stdin
    } else if let Some(u) = unix {
        if u == "-" {
            match nbdkit_runtime_std::server::private_socket() {
                Ok((path, dir)) => Listen::Unix {
                    path,
                    private: Some(dir),
                },
                Err(e) => return fail(format!("mkdtemp: {e}")),
            }
        } else {
            Listen::Unix {
                path: PathBuf::from(u),
                private: None,
            }
        }
    } else if run.is_some() && port.is_none() && ipaddr.is_none() {
        // nbdkit >= 1.36: --run implies -U -.
        match nbdkit_runtime_std::server::private_socket() {
            Ok((path, dir)) => Listen::Unix {
                path,
                private: Some(dir),
            },
            Err(e) => return fail(format!("mkdtemp: {e}")),
        }
    } else {
        let port = match port {
            None => nbdkit_core::wire::consts::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) => n,
                Err(_) => return fail(format!("cannot parse port number: {p}")),
            },
        };
        let family = if on("ipv4") {
            Some(Family::V4)
        } else if on("ipv6") {
            Some(Family::V6)
        } else {
            None
        };
        Listen::Tcp {
            addr: ipaddr,
            port,
            family,
        }
    };
    if let Err(e) = stack.get_ready() {
        if let Listen::Unix {
            private: Some(dir), ..
        } = &listen
        {
            let _ = std::fs::remove_dir(dir);
        }
        return fail(e.to_string());
    }
    let foreground =
        on("foreground") || run.is_some() || single || on("exit-with-parent") || activated;
    let cfg = ServeConfig {
        listen,
        threads,
        readonly: on("readonly"),
        handshake: hs,
        pidfile: get("pidfile").map(PathBuf::from),
        run,
        exportname: get("exportname").unwrap_or_default(),
        exit_with_parent: on("exit-with-parent"),
        foreground,
        user: get("user"),
        group: get("group"),
        swap: on("swap"),
        selinux_label: get("selinux-label"),
        log_explicit: get("log").is_some(),
        tls: tls_creds,
    };
    let status = nbdkit_runtime_std::serve(stack, cfg);
    ExitCode::from(status.clamp(0, 255) as u8)
}
