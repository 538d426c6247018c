//! runtime-embedded on Linux: serve a RAM disk (or a read-only image) over a
//! TAP device with smoltcp, exactly as firmware would over its Ethernet MAC,
//! through core's stack with any of core's filters over it.
//!
//! ```text
//! tap --tap tap0 --ip 10.201.0.2/24 [--port 10809] [--size 1048576]
//!     [--name NAME] [--image FILE | --read-only FILE] [--exit-after SECONDS]
//!     [--filter NAME]... [KEY=VALUE]...
//! ```
//!
//! `--image FILE` loads a writable RAM disk from FILE; `--read-only FILE`
//! serves FILE as a read-only (flash) disk. `--filter` stacks a core filter
//! (the first given is the outermost, as nbdkit's `--filter`), and each
//! `KEY=VALUE` goes to the first filter that takes it.
//!
//! The TAP device must exist and be up (`ip tuntap add dev tap0 mode tap`),
//! with the host's address on the same subnet. The process prints
//! `ready` on stdout once it listens, and exits by itself after
//! `--exit-after` seconds (600 by default).

use std::os::unix::io::AsRawFd;
use std::process::exit;

use nbdkit_core::backend::{Plugin, Stack};
use nbdkit_core::filters::by_name;
use nbdkit_runtime_embedded::{tcp_socket, Config, DevicePlugin, FlashDisk, RamDisk, Server};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Medium, TunTapInterface};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpCidr};

/// Connections served at once (nbdcopy opens 4 when multi-conn is offered,
/// plus one for each other client).
const CONNECTIONS: usize = 6;
/// Connections negotiating at once.
const NEGOTIATORS: usize = 2;
const TCP_BUFFER: usize = 64 * 1024;

struct Args {
    tap: String,
    ip: IpCidr,
    port: u16,
    size: usize,
    name: String,
    image: Option<String>,
    read_only: Option<String>,
    exit_after: u64,
    filters: Vec<String>,
    params: Vec<(String, String)>,
}

fn usage(msg: &str) -> ! {
    eprintln!("tap: {msg}");
    eprintln!(
        "usage: tap --tap NAME --ip ADDR/PREFIX [--port N] [--size BYTES] [--name EXPORT] \
         [--image FILE | --read-only FILE] [--exit-after SECONDS] [--filter NAME]... \
         [KEY=VALUE]..."
    );
    exit(1)
}

fn parse_args() -> Args {
    let mut a = Args {
        tap: String::new(),
        ip: "10.201.0.2/24".parse().unwrap(),
        port: 10809,
        size: 1024 * 1024,
        name: String::new(),
        image: None,
        read_only: None,
        exit_after: 600,
        filters: Vec::new(),
        params: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--tap" => a.tap = v(),
            "--ip" => a.ip = v().parse().unwrap_or_else(|_| usage("bad --ip")),
            "--port" => a.port = v().parse().unwrap_or_else(|_| usage("bad --port")),
            "--size" => a.size = v().parse().unwrap_or_else(|_| usage("bad --size")),
            "--name" => a.name = v(),
            "--image" => a.image = Some(v()),
            "--read-only" => a.read_only = Some(v()),
            "--filter" => a.filters.push(v()),
            "--exit-after" => {
                a.exit_after = v().parse().unwrap_or_else(|_| usage("bad --exit-after"))
            }
            _ => match k.split_once('=') {
                Some((key, value)) if !k.starts_with('-') => {
                    a.params.push((key.into(), value.into()))
                }
                _ => usage(&format!("unknown argument {k}")),
            },
        }
    }
    if a.tap.is_empty() {
        usage("--tap is required");
    }
    if a.image.is_some() && a.read_only.is_some() {
        usage("--image and --read-only are exclusive");
    }
    a
}

fn main() {
    let args = parse_args();
    let mut device = TunTapInterface::new(&args.tap, Medium::Ethernet).unwrap_or_else(|e| {
        eprintln!("tap: cannot open {}: {e}", args.tap);
        exit(1)
    });
    let fd = device.as_raw_fd();
    let mut c = IfaceConfig::new(EthernetAddress([0x02, 0x00, 0x00, 0x4e, 0x42, 0x44]).into());
    c.random_seed = u64::from(std::process::id());
    let mut iface = Interface::new(c, &mut device, Instant::now());
    iface.update_ip_addrs(|a| a.push(args.ip).unwrap());

    // The buffers live for the whole process, as statics would on firmware.
    let leak = |n| Box::leak(vec![0u8; n].into_boxed_slice());
    let mut sockets = SocketSet::new(vec![]);
    let handles: [_; CONNECTIONS] =
        core::array::from_fn(|_| sockets.add(tcp_socket(leak(TCP_BUFFER), leak(TCP_BUFFER))));
    let name: &'static str = Box::leak(args.name.clone().into_boxed_str());
    let config = Config {
        port: args.port,
        export_name: name,
        description: Some("nbdkit-rs runtime-embedded over TAP"),
        ..Config::new()
    };

    let read = |path: &str| {
        std::fs::read(path).unwrap_or_else(|e| {
            eprintln!("tap: {path}: {e}");
            exit(1)
        })
    };
    let plugin: Box<dyn Plugin> = match (&args.read_only, &args.image) {
        (Some(path), _) => Box::new(DevicePlugin::named(
            "flash",
            FlashDisk::new(Box::leak(read(path).into_boxed_slice())),
        )),
        (None, Some(path)) => Box::new(DevicePlugin::named(
            "ram",
            RamDisk::new(Box::leak(read(path).into_boxed_slice())),
        )),
        (None, None) => Box::new(DevicePlugin::named("ram", RamDisk::new(leak(args.size)))),
    };
    let stack = build_stack(&args, plugin).unwrap_or_else(|e| {
        eprintln!("tap: {e}");
        exit(1)
    });
    run(
        &args,
        &mut iface,
        &mut device,
        fd,
        &mut sockets,
        config,
        stack,
        handles,
    )
}

/// The plugin under the filters named by `--filter`, configured.
fn build_stack(args: &Args, plugin: Box<dyn Plugin>) -> Result<Stack, String> {
    let filters = args
        .filters
        .iter()
        .map(|name| by_name(name).ok_or_else(|| format!("{name}: not a core filter")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stack = Stack::new(plugin, filters);
    for (k, v) in &args.params {
        stack.config(k, v).map_err(|e| e.to_string())?;
    }
    stack.config_complete().map_err(|e| e.to_string())?;
    Ok(stack)
}

#[allow(clippy::too_many_arguments)]
fn run(
    args: &Args,
    iface: &mut Interface,
    device: &mut TunTapInterface,
    fd: i32,
    sockets: &mut SocketSet<'_>,
    config: Config<'_>,
    stack: Stack,
    handles: [smoltcp::iface::SocketHandle; CONNECTIONS],
) {
    let mut server: Server<'_, CONNECTIONS, NEGOTIATORS> = Server::new(config, stack, handles);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.exit_after);
    server.poll(start, sockets);
    println!("ready");
    eprintln!(
        "tap: serving {:?} on {}:{} over {}",
        server.stack(),
        args.ip.address(),
        args.port,
        args.tap
    );
    loop {
        let now = Instant::now();
        if now > deadline {
            eprintln!("tap: --exit-after reached");
            return;
        }
        iface.poll(now, device, sockets);
        if server.poll(now, sockets) {
            // Send what the server queued before sleeping.
            continue;
        }
        let delay = iface
            .poll_delay(now, sockets)
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let _ = phy_wait(fd, Some(delay));
    }
}
