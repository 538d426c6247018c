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

use nbdkit_core::handshake::{Config, Event, ExportInfo, Negotiated, Server, TlsMode};
use nbdkit_core::transmission::{decode, header_len, validate, Command, Export, ReplyStyle};
use nbdkit_core::wire::handshake::{
    ExportNameReply, InfoRequest, MetaContextRequest, NewstyleGreeting, OldstyleGreeting,
    OptionHeader, OptionReplyHeader,
};
use nbdkit_core::wire::transmission::{ChunkHeader, ErrorChunk, RequestHeader, SimpleReply};

/// Drive the server handshake with client bytes, fed in pieces, answering
/// every event the way a runtime would. The first byte picks the TLS mode
/// (off, on, required) and oldstyle.
pub fn handshake(data: &[u8]) {
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
    let mut s = Server::new(config);
    let mut out = [0u8; 4096];
    let mut input: Vec<u8> = Vec::new();
    let mut rest = data;
    for _ in 0..10_000 {
        while s.poll_transmit(&mut out) > 0 {}
        let p = match s.handle_input(&input) {
            Ok(p) => p,
            Err(_) => return,
        };
        let consumed = p.consumed;
        assert!(consumed <= input.len());
        match p.event {
            Some(Event::ListExports) => {
                let _ = s.list_export("", None);
                let _ = s.list_export(&"x".repeat(5000), Some("a description"));
                let _ = s.list_done(true);
            }
            Some(Event::OpenExport { name, .. }) => {
                if name.len() % 2 == 0 {
                    let _ = s.export_ready(&ExportInfo {
                        name,
                        size: 1 << 20,
                        eflags: 0xffff,
                        description: Some("d"),
                        block_size: Some((1, 4096, 1 << 25)),
                    });
                } else {
                    let _ = s.export_failed();
                }
            }
            Some(Event::StartTls) => {
                let _ = s.tls_established();
            }
            None if consumed == 0 => {
                if s.is_done() || rest.is_empty() {
                    return;
                }
                let n = (rest[0] as usize % 64 + 1).min(rest.len());
                input.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            None => {}
        }
        input.drain(..consumed.min(input.len()));
    }
}

/// Decode and validate request headers, and frame replies for them. The
/// first byte picks extended headers, structured replies, base:allocation
/// and the transmission flags.
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
    let export = Export { negotiated };
    let style = ReplyStyle::of(&negotiated);
    for chunk in data.chunks(header_len(extended)) {
        let Ok(req) = decode(chunk, extended) else {
            continue;
        };
        let mut buf = [0u8; 256];
        match validate(&export, &req) {
            Ok(v) => {
                style.ok(&mut buf, v.cookie, v.offset);
                // Only a validated READ has a data reply (its length is
                // bounded by MAX_REQUEST_SIZE, so `8 + len` cannot overflow).
                if v.command == Command::Read {
                    style.read_header(&mut buf, v.cookie, v.offset, v.count);
                }
                let n = style.block_status_len(3);
                let mut bs = vec![0u8; n];
                style.block_status(
                    &mut bs,
                    v.cookie,
                    v.offset,
                    v.count,
                    v.flags & 8 != 0,
                    1,
                    [
                        (v.offset, v.count, 3u32),
                        (v.offset.wrapping_add(v.count), 5, 0),
                    ],
                );
            }
            Err(e) => {
                style.error(
                    &mut buf,
                    None,
                    req.header.cookie,
                    req.header.offset,
                    e,
                    b"msg",
                );
            }
        }
    }
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
