//! `example1`: nbdkit's smallest example plugin: a read-only 100 MiB disk
//! with an MBR boot sector holding one empty partition. No parameters.

use alloc::boxed::Box;

use crate::backend::{Callbacks, Flags, Handle, OpenArgs, Plugin, Result, ThreadModel};

/// The size of the disk.
const SIZE: u64 = 100 * 1024 * 1024;

/// The non-zero runs of the first sector: (offset, bytes).
const BOOT_SECTOR: &[(usize, &[u8])] = &[
    (
        0,
        &[
            0xfa, 0xb8, 0x00, 0x10, 0x8e, 0xd0, 0xbc, 0x00, 0xb0, 0xb8, 0x00, 0x00, 0x8e, 0xd8,
            0x8e, 0xc0, 0xfb, 0xbe, 0x00, 0x7c, 0xbf, 0x00, 0x06, 0xb9, 0x00, 0x02, 0xf3, 0xa4,
            0xea, 0x21, 0x06, 0x00, 0x00, 0xbe, 0xbe, 0x07, 0x38, 0x04, 0x75, 0x0b, 0x83, 0xc6,
            0x10, 0x81, 0xfe, 0xfe, 0x07, 0x75, 0xf3, 0xeb, 0x16, 0xb4, 0x02, 0xb0, 0x01, 0xbb,
            0x00, 0x7c, 0xb2, 0x80, 0x8a, 0x74, 0x01, 0x8b, 0x4c, 0x02, 0xcd, 0x13, 0xea, 0x00,
            0x7c, 0x00, 0x00, 0xeb, 0xfe,
        ],
    ),
    (
        0x1b8,
        &[
            0xe1, 0x5b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x00, 0x83, 0xbc, 0x31, 0x0c,
            0x80, 0x00, 0x00, 0x00, 0x01, 0x1f, 0x03,
        ],
    ),
    (0x1fe, &[0x55, 0xaa]),
];

/// The example1 plugin.
#[derive(Debug, Default)]
pub struct Example1;

impl Plugin for Example1 {
    fn name(&self) -> &'static str {
        "example1"
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LOAD | Callbacks::OPEN | Callbacks::GET_SIZE | Callbacks::PREAD
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeAllRequests
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Example1Handle))
    }
}

struct Example1Handle;

impl Handle for Example1Handle {
    fn get_size(&self) -> Result<u64> {
        Ok(SIZE)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for &(at, bytes) in BOOT_SECTOR {
            let (s, e) = (at as u64, (at + bytes.len()) as u64);
            let lo = s.max(offset);
            let hi = e.min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - s) as usize..(hi - s) as usize]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn boot_signature_and_partial_reads() {
        let h = Example1Handle;
        let mut sector = [0u8; 512];
        h.pread(&mut sector, 0, Flags::NONE).unwrap();
        assert_eq!(&sector[0x1fe..], &[0x55, 0xaa]);
        assert_eq!(sector[0], 0xfa);
        let mut b = [0u8; 4];
        h.pread(&mut b, 0x1fd, Flags::NONE).unwrap();
        assert_eq!(b, [0, 0x55, 0xaa, 0]);
    }
}
