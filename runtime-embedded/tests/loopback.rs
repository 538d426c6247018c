//! The server and a tiny NBD client, written against the core's wire
//! types, in one process over smoltcp's loopback device.
#![allow(clippy::std_instead_of_core)] // a host test with its own allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nbdkit_core::backend::{Filter, Stack};
use nbdkit_core::sync::lock;
use nbdkit_core::wire::consts::*;
use nbdkit_core::wire::handshake::{NewstyleGreeting, OptionHeader, OptionReplyHeader};
use nbdkit_core::wire::transmission::{ChunkHeader, RequestHeader, SimpleReply};
use nbdkit_runtime_embedded::{
    tcp_socket, BlockDevice, Config, DevicePlugin, FlashDisk, RamDisk, Server, SharedDevice,
};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Loopback, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

/// Counts, per thread, the heap bytes in use by what runs while
/// `COUNTING` is on (the stack's construction and the server's polls),
/// and their peak, to check what a server needs of a device's heap.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn counted(delta: isize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let now = IN_USE.with(|u| {
                let v = u.get().saturating_add_signed(delta);
                u.set(v);
                v
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
    });
}

// SAFETY: every call goes to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size() as isize);
        // SAFETY: as the caller's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        counted(-(layout.size() as isize));
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `f` with this thread's heap counted.
fn count<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

/// The firmware example's heap (runtime-embedded/firmware: `HEAP_SIZE`).
const FIRMWARE_HEAP: usize = 6 * 1024;

const ADDR: IpAddress = IpAddress::v4(127, 0, 0, 1);
const DISK: usize = 256 * 1024;

fn leak(n: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; n].into_boxed_slice())
}

/// A configured stack of the core filters `filters` (outermost first)
/// over `device`, with `params` (`key=value`, each to the first layer
/// that takes it, as on nbdkit's command line).
fn stack_over<D: BlockDevice + Send + 'static>(
    device: D,
    filters: &[&str],
    params: &[(&str, &str)],
) -> (Stack, SharedDevice<D>) {
    let plugin = DevicePlugin::new(device);
    let shared = plugin.device();
    let filters: Vec<Box<dyn Filter>> = filters
        .iter()
        .map(|name| nbdkit_core::filters::by_name(name).expect("a core filter"))
        .collect();
    let mut stack = Stack::new(Box::new(plugin), filters);
    for (k, v) in params {
        stack.config(k, v).expect("filter parameter");
    }
    stack.config_complete().expect("config_complete");
    (stack, shared)
}

/// The interface, the sockets, the server and a clock, pumped together.
struct Net {
    iface: Interface,
    device: Loopback,
    sockets: SocketSet<'static>,
    server: Server<'static, 2>,
    now: Instant,
    next_port: u16,
}

impl Net {
    fn new(stack: Stack, config: Config<'static>) -> Self {
        let mut device = Loopback::new(Medium::Ethernet);
        let now = Instant::from_millis(0);
        let mut c = IfaceConfig::new(EthernetAddress([0x02, 0, 0, 0, 0, 1]).into());
        c.random_seed = 1;
        let mut iface = Interface::new(c, &mut device, now);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(ADDR, 8)).unwrap();
        });
        let mut sockets = SocketSet::new(vec![]);
        // Small server buffers on purpose: every request longer than them
        // must stream.
        let h0 = sockets.add(tcp_socket(leak(4096), leak(4096)));
        let h1 = sockets.add(tcp_socket(leak(4096), leak(4096)));
        let server = Server::new(config, stack, [h0, h1]);
        let mut net = Net {
            iface,
            device,
            sockets,
            server,
            now,
            next_port: 49152,
        };
        net.pump();
        net
    }

    fn pump(&mut self) {
        self.now += Duration::from_millis(1);
        self.iface
            .poll(self.now, &mut self.device, &mut self.sockets);
        let (server, sockets) = (&mut self.server, &mut self.sockets);
        count(|| server.poll(self.now, sockets));
    }

    fn connect(&mut self) -> Client {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        s.set_nagle_enabled(false);
        let handle = self.sockets.add(s);
        let port = self.next_port;
        self.next_port += 1;
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, (ADDR, DEFAULT_PORT), port)
            .unwrap();
        for _ in 0..1000 {
            self.pump();
            if self.sockets.get::<tcp::Socket>(handle).may_send() {
                return Client { handle };
            }
        }
        panic!("connect timed out");
    }
}

