//! Decode and validate arbitrary request headers, and frame replies for
//! them: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdkit_core::handshake::Negotiated;
use nbdkit_core::transmission::{decode, header_len, validate, Export, ReplyStyle};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
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
        if let Ok(req) = decode(chunk, extended) {
            let mut buf = [0u8; 256];
            match validate(&export, &req) {
                Ok(v) => {
                    style.ok(&mut buf, v.cookie, v.offset);
                    let n = style.block_status_len(3);
                    let mut bs = vec![0u8; n];
                    style.block_status(&mut bs, v.cookie, v.offset, v.count, false, 1,
                        [(v.offset, v.count, 3u32), (v.offset.wrapping_add(v.count), 5, 0)]);
                }
                Err(e) => {
                    style.error(&mut buf, None, req.header.cookie, req.header.offset, e, b"msg");
                }
            }
        }
    }
});
