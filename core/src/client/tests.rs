//! The client driven against this crate's own server over in-memory
//! queues (quinn-proto's `Pair` harness), and against hand-made bytes for
//! what a well-behaved server never sends.

extern crate std;

use std::string::String;
use std::vec::Vec;

use super::handshake::{Config, Error, Event, Goal, Handshake};
use super::reply::{self, Next, ProtocolError, Reply, ReplyHeader, ReplySink, Sent};
use crate::handshake::{self as server, ExportInfo, TlsMode};
use crate::transmission::{Command, ReplyStyle};
use crate::wire::consts::*;
use crate::wire::transmission::ChunkHeader;

/// What the pair saw.
#[derive(Debug, Default)]
struct Seen {
    exports: Vec<(String, String)>,
    client_tls: bool,
    server_tls: bool,
}

/// Run a client against a server until the client is done or fails (at
/// most 100 rounds). The server has exports "" (alias of "disk") and
/// "disk"; anything else is unknown.
fn pair(client: &mut Handshake, server: &mut server::Server) -> Result<Seen, Error> {
    let mut seen = Seen::default();
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    for _ in 0..100 {
        // Client output.
        let out = client.pending_output().to_vec();
        client.consume_output(out.len());
        to_server.extend_from_slice(&out);
        if client.is_done() {
            return Ok(seen);
        }
        // Server.
        loop {
            let out = server.pending_output().to_vec();
            server.consume_output(out.len());
            to_client.extend_from_slice(&out);
            let Ok(p) = server.handle_input(&to_server) else {
                break;
            };
            let consumed = p.consumed;
            let idle = consumed == 0 && p.event.is_none();
            match p.event {
                None => {}
                Some(server::Event::ListExports(mut list)) => {
                    list.add(server, "disk", Some("the disk")).unwrap();
                    list.add(server, "other", None).unwrap();
                    assert_eq!(list.done(server), server::Next::Options);
                }
                Some(server::Event::OpenExport { name, reply, .. }) => {
                    let next = if name.is_empty() || name == "disk" {
                        let info = ExportInfo {
                            name: "disk",
                            size: 1 << 20,
                            eflags: FLAG_SEND_FLUSH | FLAG_SEND_TRIM,
                            description: Some("a test disk"),
                            block_size: Some((1, 4096, 1 << 25)),
                        };
                        reply.ready(server, &info)
                    } else {
                        reply.refuse(server, server::OptionError::Unknown)
                    };
                    if let server::Next::Close(_) = next {
                        to_server.drain(..consumed);
                        break;
                    }
                }
                Some(server::Event::StartTls(tls)) => {
                    seen.server_tls = true;
                    assert_eq!(tls.established(server), server::Next::Options);
                }
            }
            to_server.drain(..consumed);
            if idle {
                break;
            }
        }
        let out = server.pending_output().to_vec();
        server.consume_output(out.len());
        to_client.extend_from_slice(&out);
        // Client input.
        loop {
            if client.needed_for(&to_client) > to_client.len() {
                break;
            }
            let p = client.handle_input(&to_client)?;
            let consumed = p.consumed;
            match p.event {
                Some(Event::StartTls) => {
                    seen.client_tls = true;
                    to_client.drain(..consumed);
                    // The ACK must be the last thing read in plaintext.
                    assert!(to_client.is_empty());
                    client.tls_established().unwrap();
                    continue;
                }
                Some(Event::Export { name, description }) => seen.exports.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(description).into_owned(),
                )),
                None if consumed == 0 => break,
                None => {}
            }
            to_client.drain(..consumed);
            if client.is_done() {
                break;
            }
        }
        if let Some(e) = client.error() {
            return Err(e);
        }
    }
    panic!("handshake did not finish in 100 rounds: {client:?} / {server:?}");
}

fn client(config: Config, export: &str) -> Handshake {
    Handshake::new(config, export.as_bytes()).unwrap()
}

fn goal(goal: Goal) -> Config {
    Config {
        goal,
        ..Config::default()
    }
}

