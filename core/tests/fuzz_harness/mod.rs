//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (cargo-fuzz, nightly) and `core/tests/corpus_replay.rs` (stable), so a
//! corpus file is replayed through exactly the code that was fuzzed.
//!
//! Each function takes arbitrary bytes and must never panic, except on a
//! broken invariant (a round trip that does not give back what it was
//! given).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]

use std::collections::VecDeque;

use nbdkit_core::handshake::{
    Config, Event, ExportInfo, Negotiated, Next, OptionError, Server, TlsMode,
};
use nbdkit_core::transmission::{
    self as tx, eflags, CmdFlags, Command, Engine, Features, Limits, NbdError, Valid, Want,
};
use nbdkit_core::wire::consts::FLAG_SEND_FUA;
use nbdkit_core::wire::handshake::{
    ExportNameReply, InfoRequest, MetaContextRequest, NewstyleGreeting, OldstyleGreeting,
    OptionHeader, OptionReplyHeader,
};
use nbdkit_core::wire::transmission::{ChunkHeader, ErrorChunk, RequestHeader, SimpleReply};

/// Drive the server handshake with client bytes, fed in pieces, answering
/// every event the way a runtime would. The first byte picks the TLS mode
/// (off, on, required) and oldstyle.
pub fn handshake(data: &[u8]) {
    negotiate(data);
}

/// [`handshake`]; when negotiation completes, what it settled and the
/// client's bytes that follow it. Bits 3-5 of the first byte take write,
/// zero and trim/FUA away from the export.
fn negotiate(data: &[u8]) -> Option<(Negotiated, Vec<u8>)> {
    let (mode, data) = data.split_first().unwrap_or((&0, &[]));
    let config = Config {
        tls: match mode % 3 {
            0 => TlsMode::Off,
            1 => TlsMode::On,
            _ => TlsMode::Require,
        },
        oldstyle: mode & 0x80 != 0,
        max_buffered_option: if mode & 0x40 != 0 { 64 } else { 64 * 1024 },
        ..Config::default()
    };
    let write = mode & 0x08 == 0;
    let features = Features {
        write,
        flush: true,
        fua: write && mode & 0x20 == 0,
        trim: write && mode & 0x20 == 0,
        zero: write && mode & 0x10 == 0,
        fast_zero: true,
        cache: true,
        multi_conn: true,
        rotational: false,
    };
    let mut s = Server::new(config);
    let mut input: Vec<u8> = Vec::new();
    let mut rest = data;
    for _ in 0..10_000 {
        let n = s.pending_output().len();
        s.consume_output(n);
        let p = match s.handle_input(&input) {
            Ok(p) => p,
            Err(_) => return None,
        };
        let consumed = p.consumed;
        assert!(consumed <= input.len());
        let next = match p.event {
            Some(Event::ListExports(mut list)) => {
                let long = "x".repeat(5000);
                for (name, description) in [("", None), (long.as_str(), Some("a description"))] {
                    // The output was drained before the option was taken,
                    // and two entries always fit.
                    list.add(&mut s, name, description)
                        .expect("room for two list entries");
                }
                list.done(&mut s)
            }
            Some(Event::OpenExport { name, reply, .. }) => {
                if name.len() % 2 == 0 {
                    reply.ready(
                        &mut s,
                        &ExportInfo {
                            name,
                            size: 1 << 20,
                            eflags: eflags(&features),
                            description: Some("d"),
                            block_size: Some((1, 4096, 1 << 25)),
                        },
                    )
                } else {
                    reply.refuse(&mut s, OptionError::Unknown)
                }
            }
            Some(Event::StartTls(tls)) => tls.established(&mut s),
            None if consumed == 0 => {
                if s.is_done() {
                    input.extend_from_slice(rest);
                    return Some((s.negotiated(), input));
                }
                if rest.is_empty() {
                    return None;
                }
                let n = (rest[0] as usize % 64 + 1).min(rest.len());
                input.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                Next::Options
            }
            None => Next::Options,
        };
        if let Next::Close(_) = next {
            return None;
        }
        input.drain(..consumed.min(input.len()));
    }
    None
}

/// A whole connection from arbitrary client bytes: the handshake (as in
/// [`handshake`]), then the transmission engine over the bytes that follow.
pub fn session(data: &[u8]) {
    session_counts(data);
}

/// [`session`], counting the requests handed out and the refusals.
pub fn session_counts(data: &[u8]) -> (usize, usize) {
    let Some((negotiated, rest)) = negotiate(data) else {
        return (0, 0);
    };
    let mode = data.first().copied().unwrap_or(0);
    let seen = serve(negotiated, &rest, mode);
    let requests = seen
        .iter()
        .filter(|s| matches!(s, Seen::Request(_)))
        .count();
    let refused = seen
        .iter()
        .filter(|s| matches!(s, Seen::Refused(_)))
        .count();
    (requests, refused)
}

