extern crate alloc;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::transmission::{CmdFlags, MAX_SKIPPED_PAYLOAD};
use crate::wire::consts::*;
use crate::wire::transmission::{ChunkHeader, SimpleReply};

const SIZE: u64 = 1 << 20;
const RW: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_SEND_CACHE;

fn negotiated(eflags: u16, structured: bool, extended: bool) -> Negotiated {
    Negotiated {
        structured_replies: structured,
        extended_headers: extended,
        base_allocation: structured.then_some(1),
        eflags,
        size: SIZE,
        oldstyle: false,
    }
}

fn engine(eflags: u16) -> Engine {
    Engine::new(negotiated(eflags, false, false), Limits::new())
}

fn header(command: u16, flags: u16, cookie: u64, offset: u64, length: u64) -> [u8; 28] {
    let mut b = [0u8; 28];
    b.copy_from_slice(&any_header(false, command, flags, cookie, offset, length)[..28]);
    b
}

fn ext_header(command: u16, flags: u16, cookie: u64, offset: u64, length: u64) -> [u8; 32] {
    any_header(true, command, flags, cookie, offset, length)
}

fn any_header(
    extended: bool,
    command: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    length: u64,
) -> [u8; 32] {
    let mut b = [0u8; 32];
    let h = RequestHeader {
        flags,
        command,
        cookie,
        offset,
        length,
    };
    if extended {
        h.emit_extended(&mut b);
    } else {
        h.emit_compact(&mut b);
    }
    b
}

/// What a runtime would see from feeding `input` in pieces of `piece`
/// bytes, answering every request and refusal at once. Events are
/// recorded as owned values (payload pieces as their offset and length).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Request(Valid),
    Payload(u64, usize, bool),
    Refused(Refused),
    Close(Close),
}

fn run(e: &mut Engine, input: &[u8], piece: usize) -> (Vec<Seen>, usize) {
    let mut seen = Vec::new();
    let mut pos = 0;
    let mut reply = [0u8; 64];
    for _ in 0..100_000 {
        let end = (pos + piece).min(input.len());
        let p = e.handle_input(&input[pos..end]);
        assert!(p.consumed <= end - pos);
        pos += p.consumed;
        match p.event {
            None if p.consumed == 0 && end == input.len() => break,
            None => {}
            Some(Event::Request(v)) => {
                seen.push(Seen::Request(v));
                if v.command != Command::Write {
                    e.reply_ok(&v, &mut reply);
                } else {
                    e.completed();
                }
            }
            Some(Event::Payload { offset, data, last }) => {
                seen.push(Seen::Payload(offset, data.len(), last))
            }
            Some(Event::Refused(r)) => {
                seen.push(Seen::Refused(r));
                e.reply_refused(&r, &mut reply);
            }
            Some(Event::Close(c)) => {
                seen.push(Seen::Close(c));
                break;
            }
        }
    }
    (seen, pos)
}

#[test]
fn a_read_is_handed_out_then_busy_until_answered() {
    let mut e = engine(RW);
    assert_eq!(e.wants(), Want::Header(28));
    let h = header(CMD_READ, 0, 7, 4096, 512);
    let p = e.handle_input(&h[..10]);
    assert_eq!((p.consumed, p.event), (10, None));
    assert_eq!(e.wants(), Want::Header(18));
    let p = e.handle_input(&h[10..]);
    assert_eq!(p.consumed, 18);
    let Some(Event::Request(v)) = p.event else {
        panic!("{p:?}")
    };
    assert_eq!(
        (v.command, v.cookie, v.offset, v.count),
        (Command::Read, 7, 4096, 512)
    );
    // One request in flight at most: the next header waits.
    assert_eq!(e.wants(), Want::Busy);
    let next = header(CMD_FLUSH, 0, 8, 0, 0);
    assert_eq!(e.handle_input(&next).consumed, 0);
    let mut b = [0u8; Engine::REPLY_LEN];
    let n = e.reply_read(&v, &mut b);
    assert_eq!(
        SimpleReply::parse(&b[..n]),
        Ok(SimpleReply {
            error: 0,
            cookie: 7
        })
    );
    assert_eq!(e.in_flight(), 0);
    assert!(matches!(
        e.handle_input(&next).event,
        Some(Event::Request(Valid {
            command: Command::Flush,
            ..
        }))
    ));
}