fn tls(tls: TlsMode) -> Config {
    Config {
        tls,
        ..Config::default()
    }
}

/// The core server, configured by `f`.
fn serve(f: impl FnOnce(&mut server::Config)) -> server::Server {
    let mut c = server::Config::default();
    f(&mut c);
    server::Server::new(c)
}

#[test]
fn go_with_extended_headers_and_base_allocation() {
    let mut c = client(Config::default(), "");
    let mut s = server::Server::new(server::Config::default());
    pair(&mut c, &mut s).unwrap();
    let n = c.negotiated();
    assert!(n.extended_headers && n.structured_replies);
    assert_eq!(n.base_allocation, Some(server::BASE_ALLOCATION_ID));
    assert_eq!(n.size, 1 << 20);
    assert!(n.eflags & FLAG_SEND_FLUSH != 0 && n.eflags & FLAG_SEND_TRIM != 0);
    assert_eq!(c.block_size(), Some((1, 4096, 1 << 25)));
    assert_eq!(c.canonical_name(), Some(&b"disk"[..]));
    assert_eq!(c.description(), Some(&b"a test disk"[..]));
    // The server agrees.
    assert!(s.is_done());
    assert_eq!(s.negotiated().base_allocation, n.base_allocation);
}

#[test]
fn structured_replies_when_the_server_has_no_extended_headers() {
    let mut c = client(Config::default(), "disk");
    let mut s = serve(|c| c.extended_headers = false);
    pair(&mut c, &mut s).unwrap();
    let n = c.negotiated();
    assert!(n.structured_replies && !n.extended_headers);
    assert_eq!(n.base_allocation, Some(server::BASE_ALLOCATION_ID));
}

#[test]
fn simple_replies_only_when_the_server_has_neither() {
    let mut c = client(Config::default(), "");
    let mut s = server::Server::new(server::Config {
        extended_headers: false,
        structured_replies: false,
        ..server::Config::default()
    });
    pair(&mut c, &mut s).unwrap();
    let n = c.negotiated();
    assert!(!n.structured_replies && !n.extended_headers);
    assert_eq!(n.base_allocation, None);
}

#[test]
fn unknown_export_is_refused_with_err_unknown() {
    let mut c = client(Config::default(), "nosuch");
    let mut s = server::Server::new(server::Config::default());
    assert_eq!(
        pair(&mut c, &mut s).unwrap_err(),
        Error::Refused {
            option: OPT_GO,
            reply: REP_ERR_UNKNOWN
        }
    );
}

#[test]
fn list_reports_every_export_then_aborts() {
    let mut c = client(goal(Goal::List), "");
    let mut s = server::Server::new(server::Config::default());
    let seen = pair(&mut c, &mut s).unwrap();
    assert_eq!(
        seen.exports,
        [
            ("disk".into(), "the disk".into()),
            ("other".into(), String::new())
        ]
    );
}

#[test]
fn info_reads_the_canonical_name_and_aborts() {
    let mut c = client(goal(Goal::Info), "");
    let mut s = server::Server::new(server::Config::default());
    pair(&mut c, &mut s).unwrap();
    assert_eq!(c.canonical_name(), Some(&b"disk"[..]));
    // INFO leaves the server negotiating; the client's ABORT ends it.
    assert!(!s.is_done());
    let abort = [
        0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 2, 0, 0, 0, 0,
    ];
    assert_eq!(
        s.handle_input(&abort).unwrap_err(),
        server::Disconnect::Abort
    );
}

#[test]
fn oldstyle_server_gives_size_and_flags_without_options() {
    let mut c = client(Config::default(), "ignored");
    let mut s = serve(|c| c.oldstyle = true);
    pair(&mut c, &mut s).unwrap();
    let n = c.negotiated();
    assert!(n.oldstyle && !n.structured_replies);
    assert_eq!(n.size, 1 << 20);
}

#[test]
fn server_that_is_not_fixed_newstyle_gets_export_name() {
    let mut c = client(Config::default(), "disk");
    let mut s = serve(|c| c.handshake_flags = 0);
    pair(&mut c, &mut s).unwrap();
    let n = c.negotiated();
    assert!(!n.oldstyle && !n.structured_replies);
    assert_eq!(n.size, 1 << 20);
}

