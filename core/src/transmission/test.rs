use super::*;
use crate::wire::transmission::ErrorChunk;

fn export(eflags: u16, structured: bool, base_allocation: bool) -> Export {
    Export {
        negotiated: Negotiated {
            structured_replies: structured,
            extended_headers: false,
            base_allocation: base_allocation.then_some(1),
            eflags: eflags | FLAG_HAS_FLAGS,
            size: 1 << 20,
            oldstyle: false,
        },
    }
}

const RW: u16 = FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_SEND_FAST_ZERO
    | FLAG_SEND_CACHE;

fn req(command: u16, flags: u16, offset: u64, length: u64) -> Request {
    let header = RequestHeader {
        flags,
        command,
        cookie: 42,
        offset,
        length,
    };
    let mut b = [0u8; 28];
    header.emit_compact(&mut b);
    decode(&b, false).unwrap()
}

#[test]
fn decode_compact_write_has_payload() {
    let r = req(CMD_WRITE, 0, 0, 4096);
    assert_eq!(r.payload_len, 4096);
    assert_eq!(req(CMD_READ, 0, 0, 4096).payload_len, 0);
}

#[test]
fn decode_refuses_bad_magic_and_huge_payloads() {
    let mut b = [0u8; 28];
    RequestHeader {
        flags: 0,
        command: CMD_READ,
        cookie: 1,
        offset: 0,
        length: 1,
    }
    .emit_compact(&mut b);
    b[3] = 0x14; // the historic 0x25609514
    assert_eq!(decode(&b, false), Err(FramingError::BadMagic));
    let mut e = [0u8; 32];
    RequestHeader {
        flags: 0,
        command: CMD_WRITE,
        cookie: 1,
        offset: 0,
        length: 1 << 40,
    }
    .emit_extended(&mut e);
    assert_eq!(decode(&e, true), Err(FramingError::PayloadTooLarge));
    // A compact header is a framing error once extended headers are on.
    assert_eq!(decode(&b, true), Err(FramingError::BadMagic));
}

