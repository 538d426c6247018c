//! `nbdkit`: the command line of nbdkit(1), parsed with clap into a stack
//! of plugin and filters and a server configuration for runtime-std.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std crate

mod registry;

use std::process::ExitCode;

use clap::{Arg, ArgAction, Command};
use nbdkit_core::backend::Stack;
use nbdkit_core::debug;
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

/// `nbdkit --short-options`: every short option, one per line, as nbdkit
/// 1.36 prints them (shell completion reads this).
const SHORT_OPTIONS: &[&str] = &[
    "-4", "-6", "-D", "-e", "-f", "-g", "-i", "-n", "-o", "-p", "-P", "-r", "-s", "-t", "-u", "-U",
    "-v", "-V",
];

/// `nbdkit --long-options`: every long option and alias, one per line, in
/// nbdkit 1.36's order.
const LONG_OPTIONS: &[&str] = &[
    "--ipv4-only",
    "--ipv6-only",
    "--debug",
    "--dump-config",
    "--dump-plugin",
    "--exit-with-parent",
    "--export",
    "--export-name",
    "--exportname",
    "--filter",
    "--foreground",
    "--no-fork",
    "--group",
    "--help",
    "--ip-addr",
    "--ipaddr",
    "--log",
    "--mask-handshake",
    "--new-style",
    "--newstyle",
    "--no-sr",
    "--old-style",
    "--oldstyle",
    "--pid-file",
    "--pidfile",
    "--port",
    "--read-only",
    "--readonly",
    "--run",
    "--selinux-label",
    "--single",
    "--stdin",
    "--swap",
    "--threads",
    "--tls",
    "--tls-certificates",
    "--tls-psk",
    "--tls-verify-peer",
    "--unix",
    "--user",
    "--verbose",
    "--version",
    "--vsock",
];

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
        // As with nbdkit's getopt loop, a repeated option replaces the
        // earlier one (-D and --filter accumulate: they are Append).
        .args_override_self(true)
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
        .arg(flag("short-options").long("short-options"))
        .arg(flag("long-options").long("long-options"))
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
                .visible_alias("new-style")
                .overrides_with("oldstyle"),
        )
        .arg(flag("no-sr").long("no-sr"))
        .arg(
            flag("oldstyle")
                .short('o')
                .long("oldstyle")
                .visible_alias("old-style")
                .overrides_with("newstyle"),
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
    FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
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

/// Whether `k` (before the `=`) is a parameter key: a letter, then letters,
/// digits, `.`, `_` or `-`, as nbdkit checks; otherwise the whole argument
/// is a value for the magic key.
fn is_config_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
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
    // The whole stack's model, as nbdkit prints it: filters may restrict it.
    println!("thread_model={}", stack.thread_model().name());
    println!("errno_is_preserved=1");
    if let Some(k) = p.magic_config_key() {
        println!("magic_config_key={k}");
    }
    for name in p.callbacks().names() {
        println!("has_{name}=1");
    }
    for (k, v) in p.dump_plugin() {
        println!("{k}={v}");
    }
}

/// The server's own debug flags (`-D nbdkit.FLAG=N`).
const SERVER_DEBUG_FLAGS: &[&str] = &[
    "backend.controlpath",
    "backend.datapath",
    "tls.session",
    "environ",
];

/// Mark the `-D` flags of the loaded plugin, filters and server used, in
/// nbdkit's order; the warnings for flags none of them has.
fn load_debug_flags(stack: &Stack) -> Vec<String> {
    // A built-in plugin or filter documents its flags; a compiled one
    // (.so) has them when it exports NAME_debug_FLAG, which is then set.
    let has = |known: &'static [&'static str]| {
        move |f: &debug::DebugFlag| {
            f.is_one_of(known)
                || nbdkit_runtime_std::cabi::apply_debug_flag(
                    &format!("{}.{}", f.name, f.flag),
                    &f.value.to_string(),
                )
        }
    };
    let p = stack.plugin();
    let mut warnings = debug::load(p.name(), has(p.debug_flags()));
    for f in stack.filters().iter().rev() {
        warnings.extend(debug::load(f.name(), has(f.debug_flags())));
    }
    warnings.extend(debug::load("nbdkit", |f| f.is_one_of(SERVER_DEBUG_FLAGS)));
    warnings
}

