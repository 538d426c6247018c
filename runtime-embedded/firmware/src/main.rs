//! A firmware-shaped NBD server for a Cortex-M4F: runtime-embedded, the
//! protocol core and a 128 KiB RAM disk with an MBR, served through core's
//! stack with real core filters over it, over an Ethernet MAC:
//!
//! ```text
//! nozero zeromode=emulate      zeroing by writing zeroes
//! protect protect=0-511        the export's first sector is read-only
//! offset offset=4096           skip the partition's first 4 KiB
//! partition partition=1        the first MBR partition of the disk
//! DevicePlugin(RamDisk)        the 128 KiB disk (an MBR is written at boot)
//! ```
//!
//! The stack lives on a bounded static heap (`HEAP`, [`HEAP_SIZE`] bytes,
//! `embedded-alloc`'s linked-list allocator): the plugin and filters (a
//! few hundred bytes), each connection's open contexts, and the short
//! buffers the filters read into (at most core's `EMULATION_CHUNK`).
//!
//! The MAC here is a stand-in (a receive and a transmit frame buffer and
//! two length registers read and written with volatile accesses), so the
//! binary links and its footprint can be measured without a board; a real
//! port replaces `Mac` with its HAL's `smoltcp::phy::Device`.
//!
//! Statics, so that `size` counts them: the disk (`DISK`), the TCP socket
//! buffers (`TCP_*`), the MAC frame buffers, the heap (`HEAP_MEM`), and
//! the server itself (`SERVER`: two connection slots and one negotiator).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};

// Links the critical-section implementation embedded-alloc locks with.
use cortex_m as _;
use cortex_m_rt::entry;
use embedded_alloc::LlffHeap as Heap;
use nbdkit_core::backend::{Filter, Result, Stack};
use nbdkit_core::filters::{nozero::NoZero, offset::Offset, partition::Partition, protect::Protect};
use nbdkit_runtime_embedded::{tcp_socket, Config, DevicePlugin, RamDisk, Server};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

const DISK_SIZE: usize = 128 * 1024;
const TCP_BUFFER: usize = 4 * 1024;
const CONNECTIONS: usize = 2;
const NEGOTIATORS: usize = 1;
const OPTION_BUFFER: usize = 512;
const MTU: usize = 1514;
/// The heap of the plugin/filter stack (see the tests of
/// runtime-embedded's loopback.rs for what a connection takes).
const HEAP_SIZE: usize = 6 * 1024;
/// Partition 1: from sector 8 (4 KiB) to the end of the disk.
const PART1: (u32, u32) = (8, (DISK_SIZE / 512) as u32 - 8);

type NbdServer = Server<'static, CONNECTIONS, NEGOTIATORS, OPTION_BUFFER>;

#[global_allocator]
static HEAP: Heap = Heap::empty();
static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
static mut DISK: [u8; DISK_SIZE] = [0; DISK_SIZE];
static mut TCP_RX: [[u8; TCP_BUFFER]; CONNECTIONS] = [[0; TCP_BUFFER]; CONNECTIONS];
static mut TCP_TX: [[u8; TCP_BUFFER]; CONNECTIONS] = [[0; TCP_BUFFER]; CONNECTIONS];
static mut SOCKETS: [SocketStorage<'static>; CONNECTIONS] = [SocketStorage::EMPTY; CONNECTIONS];
static mut SERVER: MaybeUninit<NbdServer> = MaybeUninit::uninit();
static mut RX_FRAME: [u8; MTU] = [0; MTU];
static mut TX_FRAME: [u8; MTU] = [0; MTU];

/// The stand-in MAC's registers (an unused peripheral window).
const MAC_RX_LEN: *mut u32 = 0x4002_8000 as *mut u32;
const MAC_TX_LEN: *mut u32 = 0x4002_8004 as *mut u32;
/// A free-running millisecond counter (a timer's count register).
const TIMER_MS: *const u32 = 0x4002_8008 as *const u32;

struct Mac;

struct RxToken(usize);
struct TxToken;

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // SAFETY: single-threaded firmware; the frame buffer is only used
        // inside tokens, one at a time.
        let frame = unsafe { &*addr_of_mut!(RX_FRAME) };
        let r = f(&frame[..self.0.min(MTU)]);
        // SAFETY: MMIO register write (frame consumed).
        unsafe { write_volatile(MAC_RX_LEN, 0) };
        r
    }
}