/// Run the engine over `data` and check what it hands out, fed whole and
/// fed in small pieces: both must give the same requests, refusals and end.
pub fn transmission(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let extended = mode & 1 != 0;
    let negotiated = Negotiated {
        structured_replies: mode & 2 != 0,
        extended_headers: extended,
        base_allocation: (mode & 4 != 0).then_some(1),
        eflags: u16::from(mode) << 4 | 1,
        size: 1 << 30,
        oldstyle: false,
    };
    serve(negotiated, data, mode);
}

/// What a request or refusal looked like, payload pieces merged.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request(Valid),
    Payload(u64, u64),
    Refused(tx::Refused),
    Close(tx::Close),
}

fn serve(negotiated: Negotiated, data: &[u8], mode: u8) -> Vec<Seen> {
    let limits = Limits {
        max_request: tx::MAX_REQUEST_SIZE >> ((mode >> 3) % 16),
        // 1, 2, 3, or 0 (not counted).
        max_in_flight: (1 + u32::from(mode >> 6)) % 4,
    };
    let whole = drive(negotiated, limits, data, data.len().max(1));
    let piece = 1 + usize::from(mode) % 13;
    let pieces = drive(negotiated, limits, data, piece);
    assert_eq!(
        whole, pieces,
        "feeding in pieces of {piece} changed the events"
    );
    whole
}

/// Feed `data` in pieces of `piece` bytes, answering requests oldest first
/// whenever the engine is busy, and check every event.
fn drive(negotiated: Negotiated, limits: Limits, data: &[u8], piece: usize) -> Vec<Seen> {
    let mut e = Engine::new(negotiated, limits);
    let mut seen = Vec::new();
    let mut outstanding: VecDeque<Valid> = VecDeque::new();
    // The WRITE whose payload is arriving: next offset and bytes left.
    let mut writing: Option<(u64, u64)> = None;
    let mut buf = vec![0u8; Engine::REPLY_LEN + 64];
    let mut bs = vec![0u8; e.block_status_len(3)];
    let mut pos = 0;
    let mut closed = false;
    let mut refusal = vec![0u8; Engine::REPLY_LEN];
    let mut answer = |e: &mut Engine, v: &Valid, turn: usize| {
        let n = match v.command {
            Command::Read if turn % 3 != 0 => e.reply_read(v, &mut buf),
            Command::BlockStatus if turn % 3 != 0 => {
                let ext = [
                    (v.offset, v.count / 2 + 1, 3u32),
                    (v.offset.saturating_add(v.count / 2 + 1), v.count, 0),
                ];
                let n = e.reply_block_status(v, ext, &mut bs);
                assert!(n <= bs.len());
                n
            }
            _ if turn % 3 == 0 => e.reply_error(v, NbdError::Io, b"message", &mut buf),
            _ => e.reply_ok(v, &mut buf),
        };
        assert!(n <= buf.len().max(bs.len()));
    };
    for turn in 0..1_000_000 {
        assert!(e.in_flight() <= limits.max_in_flight.max(1));
        let end = (pos + piece).min(data.len());
        let p = e.handle_input(&data[pos..end]);
        assert!(p.consumed <= end - pos);
        if closed {
            assert_eq!(p.consumed, 0, "input read after the end");
        }
        pos += p.consumed;
        match p.event {
            None if p.consumed == 0 => {
                if e.wants() == Want::Busy {
                    let v = outstanding
                        .pop_front()
                        .expect("busy with nothing in flight");
                    answer(&mut e, &v, turn);
                } else if end == data.len() || closed {
                    break;
                }
            }
            None => {}
            Some(tx::Event::Request(v)) => {
                assert!(writing.is_none());
                assert_ne!(v.command, Command::Disc);
                if v.command != Command::Flush {
                    assert!(v.count > 0 && v.offset + v.count <= negotiated.size);
                }
                if matches!(v.command, Command::Read | Command::Write) {
                    assert!(v.count <= limits.max_request);
                }
                if v.cmd_flags().contains(CmdFlags::FUA) {
                    assert_ne!(negotiated.eflags & FLAG_SEND_FUA, 0);
                }
                if v.command == Command::BlockStatus {
                    assert!(negotiated.base_allocation.is_some());
                }
                seen.push(Seen::Request(v));
                if v.command == Command::Write {
                    writing = Some((v.offset, v.count));
                    seen.push(Seen::Payload(v.offset, 0));
                }
                outstanding.push_back(v);
            }
            Some(tx::Event::Payload { offset, data, last }) => {
                let (next, left) = writing.expect("payload without a write");
                assert_eq!(offset, next);
                assert!(!data.is_empty() && data.len() as u64 <= left);
                let left = left - data.len() as u64;
                assert_eq!(last, left == 0);
                writing = (!last).then_some((next + data.len() as u64, left));
                if let Some(Seen::Payload(_, n)) = seen
                    .iter_mut()
                    .rev()
                    .find(|s| matches!(s, Seen::Payload(..)))
                {
                    *n += data.len() as u64;
                }
            }
            Some(tx::Event::Refused(r)) => {
                assert!(writing.is_none());
                seen.push(Seen::Refused(r));
                let n = e.reply_refused(&r, &mut refusal);
                assert!(n <= refusal.len());
            }
            Some(tx::Event::Close(c)) => {
                // Reported again on the next call, and then we stop.
                if closed {
                    assert_eq!(seen.last(), Some(&Seen::Close(c)));
                    break;
                }
                seen.push(Seen::Close(c));
                closed = true;
            }
        }
    }
    seen
}