/// `--tls=`: `require` (also `required`, `force`) or one of the boolean
/// spellings of nbdkit_parse_bool, any case, as nbdkit takes it.
fn parse_tls(v: &str) -> Result<&'static str, String> {
    if ["require", "required", "force"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(v))
    {
        return Ok("require");
    }
    match nbdkit_core::size::parse_bool(v) {
        Some(true) => Ok("on"),
        Some(false) => Ok("off"),
        None => Err(format!("could not decipher boolean ({v})")),
    }
}

/// `-p`: a port number, or a service name that getaddrinfo would take
/// (`nbd` from /etc/services), as nbdkit accepts.
fn parse_port(p: &str) -> Option<u16> {
    if let Ok(n) = p.parse::<u16>() {
        return Some(n);
    }
    if p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    nbdkit_runtime_std::tcp_service_port(p)
}

/// An option value that is a number (`-t`, `--mask-handshake`), with
/// nbdkit_parse_unsigned's messages.
fn parse_unsigned(what: &str, v: &str) -> Result<u32, String> {
    nbdkit_core::filters::params::parse_unsigned(what, v, u32::MAX.into())
        .map(|n| n as u32)
        .map_err(|e| e.to_string())
}

/// The options that only print something and exit.
const PRINTING_OPTIONS: &[&str] = &[
    "--help",
    "--version",
    "-V",
    "--dump-plugin",
    "--dump-config",
    "--short-options",
    "--long-options",
];