#[test]
fn feeding_byte_by_byte_gives_the_same_events() {
    let mut input = Vec::new();
    input.extend_from_slice(&header(CMD_WRITE, CMD_FLAG_FUA, 1, 0, 1000));
    input.extend_from_slice(&[0xab; 1000]);
    input.extend_from_slice(&header(CMD_READ, 0, 2, 0, 4096));
    input.extend_from_slice(&header(CMD_TRIM, 0, 3, 512, 512));
    input.extend_from_slice(&header(CMD_DISC, 0, 4, 0, 0));
    let (whole, used) = run(&mut engine(RW), &input, input.len());
    assert_eq!(used, input.len());
    let Seen::Request(w) = whole[0] else { panic!() };
    assert_eq!(w.cmd_flags(), CmdFlags::FUA);
    assert_eq!(whole[1], Seen::Payload(0, 1000, true));
    assert!(matches!(whole[2], Seen::Request(Valid { cookie: 2, .. })));
    assert!(matches!(whole[3], Seen::Request(Valid { cookie: 3, .. })));
    assert_eq!(whole[4], Seen::Close(Close::Disconnect));
    assert_eq!(whole.len(), 5);
    let (bytewise, used) = run(&mut engine(RW), &input, 1);
    assert_eq!(used, input.len());
    // The payload arrives as 1000 one-byte pieces at rising offsets.
    let pieces: Vec<_> = bytewise
        .iter()
        .filter_map(|s| match s {
            Seen::Payload(o, n, last) => Some((*o, *n, *last)),
            _ => None,
        })
        .collect();
    assert_eq!(pieces.len(), 1000);
    assert!(pieces
        .iter()
        .enumerate()
        .all(|(i, p)| *p == (i as u64, 1, i == 999)));
    let others: Vec<_> = bytewise
        .into_iter()
        .filter(|s| !matches!(s, Seen::Payload(..)))
        .collect();
    let whole_others: Vec<_> = whole
        .into_iter()
        .filter(|s| !matches!(s, Seen::Payload(..)))
        .collect();
    assert_eq!(others, whole_others);
}

#[test]
fn a_refused_writes_payload_is_discarded_before_its_error() {
    // Read-only export: the write is refused with EPERM, its 600 bytes are
    // skipped, and the next request is read in frame.
    let mut e = engine(FLAG_HAS_FLAGS | FLAG_READ_ONLY);
    let mut input = Vec::new();
    input.extend_from_slice(&header(CMD_WRITE, 0, 9, 0, 600));
    input.extend_from_slice(&[0x25; 600]); // looks like request magic: ignored
    input.extend_from_slice(&header(CMD_READ, 0, 10, 0, 1));
    let p = e.handle_input(&input);
    assert_eq!((p.consumed, p.event), (28, None));
    assert_eq!(e.wants(), Want::Skip(600));
    let (seen, used) = run(&mut e, &input[28..], 100);
    assert_eq!(used, input.len() - 28);
    let refused = Refused {
        command: Some(Command::Write),
        cookie: 9,
        offset: 0,
        error: NbdError::Perm,
    };
    assert_eq!(seen[0], Seen::Refused(refused));
    assert!(matches!(seen[1], Seen::Request(Valid { cookie: 10, .. })));
    let mut b = [0u8; Engine::REPLY_LEN];
    let n = engine(RW).reply_refused(&refused, &mut b);
    assert_eq!(
        SimpleReply::parse(&b[..n]),
        Ok(SimpleReply {
            error: NBD_EPERM,
            cookie: 9
        })
    );
}

#[test]
fn bad_magic_and_oversized_payloads_close_for_good() {
    let mut e = engine(RW);
    let mut h = header(CMD_READ, 0, 1, 0, 1);
    h[0] ^= 0xff;
    let p = e.handle_input(&h);
    assert_eq!(p.event, Some(Event::Close(Close::BadMagic)));
    assert_eq!(e.wants(), Want::Closed);
    // Sticky: nothing more is read.
    let h = header(CMD_READ, 0, 1, 0, 1);
    let p = e.handle_input(&h);
    assert_eq!(
        p,
        Progress {
            consumed: 0,
            event: Some(Event::Close(Close::BadMagic))
        }
    );

    let mut e = Engine::new(negotiated(RW, true, true), Limits::new());
    let h = ext_header(CMD_WRITE, 0, 1, 0, MAX_SKIPPED_PAYLOAD + 1);
    assert_eq!(
        e.handle_input(&h).event,
        Some(Event::Close(Close::PayloadTooLarge))
    );
    assert_eq!(e.close_reason(), Some(Close::PayloadTooLarge));
}

#[test]
fn disc_ends_the_connection_and_later_bytes_are_not_read() {
    let mut e = engine(RW);
    let mut input = header(CMD_DISC, 0, 1, 0, 0).to_vec();
    input.extend_from_slice(&header(CMD_READ, 0, 2, 0, 1));
    let p = e.handle_input(&input);
    assert_eq!(p.consumed, 28);
    assert_eq!(p.event, Some(Event::Close(Close::Disconnect)));
    assert_eq!(e.handle_input(&input[28..]).consumed, 0);
}

