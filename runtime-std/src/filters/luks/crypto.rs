//! The cryptography LUKS needs: hashes, PBKDF2 and Argon2, the anti-forensic
//! splitter's merge, and the sector ciphers (AES in XTS, CBC or ECB mode
//! with plain, plain64 or ESSIV initial vectors).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use sha2::Digest;
use xts_mode::Xts128;

use nbdkit_core::backend::{Error, Result};
use nbdkit_core::errno::Errno;

fn bad(msg: impl Into<String>) -> Error {
    Error::msg(Errno::EINVAL, msg)
}

/// A hash named in a LUKS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    pub(super) fn from_name(name: &str) -> Result<Hash> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sha1" => Hash::Sha1,
            "sha256" => Hash::Sha256,
            "sha512" => Hash::Sha512,
            _ => return Err(bad(format!("luks: unsupported hash: {name}"))),
        })
    }

    /// Digest length in bytes.
    fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts),
            Hash::Sha256 => run::<sha2::Sha256>(parts),
            Hash::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash.
    pub(super) fn pbkdf2(self, pass: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(pass, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(pass, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(pass, salt, iterations, out),
        }
    }
}

/// The largest Argon2 memory cost accepted (KiB), cryptsetup's limit.
pub(super) const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;

/// Argon2i or Argon2id into `out`.
pub(super) fn argon2(
    id: bool,
    pass: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    lanes: u32,
    out: &mut [u8],
) -> Result<()> {
    if memory_kib > MAX_ARGON2_MEMORY_KIB {
        return Err(bad("luks: argon2 memory cost is too large"));
    }
    let params = argon2::Params::new(memory_kib, time, lanes, Some(out.len()))
        .map_err(|e| bad(format!("luks: argon2 parameters: {e}")))?;
    let alg = if id {
        argon2::Algorithm::Argon2id
    } else {
        argon2::Algorithm::Argon2i
    };
    argon2::Argon2::new(alg, argon2::Version::V0x13, params)
        .hash_password_into(pass, salt, out)
        .map_err(|e| bad(format!("luks: argon2: {e}")))
}

/// Undo the anti-forensic split: `src` holds `stripes` stripes of
/// `key_len` bytes.
pub(super) fn af_merge(src: &[u8], key_len: usize, stripes: usize, hash: Hash) -> Vec<u8> {
    let mut d = vec![0u8; key_len];
    for (i, stripe) in src.chunks_exact(key_len).take(stripes).enumerate() {
        for (a, b) in d.iter_mut().zip(stripe) {
            *a ^= b;
        }
        if i + 1 < stripes {
            diffuse(&mut d, hash);
        }
    }
    d
}

fn diffuse(d: &mut [u8], hash: Hash) {
    for (i, chunk) in d.chunks_mut(hash.len()).enumerate() {
        let h = hash.digest(&[&(i as u32).to_be_bytes(), chunk]);
        let n = chunk.len();
        chunk.copy_from_slice(&h[..n]);
    }
}

/// AES with any of its key sizes.
#[derive(Clone)]
enum AesAny {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl AesAny {
    fn new(key: &[u8]) -> Result<AesAny> {
        Ok(match key.len() {
            16 => AesAny::A128(Aes128::new_from_slice(key).map_err(|_| bad("luks: key"))?),
            24 => AesAny::A192(Aes192::new_from_slice(key).map_err(|_| bad("luks: key"))?),
            32 => AesAny::A256(Aes256::new_from_slice(key).map_err(|_| bad("luks: key"))?),
            n => {
                return Err(bad(format!(
                    "luks: unsupported AES key size: {} bits",
                    n * 8
                )))
            }
        })
    }

    fn encrypt(&self, b: &mut [u8; 16]) {
        let b = aes::Block::from_mut_slice(b);
        match self {
            AesAny::A128(c) => c.encrypt_block(b),
            AesAny::A192(c) => c.encrypt_block(b),
            AesAny::A256(c) => c.encrypt_block(b),
        }
    }

    fn decrypt(&self, b: &mut [u8; 16]) {
        let b = aes::Block::from_mut_slice(b);
        match self {
            AesAny::A128(c) => c.decrypt_block(b),
            AesAny::A192(c) => c.decrypt_block(b),
            AesAny::A256(c) => c.decrypt_block(b),
        }
    }
}

enum XtsAny {
    X128(Box<Xts128<Aes128>>),
    X256(Box<Xts128<Aes256>>),
}

/// How the IV of a sector is made.
enum IvGen {
    /// Low 32 bits of the sector number, little-endian.
    Plain,
    /// The 64-bit sector number, little-endian.
    Plain64,
    /// The sector number encrypted with a hash of the key.
    Essiv(Box<AesAny>),
}

impl IvGen {
    fn parse(s: &str, key: &[u8]) -> Result<IvGen> {
        Ok(match s {
            "plain" => IvGen::Plain,
            "plain64" => IvGen::Plain64,
            _ => match s.strip_prefix("essiv:") {
                Some(h) => {
                    let h = Hash::from_name(h)?;
                    IvGen::Essiv(Box::new(AesAny::new(&h.digest(&[key]))?))
                }
                None => return Err(bad(format!("luks: unsupported IV generator: {s}"))),
            },
        })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self {
            IvGen::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGen::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            IvGen::Essiv(c) => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                c.encrypt(&mut iv);
            }
        }
        iv
    }
}

enum Mode {
    Xts(XtsAny, IvGen),
    Cbc(Box<AesAny>, IvGen),
    Ecb(Box<AesAny>),
}