fn main() -> ExitCode {
    // Printing only (`nbdkit --help | head`), a closed pipe ends the
    // program quietly through SIGPIPE, as it ends nbdkit; the Rust runtime
    // ignores SIGPIPE, which the server keeps.
    if std::env::args().any(|a| PRINTING_OPTIONS.contains(&a.as_str())) {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: no other thread runs yet, and the default action needs
        // no handler code.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let code = run();
    // As nbdkit at exit (not after a command-line error).
    if !FAILED.load(std::sync::atomic::Ordering::Relaxed) {
        for w in debug::unused() {
            eprintln!("nbdkit: {w}");
        }
    }
    code
}

/// Set when the command line was refused.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn run() -> ExitCode {
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

    // Options nbdkit acts on as soon as it reads them: the first of them
    // on the command line wins, whatever else is there.
    let mut immediate: Vec<(usize, &str)> = ["dump-config", "short-options", "long-options"]
        .into_iter()
        .filter(|n| on(n))
        .filter_map(|n| m.index_of(n).map(|i| (i, n)))
        .collect();
    immediate.sort_unstable();
    match immediate.first().map(|(_, n)| *n) {
        Some("dump-config") => {
            dump_config();
            return ExitCode::SUCCESS;
        }
        Some("short-options") => {
            SHORT_OPTIONS.iter().for_each(|o| println!("{o}"));
            return ExitCode::SUCCESS;
        }
        Some("long-options") => {
            LONG_OPTIONS.iter().for_each(|o| println!("{o}"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }

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
    // Values nbdkit checks while it reads the options.
    let tls_arg = match get("tls").as_deref().map(parse_tls).transpose() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let threads = match get("threads")
        .as_deref()
        .map(|t| parse_unsigned("threads", t))
    {
        None | Some(Ok(0)) => 16,
        Some(Ok(n)) => n as usize,
        Some(Err(e)) => return fail(e),
    };
    let mask = match get("mask-handshake")
        .as_deref()
        .map(|v| parse_unsigned("mask-handshake", v))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    // Paths the server opens after it has moved to / in the background are
    // made absolute now, as nbdkit does.
    let pidfile = match get("pidfile")
        .as_deref()
        .map(nbdkit_runtime_std::process::absolute_path)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // The PSK file is read again for every TLS handshake.
    let tls_file = |n: &str| -> Result<Option<String>, String> {
        let Some(v) = get(n) else { return Ok(None) };
        nbdkit_runtime_std::process::absolute_path(&v)?
            .into_os_string()
            .into_string()
            .map(Some)
            .map_err(|p| format!("--{n}: not UTF-8: {}", p.to_string_lossy()))
    };
    let (tls_certificates, tls_psk) = match (tls_file("tls-certificates"), tls_file("tls-psk")) {
        (Ok(c), Ok(p)) => (c, p),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let unix = match get("unix") {
        Some(u) if u == "-" => Some(None),
        Some(u) => match nbdkit_runtime_std::process::absolute_path(&u) {
            Ok(p) => Some(Some(p)),
            Err(e) => return fail(e),
        },
        None => None,
    };

    let mut positional: Vec<String> = m
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
        if on("dump-plugin") {
            return fail(
                "use 'nbdkit plugin --dump-plugin' or 'nbdkit /path/to/plugin.so --dump-plugin', \
                 or --dump-config to find out about the server",
            );
        }
        eprintln!("nbdkit: no plugins given on the command line.\nUse 'nbdkit --help' or read the nbdkit(1) manual page for documentation.");
        return ExitCode::from(1);
    }

    // -D flags, set before the plugin and filters load (as nbdkit does).
    let mut flags = Vec::new();
    for d in m.get_many::<String>("debug").into_iter().flatten() {
        match debug::DebugFlag::parse(d) {
            Ok(f) => flags.push(f),
            Err(e) => {
                if let Some(n) = e.number {
                    log::error(None, &n);
                }
                eprintln!("nbdkit: {}", debug::DebugFlagError::FORMAT);
                return ExitCode::from(1);
            }
        }
    }
    debug::set_flags(flags);
    let server_flag = |f: &str| debug::value("nbdkit", f).map(|v| v != 0);
    log::set_backend_debug(
        server_flag("backend.datapath"),
        server_flag("backend.controlpath"),
    );
    if let Some(on) = server_flag("tls.session") {
        nbdkit_runtime_std::tls::set_debug_session(on);
    }
    if server_flag("environ") == Some(true) {
        for (k, v) in std::env::vars_os() {
            log::debug(
                None,
                format_args!("{}={}", k.to_string_lossy(), v.to_string_lossy()),
            );
        }
    }

    // Combinations nbdkit refuses before it loads the plugin.
    let run = get("run");
    let single = on("single");
    let port = get("port");
    let ipaddr = get("ipaddr");
    let vsock = on("vsock");
    if on("oldstyle") && tls_arg == Some("require") {
        return fail("cannot use oldstyle protocol (-o) and require TLS");
    }
    // systemd socket activation: LISTEN_PID names this process.
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var_os("LISTEN_FDS").is_some();
    if activated {
        let given = [
            ("--run", run.is_some()),
            ("-i", ipaddr.is_some()),
            ("-p", port.is_some()),
            ("-s", single),
            ("-U", unix.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return fail(format!("cannot use socket activation with {flag} flag"));
        }
    }
    if (port.is_some() && unix.is_some())
        || (port.is_some() && single)
        || (unix.is_some() && single)
        || (single && run.is_some())
        || (single && on("dump-plugin"))
        || (vsock && unix.is_some())
        || (vsock && single)
    {
        return fail(
            "--dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination",
        );
    }

    // A plugin script installed as `nbdkit-NAME-plugin` (nbdkit-plugin(3)):
    // `nbdkit NAME ARGS` runs `nbdkit LANG SCRIPT ARGS`, LANG from its shebang.
    if let Some((lang, script)) = registry::script_plugin(&positional[0]) {
        positional[0] = lang;
        positional.insert(1, script);
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

    for w in load_debug_flags(&stack) {
        eprintln!("nbdkit: {w}");
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

    // Configuration: KEY=VALUE, or a bare VALUE for the magic key (or, for
    // a plugin without one, `script` if it comes first).
    let magic = stack.plugin().magic_config_key();
    for (i, a) in positional[1..].iter().enumerate() {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) if is_config_key(k) => (k.to_string(), v.to_string()),
            _ => match magic {
                Some(mk) => (mk.to_string(), a.clone()),
                None if i == 0 => ("script".to_string(), a.clone()),
                None => {
                    return fail(format!(
                        "expecting key=value on the command line but got: {a}"
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

    let (tls, tls_creds) = match nbdkit_runtime_std::tls::configure(
        tls_arg,
        tls_certificates.as_deref(),
        tls_psk.as_deref(),
        on("tls-verify-peer"),
    ) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let mut hs = HsConfig {
        tls,
        ..HsConfig::default()
    };
    if let Some(mask) = mask {
        hs.handshake_flags = (mask & u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) as u16;
    }
    if on("no-sr") {
        hs.structured_replies = false;
        hs.extended_headers = false;
    }
    hs.oldstyle = on("oldstyle");
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
    } else if let Some(Some(path)) = unix {
        Listen::Unix {
            path,
            private: None,
        }
    } else if unix.is_some() || (run.is_some() && port.is_none() && ipaddr.is_none()) {
        // -U -, which --run implies (nbdkit >= 1.36) unless -p or -i asks
        // for TCP.
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
            Some(p) => match parse_port(&p) {
                Some(n) => n,
                None => return fail(format!("cannot parse port number: {p}")),
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
        pidfile,
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