#[test]
fn requests_over_the_runtimes_maximum_get_einval_and_their_payload_skipped() {
    let limits = Limits {
        max_request: 4096,
        max_in_flight: 1,
    };
    let mut e = Engine::new(negotiated(RW, false, false), limits);
    let mut input = header(CMD_READ, 0, 1, 0, 8192).to_vec();
    input.extend_from_slice(&header(CMD_WRITE, 0, 2, 0, 8192));
    input.extend_from_slice(&[0; 8192]);
    input.extend_from_slice(&header(CMD_WRITE, 0, 3, 0, 4096));
    input.extend_from_slice(&[0; 4096]);
    let (seen, used) = run(&mut e, &input, 1500);
    assert_eq!(used, input.len());
    let errs: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Refused(r) => Some((r.cookie, r.error)),
            _ => None,
        })
        .collect();
    assert_eq!(errs, [(1, NbdError::Inval), (2, NbdError::Inval)]);
    // The write within the limit gets its payload, ending at 4096.
    assert!(seen.contains(&Seen::Request(Valid {
        command: Command::Write,
        cookie: 3,
        offset: 0,
        count: 4096,
        flags: CmdFlags::NONE
    })));
    assert!(seen
        .iter()
        .any(|s| matches!(s, Seen::Payload(o, n, true) if o + *n as u64 == 4096)));
    // Beyond nbdkit's own maximum the error is ENOMEM, as in nbdkit.
    let big = Negotiated {
        size: 1 << 40,
        ..negotiated(RW, false, false)
    };
    let mut e = Engine::new(big, limits);
    let h = header(CMD_READ, 0, 4, 0, MAX_REQUEST_SIZE + 1);
    let p = e.handle_input(&h);
    assert!(matches!(
        p.event,
        Some(Event::Refused(Refused {
            error: NbdError::NoMem,
            ..
        }))
    ));
}

#[test]
fn the_in_flight_limit_holds_headers_back() {
    let limits = Limits {
        max_request: MAX_REQUEST_SIZE,
        max_in_flight: 2,
    };
    let mut e = Engine::new(negotiated(RW, false, false), limits);
    let mut input = Vec::new();
    for cookie in 0..3 {
        input.extend_from_slice(&header(CMD_READ, 0, cookie, 0, 1));
    }
    let mut got = Vec::new();
    let mut pos = 0;
    while let Some(Event::Request(v)) = e.handle_input(&input[pos..]).event {
        pos += 28;
        got.push(v);
    }
    assert_eq!(got.len(), 2);
    assert_eq!(e.wants(), Want::Busy);
    // Replies may go out of order; each frees a slot.
    let mut b = [0u8; Engine::REPLY_LEN];
    e.reply_error(&got[1], NbdError::Io, b"", &mut b);
    assert_eq!(e.wants(), Want::Header(28));
    assert!(matches!(
        e.handle_input(&input[pos..]).event,
        Some(Event::Request(Valid { cookie: 2, .. }))
    ));
}

#[test]
fn garbage_never_panics_and_always_ends_or_progresses() {
    // A small deterministic generator: no dependency, same bytes each run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let structured = round % 2 == 0;
        let extended = round % 3 == 0;
        let mut e = Engine::new(
            negotiated(RW | (round as u16 & 0x3ff), structured, extended),
            Limits {
                max_request: 1 << (next() % 30),
                max_in_flight: 1 + (next() % 4) as u32,
            },
        );
        let mut input = vec![0u8; (next() % 4096) as usize];
        for b in &mut input {
            *b = next() as u8;
        }
        // Sprinkle valid magics so that some headers decode.
        for i in (0..input.len()).step_by(28) {
            if next() % 2 == 0 && i + 4 <= input.len() {
                let m = if extended {
                    EXTENDED_REQUEST_MAGIC
                } else {
                    REQUEST_MAGIC
                };
                input[i..i + 4].copy_from_slice(&m.to_be_bytes());
            }
        }
        let piece = 1 + (next() % 64) as usize;
        let (_, used) = run(&mut e, &input, piece);
        assert!(used <= input.len());
        assert!(used == input.len() || e.close_reason().is_some() || e.wants() == Want::Busy);
    }
}