/// A blocking NBD client over one client socket.
struct Client {
    handle: SocketHandle,
}

impl Client {
    fn send(&self, net: &mut Net, mut b: &[u8]) {
        for _ in 0..100_000 {
            if b.is_empty() {
                return;
            }
            let n = net
                .sockets
                .get_mut::<tcp::Socket>(self.handle)
                .send_slice(b)
                .unwrap();
            b = &b[n..];
            net.pump();
        }
        panic!("send timed out");
    }

    fn recv(&self, net: &mut Net, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut have = 0;
        for _ in 0..100_000 {
            if have == n {
                return out;
            }
            let s = net.sockets.get_mut::<tcp::Socket>(self.handle);
            if !s.may_recv() {
                panic!("server closed after {have} of {n} bytes");
            }
            have += s.recv_slice(&mut out[have..]).unwrap();
            net.pump();
        }
        panic!("recv timed out after {have} of {n} bytes");
    }

    fn is_closed(&self, net: &mut Net) -> bool {
        for _ in 0..1000 {
            net.pump();
            let s = net.sockets.get_mut::<tcp::Socket>(self.handle);
            if !s.may_recv() {
                s.close();
                net.pump();
                return true;
            }
        }
        false
    }

    fn option(&self, net: &mut Net, option: u32, payload: &[u8]) {
        let mut h = [0u8; OptionHeader::LEN];
        OptionHeader {
            option,
            length: payload.len() as u32,
        }
        .emit(&mut h);
        self.send(net, &h);
        self.send(net, payload);
    }

    fn option_reply(&self, net: &mut Net) -> (OptionReplyHeader, Vec<u8>) {
        let h = OptionReplyHeader::parse(&self.recv(net, OptionReplyHeader::LEN)).unwrap();
        let payload = self.recv(net, h.length as usize);
        (h, payload)
    }

    /// Fixed newstyle, structured replies, base:allocation, GO "".
    /// Returns the size and the transmission flags.
    fn handshake(&self, net: &mut Net, structured: bool) -> (u64, u16) {
        let g = NewstyleGreeting::parse(&self.recv(net, NewstyleGreeting::LEN)).unwrap();
        assert_eq!(g.flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.send(
            net,
            &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes(),
        );
        if structured {
            self.option(net, OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_reply(net).0.reply_type, REP_ACK);
            let mut p = vec![];
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&15u32.to_be_bytes());
            p.extend_from_slice(b"base:allocation");
            self.option(net, OPT_SET_META_CONTEXT, &p);
            let (h, body) = self.option_reply(net);
            assert_eq!(h.reply_type, REP_META_CONTEXT);
            assert_eq!(&body[4..], b"base:allocation");
            assert_eq!(self.option_reply(net).0.reply_type, REP_ACK);
        }
        let mut p = vec![];
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        self.option(net, OPT_GO, &p);
        let mut size_flags = None;
        loop {
            let (h, body) = self.option_reply(net);
            match h.reply_type {
                REP_INFO if body[..2] == INFO_EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(body[2..10].try_into().unwrap());
                    let flags = u16::from_be_bytes([body[10], body[11]]);
                    size_flags = Some((size, flags));
                }
                REP_INFO => {}
                REP_ACK => return size_flags.unwrap(),
                t => panic!("unexpected reply {t:#x}"),
            }
        }
    }

    fn request(
        &self,
        net: &mut Net,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u64,
    ) {
        self.send(net, &request(command, flags, cookie, offset, length));
    }

    fn simple_reply(&self, net: &mut Net) -> SimpleReply {
        SimpleReply::parse(&self.recv(net, SimpleReply::LEN)).unwrap()
    }

    fn chunk(&self, net: &mut Net) -> (ChunkHeader, Vec<u8>) {
        let h =
            ChunkHeader::parse_structured(&self.recv(net, ChunkHeader::STRUCTURED_LEN)).unwrap();
        let body = self.recv(net, h.length as usize);
        (h, body)
    }
}