impl phy::TxToken for TxToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // SAFETY: as for RxToken.
        let frame = unsafe { &mut *addr_of_mut!(TX_FRAME) };
        let r = f(&mut frame[..len.min(MTU)]);
        // SAFETY: MMIO register write (start transmission).
        unsafe { write_volatile(MAC_TX_LEN, len as u32) };
        r
    }
}

impl Device for Mac {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken)> {
        // SAFETY: MMIO register read.
        let len = unsafe { read_volatile(MAC_RX_LEN) } as usize;
        (len > 0).then_some((RxToken(len), TxToken))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken> {
        // SAFETY: MMIO register read.
        (unsafe { read_volatile(MAC_TX_LEN) } == 0).then_some(TxToken)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU;
        caps.medium = Medium::Ethernet;
        caps
    }
}

fn now() -> Instant {
    // SAFETY: MMIO register read.
    Instant::from_millis(i64::from(unsafe { read_volatile(TIMER_MS) }))
}

/// Write an MBR with one Linux partition, `PART1`, into `disk`.
fn write_mbr(disk: &mut [u8]) {
    let e = 0x1be;
    disk[e + 4] = 0x83;
    disk[e + 8..e + 12].copy_from_slice(&PART1.0.to_le_bytes());
    disk[e + 12..e + 16].copy_from_slice(&PART1.1.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
}

/// The filters over the disk, outermost first, configured as nbdkit's
/// command line would.
fn build_stack(disk: RamDisk<'static>) -> Result<Stack> {
    let filters: vec::Vec<Box<dyn Filter>> = vec![
        Box::new(NoZero::default()),
        Box::new(Protect::default()),
        Box::new(Offset::default()),
        Box::new(Partition::default()),
    ];
    let mut stack = Stack::new(Box::new(DevicePlugin::named("ram", disk)), filters);
    for (k, v) in [
        ("zeromode", "emulate"),
        ("protect", "0-511"),
        ("offset", "4096"),
        ("partition", "1"),
    ] {
        stack.config(k, v)?;
    }
    stack.config_complete()?;
    Ok(stack)
}

#[entry]
fn main() -> ! {
    // SAFETY: called once, before anything allocates; HEAP_MEM is used by
    // nothing else.
    unsafe { HEAP.init(addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) };
    let mut mac = Mac;
    let config = IfaceConfig::new(EthernetAddress([0x02, 0, 0, 0x4e, 0x42, 0x44]).into());
    let mut iface = Interface::new(config, &mut mac, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::v4(192, 168, 69, 2), 24));
    });

    // SAFETY: main runs once and is the only user of these statics.
    let (disk, rx, tx, storage, server) = unsafe {
        (
            &mut *addr_of_mut!(DISK),
            &mut *addr_of_mut!(TCP_RX),
            &mut *addr_of_mut!(TCP_TX),
            &mut *addr_of_mut!(SOCKETS),
            &mut *addr_of_mut!(SERVER),
        )
    };
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut rx = rx.iter_mut();
    let mut tx = tx.iter_mut();
    let handles: [_; CONNECTIONS] = core::array::from_fn(|_| {
        let (Some(r), Some(t)) = (rx.next(), tx.next()) else {
            unreachable!()
        };
        sockets.add(tcp_socket(r, t))
    });
    let config = Config {
        export_name: "ram",
        description: Some("nbdkit-rs firmware: partition 1 of a RAM disk"),
        max_request: 64 * 1024,
        ..Config::new()
    };
    write_mbr(disk);
    let Ok(stack) = build_stack(RamDisk::new(disk)) else {
        panic!("the filter stack's parameters are wrong")
    };
    let server = server.write(Server::new(config, stack, handles));

    loop {
        let t = now();
        iface.poll(t, &mut mac, &mut sockets);
        server.poll(t, &mut sockets);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