#[test]
fn range_errors_like_nbdkit() {
    let e = export(RW, true, true);
    assert_eq!(
        check(&e, &req(CMD_READ, 0, 1 << 20, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(
        check(&e, &req(CMD_WRITE, 0, (1 << 20) - 1, 2)),
        Err(NbdError::NoSpc)
    );
    assert_eq!(
        check(&e, &req(CMD_WRITE_ZEROES, 0, 1 << 20, 1)),
        Err(NbdError::NoSpc)
    );
    assert_eq!(
        check(&e, &req(CMD_TRIM, 0, u64::MAX, 2)),
        Err(NbdError::Inval)
    );
    // Zero-length requests are out of range.
    assert_eq!(check(&e, &req(CMD_READ, 0, 0, 0)), Err(NbdError::Inval));
    assert_eq!(check(&e, &req(CMD_WRITE, 0, 0, 0)), Err(NbdError::NoSpc));
    assert!(check(&e, &req(CMD_READ, 0, 0, 1 << 20)).is_ok());
}

#[test]
fn flush_needs_zero_offset_and_length() {
    let e = export(RW, false, false);
    assert!(check(&e, &req(CMD_FLUSH, 0, 0, 0)).is_ok());
    assert_eq!(check(&e, &req(CMD_FLUSH, 0, 1, 0)), Err(NbdError::Inval));
}

#[test]
fn flags_must_fit_the_command() {
    let e = export(RW, true, true);
    assert_eq!(
        check(&e, &req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(
        check(&e, &req(CMD_WRITE, CMD_FLAG_FAST_ZERO, 0, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(
        check(&e, &req(CMD_READ, CMD_FLAG_REQ_ONE, 0, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(check(&e, &req(CMD_READ, 0x80, 0, 1)), Err(NbdError::Inval));
    assert!(check(&e, &req(CMD_READ, CMD_FLAG_DF, 0, 1)).is_ok());
    assert!(check(
        &e,
        &req(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
            0,
            1
        )
    )
    .is_ok());
    // DF without structured replies, FUA without SEND_FUA.
    let simple = export(0, false, false);
    assert_eq!(
        check(&simple, &req(CMD_READ, CMD_FLAG_DF, 0, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(
        check(&simple, &req(CMD_READ, CMD_FLAG_FUA, 0, 1)),
        Err(NbdError::Inval)
    );
}

#[test]
fn read_only_and_missing_features() {
    let ro = export(FLAG_READ_ONLY, true, false);
    assert_eq!(check(&ro, &req(CMD_WRITE, 0, 0, 1)), Err(NbdError::Perm));
    assert_eq!(check(&ro, &req(CMD_TRIM, 0, 0, 1)), Err(NbdError::Perm));
    assert_eq!(check(&ro, &req(CMD_FLUSH, 0, 0, 0)), Err(NbdError::Inval));
    assert_eq!(check(&ro, &req(CMD_CACHE, 0, 0, 1)), Err(NbdError::Inval));
    assert_eq!(
        check(&ro, &req(CMD_BLOCK_STATUS, 0, 0, 1)),
        Err(NbdError::Inval)
    );
    assert_eq!(check(&ro, &req(99, 0, 0, 1)), Err(NbdError::Inval));
}

#[test]
fn oversized_reads_get_enomem() {
    let mut e = export(RW, false, false);
    e.negotiated.size = 1 << 30;
    assert_eq!(
        check(&e, &req(CMD_READ, 0, 0, (64 << 20) + 1)),
        Err(NbdError::NoMem)
    );
    assert!(check(&e, &req(CMD_READ, 0, 0, 64 << 20)).is_ok());
}

#[test]
fn simple_replies() {
    let s = ReplyStyle {
        structured: false,
        extended: false,
    };
    let mut b = [0u8; 64];
    assert_eq!(s.read_header(&mut b, 9, 0, 512), 16);
    assert_eq!(
        SimpleReply::parse(&b).unwrap(),
        SimpleReply {
            error: 0,
            cookie: 9
        }
    );
    let n = s.error(&mut b, Some(Command::Read), 9, 0, NbdError::Io, b"oops");
    assert_eq!(n, 16);
    assert_eq!(SimpleReply::parse(&b).unwrap().error, NBD_EIO);
}

#[test]
fn structured_read_and_error_chunks() {
    let s = ReplyStyle {
        structured: true,
        extended: false,
    };
    let mut b = [0u8; 64];
    let n = s.read_header(&mut b, 3, 4096, 512);
    assert_eq!(n, 28);
    let h = ChunkHeader::parse_structured(&b).unwrap();
    assert_eq!(
        (h.flags, h.chunk_type, h.length),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 520)
    );
    assert_eq!(&b[20..28], &4096u64.to_be_bytes());
    let n = s.error(&mut b, Some(Command::Read), 3, 0, NbdError::Inval, b"");
    let h = ChunkHeader::parse_structured(&b).unwrap();
    assert_eq!((h.chunk_type, h.length, n), (REPLY_TYPE_ERROR, 6, 26));
    assert_eq!(ErrorChunk::parse(&b[20..26]).unwrap().error, NBD_EINVAL);
    // Other commands keep simple replies under structured replies.
    assert_eq!(
        s.error(&mut b, Some(Command::Write), 3, 0, NbdError::Io, b""),
        16
    );
    assert_eq!(s.ok(&mut b, 3, 0), 16);
}

#[test]
fn extended_replies_are_always_chunks() {
    let s = ReplyStyle {
        structured: true,
        extended: true,
    };
    let mut b = [0u8; 64];
    assert_eq!(s.ok(&mut b, 5, 77), 32);
    let h = ChunkHeader::parse_extended(&b).unwrap();
    assert_eq!(
        (h.chunk_type, h.offset, h.flags),
        (REPLY_TYPE_NONE, 77, REPLY_FLAG_DONE)
    );
    assert_eq!(
        s.error(&mut b, Some(Command::Flush), 5, 0, NbdError::Io, b"x"),
        39
    );
}

#[test]
fn block_status_descriptors() {
    let s = ReplyStyle {
        structured: true,
        extended: false,
    };
    let mut b = [0u8; 128];
    let ext = [(0u64, 4096u64, 3u32), (4096, 8192, 0), (12288, 1 << 20, 3)];
    let n = s.block_status(&mut b, 1, 0, 8192, false, 1, ext);
    // Stops after the descriptor that reaches the end of the request.
    assert_eq!(n, 20 + 4 + 16);
    let h = ChunkHeader::parse_structured(&b).unwrap();
    assert_eq!((h.chunk_type, h.length), (REPLY_TYPE_BLOCK_STATUS, 20));
    assert_eq!(&b[20..24], &1u32.to_be_bytes());
    assert_eq!(&b[24..32], &[0, 0, 0x10, 0, 0, 0, 0, 3]);
    // REQ_ONE: one descriptor, clipped to the request.
    let n = s.block_status(&mut b, 1, 0, 1024, true, 1, ext);
    assert_eq!(n, 32);
    assert_eq!(&b[24..32], &[0, 0, 0x04, 0, 0, 0, 0, 3]);
    // Extended: 64-bit lengths and a count.
    let e = ReplyStyle {
        structured: true,
        extended: true,
    };
    let n = e.block_status(&mut b, 1, 0, 1 << 20, false, 1, ext);
    assert_eq!(n, e.block_status_len(3));
    assert_eq!(&b[36..40], &3u32.to_be_bytes());
}

#[test]
fn block_status_clips_to_32_bits() {
    let s = ReplyStyle {
        structured: true,
        extended: false,
    };
    let mut b = [0u8; 128];
    let ext = [(0u64, 1u64 << 40, 3u32), (1 << 40, 10, 0)];
    let n = s.block_status(&mut b, 1, 0, 1 << 41, false, 1, ext);
    assert_eq!(n, 32);
    assert_eq!(&b[24..28], &0xffff_fe00u32.to_be_bytes());
}