/// A stack of a RAM disk of `DISK` bytes, without filters.
fn ram() -> Stack {
    stack_over(RamDisk::new(leak(DISK)), &[], &[]).0
}

/// A compact request header.
fn request(command: u16, flags: u16, cookie: u64, offset: u64, length: u64) -> [u8; 28] {
    let mut b = [0u8; RequestHeader::COMPACT_LEN];
    RequestHeader {
        flags,
        command,
        cookie,
        offset,
        length,
    }
    .emit_compact(&mut b);
    b
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_then_read_back_with_structured_replies() {
    let (stack, disk) = stack_over(RamDisk::new(leak(DISK)), &[], &[]);
    let mut net = Net::new(stack, Config::new());
    let c = net.connect();
    let (size, flags) = c.handshake(&mut net, true);
    assert_eq!(size, DISK as u64);
    assert_ne!(flags & FLAG_SEND_DF, 0);
    assert_eq!(flags & FLAG_READ_ONLY, 0);

    // Larger than both socket buffers: the payload streams to the disk.
    let data = pattern(40_000, 7);
    c.request(
        &mut net,
        CMD_WRITE,
        CMD_FLAG_FUA,
        1,
        8192,
        data.len() as u64,
    );
    c.send(&mut net, &data);
    let r = c.simple_reply(&mut net);
    assert_eq!((r.error, r.cookie), (0, 1));
    assert_eq!(&lock(&disk).as_slice()[8192..8192 + data.len()], &data[..]);

    c.request(&mut net, CMD_READ, 0, 2, 8192, data.len() as u64);
    let (h, body) = c.chunk(&mut net);
    assert_eq!(h.chunk_type, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(h.flags, REPLY_FLAG_DONE);
    assert_eq!(h.cookie, 2);
    assert_eq!(u64::from_be_bytes(body[..8].try_into().unwrap()), 8192);
    assert_eq!(&body[8..], &data[..]);

    c.request(&mut net, CMD_DISC, 0, 3, 0, 0);
    assert!(c.is_closed(&mut net));
}

#[test]
fn block_status_reports_zero_and_data_extents() {
    let mut net = Net::new(ram(), Config::new());
    let c = net.connect();
    c.handshake(&mut net, true);
    c.request(&mut net, CMD_WRITE, 0, 1, 4096, 4096);
    c.send(&mut net, &[0xaa; 4096]);
    assert_eq!(c.simple_reply(&mut net).error, 0);

    c.request(&mut net, CMD_BLOCK_STATUS, 0, 2, 0, DISK as u64);
    let (h, body) = c.chunk(&mut net);
    assert_eq!(h.chunk_type, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(h.flags, REPLY_FLAG_DONE);
    let id = u32::from_be_bytes(body[..4].try_into().unwrap());
    assert_eq!(id, 1);
    let extents: Vec<(u32, u32)> = body[4..]
        .chunks(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![
            (4096, STATE_ZERO),
            (4096, 0),
            (DISK as u32 - 8192, STATE_ZERO)
        ]
    );
}

#[test]
fn oversized_write_is_refused_and_its_payload_drained() {
    let config = Config {
        max_request: 4096,
        ..Config::new()
    };
    let (stack, disk) = stack_over(RamDisk::new(leak(DISK)), &[], &[]);
    let mut net = Net::new(stack, config);
    let c = net.connect();
    c.handshake(&mut net, false);
    c.request(&mut net, CMD_WRITE, 0, 9, 0, 20_000);
    c.send(&mut net, &[0x55; 20_000]);
    let r = c.simple_reply(&mut net);
    assert_eq!((r.error, r.cookie), (NBD_EINVAL, 9));
    assert!(lock(&disk).as_slice().iter().all(|&b| b == 0));

    // The connection is still in step.
    c.request(&mut net, CMD_READ, 0, 10, 0, 512);
    let r = c.simple_reply(&mut net);
    assert_eq!((r.error, r.cookie), (0, 10));
    assert_eq!(c.recv(&mut net, 512), vec![0; 512]);
}

#[test]
fn out_of_range_and_bad_magic() {
    let mut net = Net::new(ram(), Config::new());
    let c = net.connect();
    c.handshake(&mut net, false);
    c.request(&mut net, CMD_READ, 0, 1, DISK as u64 - 1, 2);
    assert_eq!(c.simple_reply(&mut net).error, NBD_EINVAL);
    c.request(&mut net, CMD_WRITE, 0, 2, DISK as u64, 1);
    c.send(&mut net, &[1]);
    assert_eq!(c.simple_reply(&mut net).error, NBD_ENOSPC);
    c.send(&mut net, &[0xde; 28]);
    assert!(c.is_closed(&mut net));
}

#[test]
fn flash_disk_is_served_read_only() {
    static IMAGE: [u8; 8192] = {
        let mut a = [0u8; 8192];
        a[0] = b'N';
        a[1] = b'B';
        a[2] = b'D';
        a
    };
    let mut net = Net::new(
        stack_over(FlashDisk::new(&IMAGE), &[], &[]).0,
        Config::new(),
    );
    let c = net.connect();
    let (size, flags) = c.handshake(&mut net, true);
    assert_eq!(size, 8192);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    c.request(&mut net, CMD_WRITE, 0, 1, 0, 3);
    c.send(&mut net, b"xyz");
    assert_eq!(c.simple_reply(&mut net).error, NBD_EPERM);
    c.request(&mut net, CMD_READ, 0, 2, 0, 4);
    let (_, body) = c.chunk(&mut net);
    assert_eq!(&body[8..], b"NBD\0");
}

#[test]
fn two_connections_at_once_share_the_disk() {
    let mut net = Net::new(ram(), Config::new());
    let a = net.connect();
    let b = net.connect();
    a.handshake(&mut net, false);
    b.handshake(&mut net, true);
    assert_eq!(net.server.transmitting(), 2);
    a.request(&mut net, CMD_WRITE, 0, 1, 0, 3);
    a.send(&mut net, b"abc");
    assert_eq!(a.simple_reply(&mut net).error, 0);
    b.request(&mut net, CMD_READ, 0, 2, 0, 3);
    let (_, body) = b.chunk(&mut net);
    assert_eq!(&body[8..], b"abc");
}

#[test]
fn a_third_connection_waits_for_a_free_slot() {
    let mut net = Net::new(ram(), Config::new());
    let a = net.connect();
    let b = net.connect();
    a.handshake(&mut net, false);
    b.handshake(&mut net, false);
    a.request(&mut net, CMD_DISC, 0, 1, 0, 0);
    assert!(a.is_closed(&mut net));
    for _ in 0..100 {
        net.pump();
    }
    let c = net.connect();
    c.handshake(&mut net, false);
    c.request(&mut net, CMD_FLUSH, 0, 3, 0, 0);
    assert_eq!(c.simple_reply(&mut net).error, 0);
}

#[test]
fn a_silent_client_times_out_in_negotiation() {
    let config = Config {
        handshake_timeout: Duration::from_millis(200),
        ..Config::new()
    };
    let mut net = Net::new(ram(), config);
    let c = net.connect();
    let _greeting = c.recv(&mut net, NewstyleGreeting::LEN);
    assert!(c.is_closed(&mut net));
    assert_eq!(net.server.active_connections(), 0);
}

/// A disk of `size` bytes of pattern data with an MBR whose primary
/// partitions are `parts` (first sector, sectors; type 0x83).
fn mbr_disk(size: usize, parts: &[(u32, u32)]) -> Vec<u8> {
    let mut d = pattern(size, 3);
    d[..512].fill(0);
    for (i, (start, len)) in parts.iter().enumerate() {
        let e = 0x1be + 16 * i;
        d[e + 4] = 0x83;
        d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    d[510] = 0x55;
    d[511] = 0xaa;
    d
}

#[test]
fn partition_and_protect_filters_serve_one_partition() {
    // Partition 1 at 4 KiB, 32 KiB long; partition 2 after it.
    let image = mbr_disk(DISK, &[(8, 64), (72, 64)]);
    let (p1, p1_len) = (4096usize, 32 * 1024usize);
    let buf: &'static mut [u8] = Box::leak(image.clone().into_boxed_slice());
    let (stack, disk) = stack_over(
        RamDisk::new(buf),
        &["protect", "nozero", "partition"],
        &[
            ("partition", "1"),
            ("protect", "0-1023"),
            ("zeromode", "emulate"),
        ],
    );
    let mut net = Net::new(stack, Config::new());
    let c = net.connect();
    let (size, flags) = c.handshake(&mut net, false);
    assert_eq!(size, p1_len as u64);
    assert_eq!(flags & FLAG_READ_ONLY, 0);

    // The whole partition, in one read larger than the socket buffers.
    c.request(&mut net, CMD_READ, 0, 1, 0, p1_len as u64);
    assert_eq!(c.simple_reply(&mut net).error, 0);
    assert_eq!(c.recv(&mut net, p1_len), &image[p1..p1 + p1_len]);

    // protect: a write that changes the first KiB is refused with EPERM
    // and changes nothing; one that rewrites the same bytes is allowed.
    c.request(&mut net, CMD_WRITE, 0, 2, 512, 512);
    c.send(&mut net, &[0xee; 512]);
    assert_eq!(c.simple_reply(&mut net).error, NBD_EPERM);
    assert_eq!(lock(&disk).as_slice(), &image[..]);
    c.request(&mut net, CMD_WRITE, 0, 3, 512, 512);
    c.send(&mut net, &image[p1 + 512..p1 + 1024]);
    assert_eq!(c.simple_reply(&mut net).error, 0);

    // Past the protected range a write lands inside partition 1.
    c.request(&mut net, CMD_WRITE, 0, 4, 2048, 3);
    c.send(&mut net, b"abc");
    assert_eq!(c.simple_reply(&mut net).error, 0);
    assert_eq!(&lock(&disk).as_slice()[p1 + 2048..p1 + 2051], b"abc");

    // nozero: zeroing is done by writing zeroes, within the partition.
    c.request(&mut net, CMD_WRITE_ZEROES, 0, 5, 8192, 8192);
    assert_eq!(c.simple_reply(&mut net).error, 0);
    {
        let d = lock(&disk);
        let d = d.as_slice();
        assert!(d[p1 + 8192..p1 + 16384].iter().all(|&b| b == 0));
        assert_eq!(d[p1 + 16384..], image[p1 + 16384..]);
        assert_eq!(d[..p1 + 8192][..p1 + 2048], image[..p1 + 2048]);
    }
    // Zeroing the protected range (not zero) is refused too.
    c.request(&mut net, CMD_WRITE_ZEROES, 0, 6, 0, 4096);
    assert_eq!(c.simple_reply(&mut net).error, NBD_EPERM);
}

#[test]
fn a_disk_without_a_partition_table_is_refused_at_open() {
    let (stack, _) = stack_over(
        RamDisk::new(leak(DISK)),
        &["partition"],
        &[("partition", "1")],
    );
    let mut net = Net::new(stack, Config::new());
    let c = net.connect();
    let _ = NewstyleGreeting::parse(&c.recv(&mut net, NewstyleGreeting::LEN)).unwrap();
    c.send(
        &mut net,
        &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes(),
    );
    let mut p = vec![];
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    c.option(&mut net, OPT_GO, &p);
    let (h, _) = c.option_reply(&mut net);
    assert!(h.reply_type & 0x8000_0000 != 0, "{:#x}", h.reply_type);
}

#[test]
fn the_firmware_stack_and_two_connections_fit_its_heap() {
    // The firmware example's disk and stack, built as it builds them.
    let image = mbr_disk(128 * 1024, &[(8, 248)]);
    let buf: &'static mut [u8] = Box::leak(image.into_boxed_slice());
    let (stack, _disk) = count(|| {
        stack_over(
            RamDisk::new(buf),
            &["nozero", "protect", "offset", "partition"],
            &[
                ("zeromode", "emulate"),
                ("protect", "0-511"),
                ("offset", "4096"),
                ("partition", "1"),
            ],
        )
    });
    let mut net = Net::new(stack, Config::new());
    let a = net.connect();
    let b = net.connect();
    a.handshake(&mut net, true);
    let (size, _) = b.handshake(&mut net, true);
    assert_eq!(size, 248 * 512 - 4096);
    // Every kind of request, on both connections at once.
    for (c, cookie) in [(&a, 10u64), (&b, 20)] {
        c.request(&mut net, CMD_WRITE, CMD_FLAG_FUA, cookie, 8192, 8192);
        c.send(&mut net, &pattern(8192, 1));
    }
    for c in [&a, &b] {
        assert_eq!(c.simple_reply(&mut net).error, 0);
    }
    a.request(&mut net, CMD_READ, 0, 1, 0, 65536);
    b.request(&mut net, CMD_WRITE_ZEROES, 0, 2, 0, 65536);
    let (_, body) = a.chunk(&mut net);
    assert_eq!(body.len(), 8 + 65536);
    // Zeroing the protected first sector (not zero) is refused.
    assert_eq!(b.simple_reply(&mut net).error, NBD_EPERM);
    b.request(&mut net, CMD_WRITE_ZEROES, 0, 3, 512, 65536);
    assert_eq!(b.simple_reply(&mut net).error, 0);
    a.request(&mut net, CMD_BLOCK_STATUS, 0, 4, 0, size);
    assert_eq!(a.chunk(&mut net).0.chunk_type, REPLY_TYPE_BLOCK_STATUS);
    b.request(&mut net, CMD_TRIM, 0, 5, 70_000, 4096);
    assert_eq!(b.simple_reply(&mut net).error, 0);
    a.request(&mut net, CMD_CACHE, 0, 6, 0, 4096);
    assert_eq!(a.simple_reply(&mut net).error, 0);
    let peak = PEAK.with(Cell::get);
    println!("heap: peak {peak} bytes (64-bit host), firmware heap {FIRMWARE_HEAP}");
    // The host's pointers are twice the device's, which leaves room for
    // the device allocator's headers and fragmentation.
    assert!(peak <= FIRMWARE_HEAP, "peak {peak} > {FIRMWARE_HEAP}");
}

/// Requests sent back to back in one go (a write, a refused write with
/// its payload, an unknown command, zeroing with FUA, a read) are answered
/// one by one, in order, and the connection stays in step.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut net = Net::new(ram(), Config::new());
    let c = net.connect();
    c.handshake(&mut net, false);
    let mut burst = Vec::new();
    let header = |burst: &mut Vec<u8>, command, flags, cookie, offset, length| {
        burst.extend_from_slice(&request(command, flags, cookie, offset, length))
    };
    header(&mut burst, CMD_WRITE, 0, 1, 0, 1024);
    let data = pattern(1024, 3);
    burst.extend_from_slice(&data);
    // Past the end: ENOSPC, its payload read and dropped.
    header(&mut burst, CMD_WRITE, 0, 2, DISK as u64, 512);
    burst.extend_from_slice(&[0x25; 512]);
    header(&mut burst, 42, 0, 3, 0, 1);
    header(&mut burst, CMD_WRITE_ZEROES, CMD_FLAG_FUA, 4, 256, 256);
    header(&mut burst, CMD_READ, 0, 5, 0, 1024);
    c.send(&mut net, &burst);
    let mut replies = Vec::new();
    for _ in 0..4 {
        let r = c.simple_reply(&mut net);
        replies.push((r.cookie, r.error));
    }
    assert_eq!(replies, [(1, 0), (2, NBD_ENOSPC), (3, NBD_EINVAL), (4, 0)]);
    let r = c.simple_reply(&mut net);
    assert_eq!((r.cookie, r.error), (5, 0));
    let mut want = data;
    want[256..512].fill(0);
    assert_eq!(c.recv(&mut net, 1024), want);
}