/// `parse(emit(parse(bytes))) == parse(bytes)` for every wire repr, and
/// for fixed layouts `emit(parse(bytes)) == bytes`. The first byte picks
/// the repr.
pub fn roundtrip(data: &[u8]) {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    let mut out = [0u8; 256];
    match which % 11 {
        0 => {
            if let Ok(g) = NewstyleGreeting::parse(b) {
                let n = g.emit(&mut out);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(NewstyleGreeting::parse(&out[..n]), Ok(g));
            }
        }
        1 => {
            if let Ok(g) = OldstyleGreeting::parse(b) {
                let n = g.emit(&mut out);
                assert_eq!(n, OldstyleGreeting::LEN);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(OldstyleGreeting::parse(&out[..n]), Ok(g));
            }
        }
        2 => {
            if let Ok(h) = OptionHeader::parse(b) {
                let n = h.emit(&mut out);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(OptionHeader::parse(&out[..n]), Ok(h));
            }
        }
        3 => {
            if let Ok(h) = OptionReplyHeader::parse(b) {
                let n = h.emit(&mut out);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(OptionReplyHeader::parse(&out[..n]), Ok(h));
            }
        }
        4 => {
            if let Ok(h) = RequestHeader::parse_compact(b) {
                let n = h.emit_compact(&mut out);
                assert_eq!(n, RequestHeader::COMPACT_LEN);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(RequestHeader::parse_compact(&out[..n]), Ok(h));
            }
        }
        5 => {
            if let Ok(h) = RequestHeader::parse_extended(b) {
                let n = h.emit_extended(&mut out);
                assert_eq!(n, RequestHeader::EXTENDED_LEN);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(RequestHeader::parse_extended(&out[..n]), Ok(h));
            }
        }
        6 => {
            if let Ok(r) = SimpleReply::parse(b) {
                let n = r.emit(&mut out);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(SimpleReply::parse(&out[..n]), Ok(r));
            }
        }
        7 => {
            if let Ok(h) = ChunkHeader::parse_structured(b) {
                let n = h.emit(false, &mut out);
                assert_eq!(n, ChunkHeader::STRUCTURED_LEN);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(ChunkHeader::parse_structured(&out[..n]), Ok(h));
            }
            if let Ok(h) = ChunkHeader::parse_extended(b) {
                let n = h.emit(true, &mut out);
                assert_eq!(n, ChunkHeader::EXTENDED_LEN);
                assert_eq!(&out[..n], &b[..n]);
                assert_eq!(ChunkHeader::parse_extended(&out[..n]), Ok(h));
            }
        }
        8 => {
            if let Ok(e) = ErrorChunk::parse(b) {
                let mut big = vec![0u8; e.buffer_len()];
                let n = e.emit(&mut big);
                assert_eq!(n, e.buffer_len());
                assert_eq!(&big[..], &b[..n]);
                assert_eq!(ErrorChunk::parse(&big), Ok(e));
            }
        }
        9 => {
            // Option payloads have no emit in the core: re-encode by hand.
            if let Ok(r) = InfoRequest::parse(b) {
                let mut enc = Vec::new();
                enc.extend_from_slice(&(r.name.len() as u32).to_be_bytes());
                enc.extend_from_slice(r.name);
                let infos: Vec<u16> = r.info_types().collect();
                enc.extend_from_slice(&(infos.len() as u16).to_be_bytes());
                for i in &infos {
                    enc.extend_from_slice(&i.to_be_bytes());
                }
                assert_eq!(enc, b);
                assert_eq!(InfoRequest::parse(&enc), Ok(r));
            }
            if let Ok(r) = MetaContextRequest::parse(b) {
                let mut enc = Vec::new();
                enc.extend_from_slice(&(r.export.len() as u32).to_be_bytes());
                enc.extend_from_slice(r.export);
                enc.extend_from_slice(&r.count.to_be_bytes());
                let mut n = 0;
                for q in r.iter() {
                    enc.extend_from_slice(&(q.len() as u32).to_be_bytes());
                    enc.extend_from_slice(q);
                    n += 1;
                }
                assert_eq!(n, r.count);
                assert_eq!(enc, b);
                assert_eq!(MetaContextRequest::parse(&enc), Ok(r));
            }
        }
        _ => {
            // Emit-only reprs: the length they claim is the length written.
            if b.len() >= 11 {
                let r = ExportNameReply {
                    size: u64::from_be_bytes(b[..8].try_into().unwrap()),
                    eflags: u16::from_be_bytes([b[8], b[9]]),
                    no_zeroes: b[10] & 1 != 0,
                };
                let n = r.emit(&mut out);
                assert_eq!(n, r.buffer_len());
                assert_eq!(&out[..8], &b[..8]);
            }
        }
    }
}