/// A LUKS sector cipher such as `aes` + `xts-plain64`.
pub(super) struct SectorCipher {
    mode: Mode,
}

impl SectorCipher {
    /// The cipher named by `cipher` and `mode` (`xts-plain64`,
    /// `cbc-essiv:sha256`, `ecb`, ...) with `key`.
    pub(super) fn new(cipher: &str, mode: &str, key: &[u8]) -> Result<SectorCipher> {
        if !cipher.eq_ignore_ascii_case("aes") {
            return Err(bad(format!("luks: unsupported cipher: {cipher}")));
        }
        let (chain, ivgen) = mode.split_once('-').unwrap_or((mode, ""));
        let mode = match chain {
            "xts" => {
                let (k1, k2) = key.split_at(key.len() / 2);
                let xts = match key.len() {
                    32 => XtsAny::X128(Box::new(Xts128::new(
                        Aes128::new_from_slice(k1).map_err(|_| bad("luks: key"))?,
                        Aes128::new_from_slice(k2).map_err(|_| bad("luks: key"))?,
                    ))),
                    64 => XtsAny::X256(Box::new(Xts128::new(
                        Aes256::new_from_slice(k1).map_err(|_| bad("luks: key"))?,
                        Aes256::new_from_slice(k2).map_err(|_| bad("luks: key"))?,
                    ))),
                    n => {
                        return Err(bad(format!(
                            "luks: unsupported XTS key size: {} bits",
                            n * 8
                        )))
                    }
                };
                Mode::Xts(xts, IvGen::parse(ivgen, key)?)
            }
            "cbc" => Mode::Cbc(Box::new(AesAny::new(key)?), IvGen::parse(ivgen, key)?),
            "ecb" => Mode::Ecb(Box::new(AesAny::new(key)?)),
            _ => return Err(bad(format!("luks: unsupported cipher mode: {mode}"))),
        };
        Ok(SectorCipher { mode })
    }

    /// Decrypt whole sectors of `sector_size` in place. IVs count 512-byte
    /// units, as dm-crypt does for LUKS: the first sector's IV is `first`,
    /// and each sector adds `sector_size / 512`.
    pub(super) fn decrypt(&self, buf: &mut [u8], sector_size: usize, first: u64) {
        self.run(buf, sector_size, first, false)
    }

    /// Encrypt whole sectors in place (IVs as for [`Self::decrypt`]).
    pub(super) fn encrypt(&self, buf: &mut [u8], sector_size: usize, first: u64) {
        self.run(buf, sector_size, first, true)
    }

    fn run(&self, buf: &mut [u8], sector_size: usize, first: u64, enc: bool) {
        let step = (sector_size / 512).max(1) as u64;
        for (i, sector) in buf.chunks_exact_mut(sector_size).enumerate() {
            let n = first.wrapping_add((i as u64).wrapping_mul(step));
            match &self.mode {
                Mode::Xts(x, ivg) => {
                    let tweak = ivg.iv(n);
                    match (x, enc) {
                        (XtsAny::X128(x), true) => x.encrypt_sector(sector, tweak),
                        (XtsAny::X128(x), false) => x.decrypt_sector(sector, tweak),
                        (XtsAny::X256(x), true) => x.encrypt_sector(sector, tweak),
                        (XtsAny::X256(x), false) => x.decrypt_sector(sector, tweak),
                    }
                }
                Mode::Cbc(c, ivg) => {
                    let mut prev = ivg.iv(n);
                    for b in sector.chunks_exact_mut(16) {
                        let b: &mut [u8; 16] = b.try_into().expect("16-byte chunk");
                        if enc {
                            for (x, p) in b.iter_mut().zip(&prev) {
                                *x ^= p;
                            }
                            c.encrypt(b);
                            prev = *b;
                        } else {
                            let ct = *b;
                            c.decrypt(b);
                            for (x, p) in b.iter_mut().zip(&prev) {
                                *x ^= p;
                            }
                            prev = ct;
                        }
                    }
                }
                Mode::Ecb(c) => {
                    for b in sector.chunks_exact_mut(16) {
                        let b: &mut [u8; 16] = b.try_into().expect("16-byte chunk");
                        if enc {
                            c.encrypt(b)
                        } else {
                            c.decrypt(b)
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pbkdf2_sha1_rfc6070_vector() {
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }

    #[test]
    fn every_mode_round_trips() {
        let key64 = [7u8; 64];
        let key32 = [9u8; 32];
        for (mode, key) in [
            ("xts-plain64", &key64[..]),
            ("xts-plain", &key32[..]),
            ("cbc-essiv:sha256", &key32[..]),
            ("cbc-plain64", &key32[..16]),
            ("ecb", &key32[..24]),
        ] {
            let c = SectorCipher::new("aes", mode, key).unwrap();
            let plain: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            c.encrypt(&mut buf, 512, 5);
            assert_ne!(buf, plain, "{mode}");
            c.decrypt(&mut buf, 512, 5);
            assert_eq!(buf, plain, "{mode}");
        }
    }

    #[test]
    fn af_merge_of_one_stripe_is_identity() {
        assert_eq!(af_merge(&[1, 2, 3], 3, 1, Hash::Sha256), [1, 2, 3]);
    }

    #[test]
    fn bad_cipher_names_are_errors() {
        assert!(SectorCipher::new("twofish", "xts-plain64", &[0; 64]).is_err());
        assert!(SectorCipher::new("aes", "ctr-plain", &[0; 32]).is_err());
        assert!(SectorCipher::new("aes", "xts-plain64", &[0; 48]).is_err());
    }
}