#[test]
fn extended_replies_and_block_status() {
    let mut e = Engine::new(negotiated(RW, true, true), Limits::new());
    let h = ext_header(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 5, 4096, 8192);
    let Some(Event::Request(v)) = e.handle_input(&h).event else {
        panic!()
    };
    let mut b = vec![0u8; e.block_status_len(2)];
    let n = e.reply_block_status(&v, [(4096, 65536, STATE_HOLE)], &mut b);
    let c = ChunkHeader::parse_extended(&b).unwrap();
    assert_eq!(c.chunk_type, REPLY_TYPE_BLOCK_STATUS_EXT);
    assert_eq!((c.cookie, c.offset, c.length), (5, 4096, 8 + 16));
    assert_eq!(n, 32 + 8 + 16);
    // Context id, one descriptor, clipped to the request by REQ_ONE.
    assert_eq!(&b[32..40], &[0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(u64::from_be_bytes(b[40..48].try_into().unwrap()), 8192);

    // A payload on a command that takes none: skipped, then EINVAL in an
    // error chunk (extended headers never use simple replies).
    let mut input = ext_header(CMD_READ, CMD_FLAG_PAYLOAD_LEN, 6, 0, 16).to_vec();
    input.extend_from_slice(&[1; 16]);
    let p = e.handle_input(&input);
    assert_eq!((p.consumed, p.event), (32, None));
    let p = e.handle_input(&input[32..]);
    let Some(Event::Refused(r)) = p.event else {
        panic!("{p:?}")
    };
    assert_eq!(r.error, NbdError::Inval);
    let mut b = [0u8; Engine::REPLY_LEN];
    let n = e.reply_refused(&r, &mut b);
    let c = ChunkHeader::parse_extended(&b[..n]).unwrap();
    assert_eq!(c.chunk_type, REPLY_TYPE_ERROR);
    assert_eq!(&b[32..36], &NBD_EINVAL.to_be_bytes());
}

#[test]
fn unknown_commands_are_refused_with_einval() {
    let mut e = Engine::new(negotiated(RW, true, false), Limits::new());
    let h = header(CMD_RESIZE + 10, 0, 3, 0, 1);
    let p = e.handle_input(&h);
    assert_eq!(
        p.event,
        Some(Event::Refused(Refused {
            command: None,
            cookie: 3,
            offset: 0,
            error: NbdError::Inval
        }))
    );
    // A structured READ reply: one OFFSET_DATA chunk whose data follows.
    let h = header(CMD_READ, 0, 4, 512, 100);
    let p = e.handle_input(&h);
    assert_eq!(p.event, None, "busy until the refusal is answered");
    let mut b = [0u8; Engine::REPLY_LEN];
    e.reply_refused(
        &Refused {
            command: None,
            cookie: 3,
            offset: 0,
            error: NbdError::Inval,
        },
        &mut b,
    );
    let Some(Event::Request(v)) = e.handle_input(&header(CMD_READ, 0, 4, 512, 100)).event else {
        panic!()
    };
    let n = e.reply_read(&v, &mut b);
    let c = ChunkHeader::parse_structured(&b[..n]).unwrap();
    assert_eq!((c.chunk_type, c.length), (REPLY_TYPE_OFFSET_DATA, 108));
    assert_eq!(&b[20..28], &512u64.to_be_bytes());
}

#[test]
fn payloads_the_runtime_moves_itself() {
    // A runtime that reads a WRITE's payload into its own buffer, and one
    // that discards a refused request's payload, tell the engine how much.
    let limits = Limits {
        max_request: MAX_REQUEST_SIZE,
        max_in_flight: 0,
    };
    let mut e = Engine::new(
        negotiated(FLAG_HAS_FLAGS | FLAG_READ_ONLY, false, false),
        limits,
    );
    let h = header(CMD_READ, 0, 1, 0, 512);
    assert!(matches!(e.handle_input(&h).event, Some(Event::Request(_))));
    let h = header(CMD_WRITE, 0, 2, 0, 4096);
    assert_eq!(e.handle_input(&h).event, None);
    assert_eq!(e.wants(), Want::Skip(4096));
    assert_eq!(e.take_payload(4000), None);
    assert_eq!(e.wants(), Want::Skip(96));
    let r = e
        .take_payload(96)
        .expect("the refusal once the payload is gone");
    assert_eq!((r.cookie, r.error), (2, NbdError::Perm));
    // max_in_flight 0: nothing is counted, the engine is never busy.
    assert_eq!(e.in_flight(), 0);
    assert_eq!(e.wants(), Want::Header(28));

    let mut e = Engine::new(negotiated(RW, false, false), limits);
    let h = header(CMD_WRITE, 0, 3, 4096, 8192);
    assert!(matches!(e.handle_input(&h).event, Some(Event::Request(_))));
    assert_eq!(e.wants(), Want::Payload(8192));
    assert_eq!(e.take_payload(8192), None);
    assert_eq!(e.wants(), Want::Header(28));
    // Outside a payload it does nothing.
    assert_eq!(e.take_payload(10), None);
    assert_eq!(e.wants(), Want::Header(28));
}
