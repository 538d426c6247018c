//! Typed zero-copy views over message buffers, smoltcp style: a view wraps
//! any `T: AsRef<[u8]>`, reads fields in place through getters, writes them
//! through setters when `T: AsMut<[u8]>`, and is checked for length once
//! (`new_checked`) so that no accessor can index out of bounds afterwards.
//! The `Repr`s in [`super::handshake`] and [`super::transmission`] are the
//! owned, parsed form of the same messages.

use super::consts::*;
use super::WireError;

/// A big-endian integer field.
trait BeInt: Sized + Copy {
    fn read(b: &[u8]) -> Self;
    fn write(self, b: &mut [u8]);
}

macro_rules! be_int {
    ($($t:ty),*) => {$(
        impl BeInt for $t {
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; core::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_be_bytes(a)
            }
            fn write(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}
be_int!(u16, u32, u64);

macro_rules! view {
    (
        $(#[$doc:meta])*
        $name:ident, len = $len:expr, magic: $mty:ty = $magic:expr, at $mrange:expr,
        { $( $(#[$fdoc:meta])* $get:ident, $set:ident : $ty:ty = $range:expr; )* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Length of the message on the wire.
            pub const LEN: usize = $len;

            /// Wrap a buffer without checking it; accessors may then panic
            /// on a short buffer, so peer input goes through `new_checked`.
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// Wrap a buffer, checking its length and magic number.
            pub fn new_checked(buffer: T) -> Result<Self, WireError> {
                let v = Self::new_unchecked(buffer);
                v.check_len()?;
                if v.magic() != $magic {
                    return Err(WireError::BadMagic);
                }
                Ok(v)
            }

            /// Check that the buffer holds the whole message.
            pub fn check_len(&self) -> Result<(), WireError> {
                if self.buffer.as_ref().len() < Self::LEN {
                    Err(WireError::Truncated)
                } else {
                    Ok(())
                }
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The magic number.
            pub fn magic(&self) -> $mty {
                <$mty as BeInt>::read(&self.buffer.as_ref()[$mrange])
            }

            $(
                $(#[$fdoc])*
                pub fn $get(&self) -> $ty {
                    <$ty as BeInt>::read(&self.buffer.as_ref()[$range])
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Write the magic number.
            pub fn set_magic(&mut self) {
                BeInt::write($magic as $mty, &mut self.buffer.as_mut()[$mrange]);
            }

            $(
                $(#[$fdoc])*
                pub fn $set(&mut self, value: $ty) {
                    BeInt::write(value, &mut self.buffer.as_mut()[$range]);
                }
            )*
        }
    };
}

view! {
    /// The newstyle greeting: `NBDMAGIC | IHAVEOPT | u16 flags`.
    NewstyleGreetingPacket, len = 18, magic: u64 = NBDMAGIC, at 0..8,
    {
        /// The second magic (IHAVEOPT).
        opts_magic, set_opts_magic: u64 = 8..16;
        /// Handshake flags.
        flags, set_flags: u16 = 16..18;
    }
}

view! {
    /// The fixed part of the oldstyle greeting (124 zero bytes follow).
    OldstyleGreetingPacket, len = 152, magic: u64 = NBDMAGIC, at 0..8,
    {
        /// The cliserv magic.
        cliserv_magic, set_cliserv_magic: u64 = 8..16;
        /// Export size.
        size, set_size: u64 = 16..24;
        /// Handshake flags (always 0).
        gflags, set_gflags: u16 = 24..26;
        /// Transmission flags.
        eflags, set_eflags: u16 = 26..28;
    }
}

view! {
    /// An option request header: `IHAVEOPT | u32 option | u32 length`.
    OptionPacket, len = 16, magic: u64 = IHAVEOPT, at 0..8,
    {
        /// The option.
        option, set_option: u32 = 8..12;
        /// Payload length.
        length, set_length: u32 = 12..16;
    }
}

view! {
    /// An option reply header: `REP_MAGIC | u32 option | u32 type | u32 length`.
    OptionReplyPacket, len = 20, magic: u64 = REP_MAGIC, at 0..8,
    {
        /// The option answered.
        option, set_option: u32 = 8..12;
        /// Reply type.
        reply_type, set_reply_type: u32 = 12..16;
        /// Payload length.
        length, set_length: u32 = 16..20;
    }
}

view! {
    /// A compact request header (28 bytes).
    RequestPacket, len = 28, magic: u32 = REQUEST_MAGIC, at 0..4,
    {
        /// Command flags.
        flags, set_flags: u16 = 4..6;
        /// Command.
        command, set_command: u16 = 6..8;
        /// Cookie.
        cookie, set_cookie: u64 = 8..16;
        /// Offset.
        offset, set_offset: u64 = 16..24;
        /// Length.
        length, set_length: u32 = 24..28;
    }
}

view! {
    /// An extended request header (32 bytes).
    ExtendedRequestPacket, len = 32, magic: u32 = EXTENDED_REQUEST_MAGIC, at 0..4,
    {
        /// Command flags.
        flags, set_flags: u16 = 4..6;
        /// Command.
        command, set_command: u16 = 6..8;
        /// Cookie.
        cookie, set_cookie: u64 = 8..16;
        /// Offset.
        offset, set_offset: u64 = 16..24;
        /// Length (effect or payload length).
        length, set_length: u64 = 24..32;
    }
}

view! {
    /// A simple reply: `magic | u32 error | u64 cookie`.
    SimpleReplyPacket, len = 16, magic: u32 = SIMPLE_REPLY_MAGIC, at 0..4,
    {
        /// NBD error number.
        error, set_error: u32 = 4..8;
        /// Cookie.
        cookie, set_cookie: u64 = 8..16;
    }
}

view! {
    /// A structured reply chunk header (20 bytes).
    StructuredChunkPacket, len = 20, magic: u32 = STRUCTURED_REPLY_MAGIC, at 0..4,
    {
        /// Chunk flags.
        flags, set_flags: u16 = 4..6;
        /// Chunk type.
        chunk_type, set_chunk_type: u16 = 6..8;
        /// Cookie.
        cookie, set_cookie: u64 = 8..16;
        /// Payload length.
        length, set_length: u32 = 16..20;
    }
}

view! {
    /// An extended reply chunk header (32 bytes).
    ExtendedChunkPacket, len = 32, magic: u32 = EXTENDED_REPLY_MAGIC, at 0..4,
    {
        /// Chunk flags.
        flags, set_flags: u16 = 4..6;
        /// Chunk type.
        chunk_type, set_chunk_type: u16 = 6..8;
        /// Cookie.
        cookie, set_cookie: u64 = 8..16;
        /// The request's offset.
        offset, set_offset: u64 = 16..24;
        /// Payload length.
        length, set_length: u64 = 24..32;
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::transmission::RequestHeader;

    // NBD_CMD_READ of 4096 bytes at 0, cookie 1, as qemu-io sends it.
    const READ_REQ: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x10, 0,
    ];

    #[test]
    fn test_parse_request_view() {
        let p = RequestPacket::new_checked(&READ_REQ[..]).unwrap();
        assert_eq!(p.command(), CMD_READ);
        assert_eq!(p.cookie(), 1);
        assert_eq!(p.length(), 4096);
        // The view and the Repr agree.
        let r = RequestHeader::parse_compact(&READ_REQ).unwrap();
        assert_eq!((r.cookie, r.length), (p.cookie(), u64::from(p.length())));
    }

    #[test]
    fn test_construct_request_view() {
        let mut b = [0u8; 28];
        let mut p = RequestPacket::new_unchecked(&mut b[..]);
        p.set_magic();
        p.set_command(CMD_READ);
        p.set_cookie(1);
        p.set_length(4096);
        assert_eq!(b, READ_REQ);
    }

    #[test]
    fn test_checked_refuses_short_and_bad_magic() {
        assert_eq!(
            RequestPacket::new_checked(&READ_REQ[..27]),
            Err(WireError::Truncated)
        );
        let mut bad = READ_REQ;
        bad[0] = 0;
        assert_eq!(
            RequestPacket::new_checked(&bad[..]),
            Err(WireError::BadMagic)
        );
    }

    #[test]
    fn test_option_reply_view() {
        let mut b = [0u8; 20];
        let mut p = OptionReplyPacket::new_unchecked(&mut b[..]);
        p.set_magic();
        p.set_option(OPT_LIST);
        p.set_reply_type(REP_ERR_UNSUP);
        assert_eq!(
            b,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0x80, 0, 0, 1, 0, 0, 0, 0]
        );
        let p = OptionReplyPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.reply_type(), REP_ERR_UNSUP);
    }

    #[test]
    fn test_greeting_and_chunk_views() {
        let mut g = [0u8; 18];
        let mut p = NewstyleGreetingPacket::new_unchecked(&mut g[..]);
        p.set_magic();
        p.set_opts_magic(IHAVEOPT);
        p.set_flags(3);
        let r = crate::wire::handshake::NewstyleGreeting::parse(&g).unwrap();
        assert_eq!(r.flags, 3);
        let mut c = [0u8; 32];
        let mut e = ExtendedChunkPacket::new_unchecked(&mut c[..]);
        e.set_magic();
        e.set_flags(REPLY_FLAG_DONE);
        e.set_offset(4096);
        let h = crate::wire::transmission::ChunkHeader::parse_extended(&c).unwrap();
        assert_eq!((h.flags, h.offset), (REPLY_FLAG_DONE, 4096));
        let s = SimpleReplyPacket::new_checked(
            &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7][..],
        )
        .unwrap();
        assert_eq!((s.error(), s.cookie()), (NBD_EINVAL, 7));
        let o = OldstyleGreetingPacket::new_unchecked([0u8; 152]);
        assert_eq!(o.check_len(), Ok(()));
        let sc = StructuredChunkPacket::new_unchecked([0u8; 20]);
        assert_eq!(sc.magic(), 0);
        let ex = ExtendedRequestPacket::new_unchecked([0u8; 32]);
        assert_eq!(ex.length(), 0);
        let op = OptionPacket::new_unchecked([0u8; 16]);
        assert_eq!(op.option(), 0);
    }
}