#[test]
fn tls_is_started_first_when_both_sides_want_it() {
    let mut c = client(tls(TlsMode::Require), "");
    let mut s = serve(|c| c.tls = TlsMode::Require);
    let seen = pair(&mut c, &mut s).unwrap();
    assert!(seen.client_tls && seen.server_tls && c.is_tls());
    assert!(c.negotiated().extended_headers);
}

#[test]
fn tls_on_continues_in_plaintext_when_refused() {
    let mut c = client(tls(TlsMode::On), "");
    let mut s = server::Server::new(server::Config::default());
    let seen = pair(&mut c, &mut s).unwrap();
    assert!(!seen.client_tls && !c.is_tls());
}

#[test]
fn tls_require_fails_when_refused() {
    let mut c = client(tls(TlsMode::Require), "");
    let mut s = server::Server::new(server::Config::default());
    assert_eq!(pair(&mut c, &mut s).unwrap_err(), Error::TlsNotSupported);
    let mut c = client(tls(TlsMode::Require), "");
    let mut s = serve(|c| c.oldstyle = true);
    assert_eq!(pair(&mut c, &mut s).unwrap_err(), Error::TlsNotSupported);
}

#[test]
fn server_requiring_tls_is_reported() {
    let mut c = client(Config::default(), "");
    let mut s = serve(|c| c.tls = TlsMode::Require);
    assert_eq!(pair(&mut c, &mut s).unwrap_err(), Error::TlsRequired);
}

#[test]
fn long_export_name_is_refused() {
    let long = [b'a'; MAX_STRING + 1];
    assert_eq!(
        Handshake::new(Config::default(), &long).unwrap_err(),
        Error::NameTooLong
    );
    assert!(Handshake::new(Config::default(), &long[..MAX_STRING]).is_ok());
}

/// A client past the greeting and flags, with its first option sent.
fn started(config: Config) -> Handshake {
    let mut c = client(config, "");
    let mut g = [0u8; 18];
    crate::wire::handshake::NewstyleGreeting {
        flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
    }
    .emit(&mut g);
    assert_eq!(c.handle_input(&g[..16]).unwrap().consumed, 16);
    assert_eq!(c.handle_input(&g[16..]).unwrap().consumed, 2);
    let n = c.pending_output().len();
    c.consume_output(n);
    c
}

fn option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 20];
    crate::wire::handshake::OptionReplyHeader {
        option,
        reply_type,
        length: payload.len() as u32,
    }
    .emit(&mut h);
    let mut v = h.to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn greeting_without_nbd_magic_is_not_nbd() {
    let mut c = client(Config::default(), "");
    assert_eq!(c.needed_for(&[]), 16);
    assert_eq!(
        c.handle_input(b"HTTP/1.1 200 OK\r\n").unwrap_err(),
        Error::NotNbd
    );
    assert_eq!(c.error(), Some(Error::NotNbd));
}

#[test]
fn oversized_option_reply_is_refused_before_buffering() {
    let mut c = started(Config::default());
    let mut h = option_reply(OPT_EXTENDED_HEADERS, REP_ACK, &[]);
    h[16..20].copy_from_slice(&(64 * 1024 * 1024u32).to_be_bytes());
    // needed_for never asks for the oversized payload.
    assert_eq!(c.needed_for(&h), 20);
    assert!(matches!(c.handle_input(&h), Err(Error::Protocol(_))));
}

#[test]
fn reply_to_another_option_is_a_protocol_error() {
    let mut c = started(Config::default());
    let r = option_reply(OPT_GO, REP_ACK, &[]);
    assert!(matches!(c.handle_input(&r), Err(Error::Protocol(_))));
}

#[test]
fn go_ack_without_export_info_is_a_protocol_error() {
    let mut c = started(Config {
        extended_headers: false,
        structured_replies: false,
        ..Config::default()
    });
    // The first option is GO.
    let r = option_reply(OPT_GO, REP_ACK, &[]);
    assert!(matches!(c.handle_input(&r), Err(Error::Protocol(_))));
}

#[test]
fn error_message_is_kept() {
    let mut c = started(Config {
        extended_headers: false,
        structured_replies: false,
        ..Config::default()
    });
    let r = option_reply(OPT_GO, REP_ERR_POLICY, b"go away");
    assert_eq!(
        c.handle_input(&r).unwrap_err(),
        Error::Refused {
            option: OPT_GO,
            reply: REP_ERR_POLICY
        }
    );
    assert_eq!(c.server_message(), Some(&b"go away"[..]));
}

#[test]
fn go_unsupported_falls_back_to_export_name() {
    let mut c = started(Config {
        extended_headers: false,
        structured_replies: false,
        ..Config::default()
    });
    let r = option_reply(OPT_GO, REP_ERR_UNSUP, &[]);
    assert_eq!(c.handle_input(&r).unwrap().consumed, 20);
    // EXPORT_NAME with the empty name went out.
    assert_eq!(&c.pending_output()[8..16], &[0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(c.needed_for(&[]), 10);
    let mut reply = [0u8; 10];
    reply[..8].copy_from_slice(&4096u64.to_be_bytes());
    reply[8..].copy_from_slice(&(FLAG_HAS_FLAGS | FLAG_READ_ONLY).to_be_bytes());
    assert_eq!(c.handle_input(&reply).unwrap().consumed, 10);
    assert!(c.is_done());
    assert_eq!(c.negotiated().size, 4096);
    assert!(c.negotiated().eflags & FLAG_READ_ONLY != 0);
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Collect {
    zeroed: Vec<(usize, usize)>,
    extents: Vec<(u64, u64, u32)>,
    messages: Vec<(u32, Vec<u8>)>,
}

impl ReplySink for Collect {
    fn zero(&mut self, at: usize, len: usize) {
        self.zeroed.push((at, len));
    }
    fn extent(&mut self, offset: u64, length: u64, flags: u32) {
        self.extents.push((offset, length, flags));
    }
    fn message(&mut self, error: u32, message: &[u8]) {
        self.messages.push((error, message.to_vec()));
    }
}

const SIMPLE: ReplyStyle = ReplyStyle {
    structured: false,
    extended: false,
};
const STRUCTURED: ReplyStyle = ReplyStyle {
    structured: true,
    extended: false,
};
const EXTENDED: ReplyStyle = ReplyStyle {
    structured: true,
    extended: true,
};

fn sent(command: Command, offset: u64, count: u64) -> Sent {
    Sent {
        command,
        offset,
        count,
    }
}

/// Drive `reply` over `bytes` as a runtime would: the data of reads lands in
/// `buf`. Returns the sink and whether the bytes were all used.
fn drive(
    reply: &mut Reply,
    style: ReplyStyle,
    bytes: &[u8],
    buf: &mut [u8],
) -> Result<Collect, ProtocolError> {
    let mut sink = Collect::default();
    let mut pos = 0;
    while !reply.is_done() {
        let len = reply::header_len(&bytes[pos..], style)?;
        let h = reply::parse_header(&bytes[pos..pos + len], style)?;
        pos += len;
        let mut next = reply.header(&h)?;
        loop {
            match next {
                Next::Header | Next::Done => break,
                Next::Payload(n) => {
                    let p = &bytes[pos..pos + n];
                    pos += n;
                    next = reply.payload(p, &mut sink)?;
                }
                Next::Data { at, len, last } => {
                    buf[at..at + len].copy_from_slice(&bytes[pos..pos + len]);
                    pos += len;
                    next = if last { Next::Done } else { Next::Header };
                }
            }
        }
    }
    assert_eq!(pos, bytes.len(), "bytes left over");
    Ok(sink)
}

/// A server's whole READ reply of `data` at `offset`.
fn read_reply(style: ReplyStyle, cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; ReplyStyle::MAX_HEADER];
    let n = style.read_header(&mut h, cookie, offset, data.len() as u64);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(data);
    v
}

fn chunk(style: ReplyStyle, flags: u16, ty: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 32];
    let n = ChunkHeader {
        flags,
        chunk_type: ty,
        cookie,
        offset: 0,
        length: payload.len() as u64,
    }
    .emit(style.extended, &mut h);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn reads_in_every_style_land_in_the_buffer() {
    for style in [SIMPLE, STRUCTURED, EXTENDED] {
        let data: Vec<u8> = (0..100u8).collect();
        let bytes = read_reply(style, 7, 4096, &data);
        let mut r = Reply::new(sent(Command::Read, 4096, 100), style, None);
        let mut buf = [0u8; 100];
        drive(&mut r, style, &bytes, &mut buf).unwrap();
        assert_eq!(r.result(), Ok(()));
        assert_eq!(&buf[..], &data[..]);
    }
}

#[test]
fn read_split_into_data_and_hole_chunks_out_of_order() {
    let mut bytes = Vec::new();
    let mut p = 1000u64.to_be_bytes().to_vec();
    p.extend_from_slice(&[9u8; 50]);
    bytes.extend(chunk(STRUCTURED, 0, REPLY_TYPE_OFFSET_DATA, 1, &p));
    let mut hole = 950u64.to_be_bytes().to_vec();
    hole.extend_from_slice(&50u32.to_be_bytes());
    bytes.extend(chunk(STRUCTURED, 0, REPLY_TYPE_OFFSET_HOLE, 1, &hole));
    bytes.extend(chunk(STRUCTURED, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 1, &[]));
    let mut r = Reply::new(sent(Command::Read, 950, 100), STRUCTURED, None);
    let mut buf = [0xffu8; 100];
    let sink = drive(&mut r, STRUCTURED, &bytes, &mut buf).unwrap();
    assert_eq!(r.result(), Ok(()));
    assert_eq!(sink.zeroed, [(0, 50)]);
    assert_eq!(&buf[50..], &[9u8; 50][..]);
}

#[test]
fn read_that_leaves_a_gap_fails_with_eio() {
    let mut p = 0u64.to_be_bytes().to_vec();
    p.extend_from_slice(&[1u8; 10]);
    let bytes = chunk(STRUCTURED, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1, &p);
    let mut r = Reply::new(sent(Command::Read, 0, 20), STRUCTURED, None);
    let mut buf = [0u8; 20];
    drive(&mut r, STRUCTURED, &bytes, &mut buf).unwrap();
    assert_eq!(r.result(), Err(NBD_EIO));
}

#[test]
fn overlapping_or_outside_chunks_are_protocol_errors() {
    let data = |off: u64, n: usize| {
        let mut p = off.to_be_bytes().to_vec();
        p.extend(core::iter::repeat(1u8).take(n));
        p
    };
    let mut buf = [0u8; 64];
    // Overlap.
    let mut bytes = chunk(STRUCTURED, 0, REPLY_TYPE_OFFSET_DATA, 1, &data(0, 20));
    bytes.extend(chunk(
        STRUCTURED,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        1,
        &data(10, 20),
    ));
    let mut r = Reply::new(sent(Command::Read, 0, 64), STRUCTURED, None);
    assert!(drive(&mut r, STRUCTURED, &bytes, &mut buf).is_err());
    // Outside the request.
    let bytes = chunk(
        STRUCTURED,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        1,
        &data(60, 8),
    );
    let mut r = Reply::new(sent(Command::Read, 0, 64), STRUCTURED, None);
    assert!(drive(&mut r, STRUCTURED, &bytes, &mut buf).is_err());
    // Longer than the request, refused from the header alone.
    let mut r = Reply::new(sent(Command::Read, 0, 64), STRUCTURED, None);
    let h = ReplyHeader::Chunk(ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_OFFSET_DATA,
        cookie: 1,
        offset: 0,
        length: 8 + (1 << 30),
    });
    assert!(r.header(&h).is_err());
}

#[test]
fn errors_carry_the_server_errno_and_message() {
    for style in [SIMPLE, STRUCTURED, EXTENDED] {
        let mut b = [0u8; 128];
        let n = style.error(
            &mut b,
            Some(Command::Read),
            3,
            0,
            crate::transmission::NbdError::NoSpc,
            b"full",
        );
        let mut r = Reply::new(sent(Command::Read, 0, 512), style, None);
        let mut buf = [0u8; 512];
        let sink = drive(&mut r, style, &b[..n], &mut buf).unwrap();
        assert_eq!(r.result(), Err(NBD_ENOSPC));
        if style.structured {
            assert_eq!(sink.messages, [(NBD_ENOSPC, b"full".to_vec())]);
        }
        assert_eq!(reply::errno_of(NBD_ENOSPC), crate::errno::Errno::ENOSPC);
    }
}

#[test]
fn successful_writes_and_flushes() {
    for style in [SIMPLE, STRUCTURED, EXTENDED] {
        let mut b = [0u8; 64];
        let n = style.ok(&mut b, 5, 0);
        let mut r = Reply::new(sent(Command::Flush, 0, 0), style, None);
        drive(&mut r, style, &b[..n], &mut []).unwrap();
        assert_eq!(r.result(), Ok(()));
    }
}

#[test]
fn block_status_descriptors_in_both_styles() {
    for style in [STRUCTURED, EXTENDED] {
        let ext = [(0u64, 4096u64, 3u32), (4096, 8192, 0)];
        let mut b = [0u8; 128];
        let n = style.block_status(&mut b, 9, 1 << 20, 1 << 16, false, 1, ext);
        let mut r = Reply::new(sent(Command::BlockStatus, 1 << 20, 1 << 16), style, Some(1));
        let sink = drive(&mut r, style, &b[..n], &mut []).unwrap();
        assert_eq!(r.result(), Ok(()));
        assert_eq!(
            sink.extents,
            [(1 << 20, 4096, 3), ((1 << 20) + 4096, 8192, 0)]
        );
        // Another context id is refused.
        let mut r = Reply::new(sent(Command::BlockStatus, 1 << 20, 1 << 16), style, Some(2));
        assert!(drive(&mut r, style, &b[..n], &mut []).is_err());
    }
}

#[test]
fn block_status_without_descriptors_fails_with_eio() {
    let b = chunk(STRUCTURED, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 1, &[]);
    let mut r = Reply::new(sent(Command::BlockStatus, 0, 512), STRUCTURED, Some(1));
    drive(&mut r, STRUCTURED, &b, &mut []).unwrap();
    assert_eq!(r.result(), Err(NBD_EIO));
}

#[test]
fn replies_in_a_style_not_negotiated_are_refused() {
    let mut b = [0u8; 64];
    let n = STRUCTURED.ok(&mut b, 1, 0);
    // A simple reply where extended headers were negotiated.
    assert!(reply::header_len(&b[..n], EXTENDED).is_err());
    let c = chunk(STRUCTURED, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 1, &[]);
    assert!(reply::header_len(&c, SIMPLE).is_err());
    assert!(reply::header_len(&[0, 0, 0, 0], STRUCTURED).is_err());
    // A simple success for a read when structured replies are on.
    let mut r = Reply::new(sent(Command::Read, 0, 512), STRUCTURED, None);
    assert!(drive(&mut r, STRUCTURED, &b[..n], &mut [0u8; 512]).is_err());
}

#[test]
fn huge_block_status_and_error_payloads_are_refused_from_the_header() {
    let mut r = Reply::new(sent(Command::BlockStatus, 0, 512), STRUCTURED, Some(1));
    let h = ReplyHeader::Chunk(ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_BLOCK_STATUS,
        cookie: 1,
        offset: 0,
        length: u32::MAX as u64,
    });
    assert!(r.header(&h).is_err());
    let mut r = Reply::new(sent(Command::Write, 0, 512), EXTENDED, None);
    let h = ReplyHeader::Chunk(ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_ERROR,
        cookie: 1,
        offset: 0,
        length: 1 << 40,
    });
    assert!(r.header(&h).is_err());
}
