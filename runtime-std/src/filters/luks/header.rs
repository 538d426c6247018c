//! LUKS1 and LUKS2 headers: parse them, try the passphrase on each active
//! key slot and recover the master key.
//!
//! Every size taken from a header is checked against a bound before
//! anything is allocated or read.

use base64::Engine;
use serde_json::Value;

use nbdkit_core::backend::{Error, Result};
use nbdkit_core::errno::Errno;

use super::crypto::{af_merge, argon2, Hash, SectorCipher};

const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// LUKS1 header length.
const LUKS1_LEN: usize = 592;
/// LUKS2 binary header length.
const LUKS2_BIN_LEN: usize = 4096;
/// Largest LUKS2 header (binary + JSON) cryptsetup makes.
const LUKS2_MAX_HDR: u64 = 4 << 20;
/// Largest master key accepted, in bytes.
const MAX_KEY: usize = 128;
/// Most anti-forensic stripes accepted (cryptsetup uses 4000).
const MAX_STRIPES: usize = 65536;
/// Key slots are encrypted in 512-byte sectors.
const KEYSLOT_SECTOR: usize = 512;

fn bad(msg: impl Into<String>) -> Error {
    Error::msg(Errno::EINVAL, msg)
}

/// How the data segment is encrypted, once unlocked.
pub(super) struct Volume {
    /// Where the encrypted data starts on the layer below.
    pub(super) offset: u64,
    /// Its length, if fixed (else up to the end of the layer below).
    pub(super) size: Option<u64>,
    /// Encryption sector size (512 for LUKS1, 512..4096 for LUKS2).
    pub(super) sector_size: usize,
    /// Added to sector numbers for the IV.
    pub(super) iv_tweak: u64,
    pub(super) cipher: SectorCipher,
}

enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
    },
    Argon2 {
        id: bool,
        time: u32,
        memory: u32,
        cpus: u32,
    },
}

struct Keyslot {
    kdf: Kdf,
    salt: Vec<u8>,
    key_size: usize,
    area_offset: u64,
    stripes: usize,
    af_hash: Hash,
    cipher: String,
    mode: String,
}

/// The master key check (LUKS1 mk_digest, LUKS2 digest).
struct Check {
    hash: Hash,
    iterations: u32,
    salt: Vec<u8>,
    digest: Vec<u8>,
}

/// What is known from the header before the passphrase is tried.
pub(super) struct Header {
    key_size: usize,
    keyslots: Vec<Keyslot>,
    check: Check,
    cipher: String,
    mode: String,
    offset: u64,
    size: Option<u64>,
    sector_size: usize,
    iv_tweak: u64,
}

/// Read `len` bytes at `offset` of the layer below.
pub(super) type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> Result<()> + 'a;

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Read and parse the header at the start of the layer below.
    pub(super) fn read(read: &ReadAt<'_>, disk_size: u64) -> Result<Header> {
        if disk_size < LUKS2_BIN_LEN as u64 {
            return Err(bad("disk is too small to be LUKS-encrypted"));
        }
        let mut bin = vec![0u8; LUKS2_BIN_LEN];
        read(&mut bin, 0)?;
        if &bin[..6] != MAGIC {
            return Err(bad("luks: this disk does not contain a LUKS header"));
        }
        match u16::from_be_bytes([bin[6], bin[7]]) {
            1 => Header::luks1(&bin[..LUKS1_LEN]),
            2 => Header::luks2(&bin, read, disk_size),
            v => Err(bad(format!(
                "luks: this disk does not contain a LUKS version 1 or 2 header (version {v})"
            ))),
        }
    }

    fn luks1(h: &[u8]) -> Result<Header> {
        let cipher = cstr(&h[8..40]);
        let mode = cstr(&h[40..72]);
        let hash = Hash::from_name(&cstr(&h[72..104]))?;
        let payload = u64::from(be32(h, 104));
        let key_size = be32(h, 108) as usize;
        if key_size == 0 || key_size > MAX_KEY {
            return Err(bad(format!("luks: bad key size: {key_size}")));
        }
        let check = Check {
            hash,
            iterations: be32(h, 164),
            salt: h[132..164].to_vec(),
            digest: h[112..132].to_vec(),
        };
        let mut keyslots = Vec::new();
        for i in 0..8 {
            let s = &h[208 + i * 48..208 + (i + 1) * 48];
            if be32(s, 0) != 0x00AC_71F3 {
                continue;
            }
            keyslots.push(Keyslot {
                kdf: Kdf::Pbkdf2 {
                    hash,
                    iterations: be32(s, 4),
                },
                salt: s[8..40].to_vec(),
                key_size,
                area_offset: u64::from(be32(s, 40)) * 512,
                stripes: be32(s, 44) as usize,
                af_hash: hash,
                cipher: cipher.clone(),
                mode: mode.clone(),
            });
        }
        Ok(Header {
            key_size,
            keyslots,
            check,
            cipher,
            mode,
            offset: payload * 512,
            size: None,
            sector_size: 512,
            iv_tweak: 0,
        })
    }

    fn luks2(bin: &[u8], read: &ReadAt<'_>, disk_size: u64) -> Result<Header> {
        let hdr_size = be64(bin, 8);
        if !(16384..=LUKS2_MAX_HDR).contains(&hdr_size) || hdr_size > disk_size {
            return Err(bad(format!("luks: bad LUKS2 header size: {hdr_size}")));
        }
        let mut all = vec![0u8; hdr_size as usize];
        read(&mut all, 0)?;
        let csum_alg = cstr(&all[72..104]);
        if csum_alg == "sha256" {
            let mut zeroed = all.clone();
            zeroed[448..448 + 64].fill(0);
            let sum = <sha2::Sha256 as sha2::Digest>::digest(&zeroed);
            if sum.as_slice() != &all[448..448 + 32] {
                return Err(bad("luks: LUKS2 header checksum does not match"));
            }
        }
        let json = &all[LUKS2_BIN_LEN..];
        let end = json.iter().position(|&c| c == 0).unwrap_or(json.len());
        let v: Value = serde_json::from_slice(&json[..end])
            .map_err(|e| bad(format!("luks: LUKS2 JSON metadata: {e}")))?;
        parse_luks2_json(&v)
    }

    /// Try `pass` on each key slot; the master key's sector cipher on
    /// success.
    pub(super) fn unlock(&self, pass: &[u8], read: &ReadAt<'_>, disk_size: u64) -> Result<Volume> {
        if self.keyslots.is_empty() {
            return Err(bad("luks: no active key slots"));
        }
        for (i, ks) in self.keyslots.iter().enumerate() {
            match self.try_slot(ks, pass, read, disk_size)? {
                Some(key) => {
                    return Ok(Volume {
                        offset: self.offset,
                        size: self.size,
                        sector_size: self.sector_size,
                        iv_tweak: self.iv_tweak,
                        cipher: SectorCipher::new(&self.cipher, &self.mode, &key)?,
                    })
                }
                None => crate::log::debug(
                    None,
                    format_args!("luks: passphrase does not match key slot {i}"),
                ),
            }
        }
        Err(Error::msg(
            Errno::EPERM,
            "LUKS passphrase is not correct, no key slot could be unlocked",
        ))
    }

    fn try_slot(
        &self,
        ks: &Keyslot,
        pass: &[u8],
        read: &ReadAt<'_>,
        disk_size: u64,
    ) -> Result<Option<Vec<u8>>> {
        if ks.key_size != self.key_size || ks.stripes == 0 || ks.stripes > MAX_STRIPES {
            return Err(bad("luks: bad key slot geometry"));
        }
        let mut slot_key = vec![0u8; ks.key_size];
        match ks.kdf {
            Kdf::Pbkdf2 { hash, iterations } => {
                hash.pbkdf2(pass, &ks.salt, iterations, &mut slot_key)
            }
            Kdf::Argon2 {
                id,
                time,
                memory,
                cpus,
            } => argon2(id, pass, &ks.salt, time, memory, cpus, &mut slot_key)?,
        }
        let len = (ks.key_size * ks.stripes).div_ceil(KEYSLOT_SECTOR) * KEYSLOT_SECTOR;
        if ks.area_offset.saturating_add(len as u64) > disk_size {
            return Err(bad("luks: key slot lies beyond the end of the disk"));
        }
        let mut material = vec![0u8; len];
        read(&mut material, ks.area_offset)?;
        SectorCipher::new(&ks.cipher, &ks.mode, &slot_key)?.decrypt(
            &mut material,
            KEYSLOT_SECTOR,
            0,
        );
        let key = af_merge(&material, ks.key_size, ks.stripes, ks.af_hash);
        let mut check = vec![0u8; self.check.digest.len()];
        self.check
            .hash
            .pbkdf2(&key, &self.check.salt, self.check.iterations, &mut check);
        Ok((check == self.check.digest).then_some(key))
    }
}

fn field<'a>(v: &'a Value, k: &str) -> Result<&'a Value> {
    v.get(k)
        .ok_or_else(|| bad(format!("luks: LUKS2 metadata: missing \"{k}\"")))
}

fn string<'a>(v: &'a Value, k: &str) -> Result<&'a str> {
    field(v, k)?
        .as_str()
        .ok_or_else(|| bad(format!("luks: LUKS2 metadata: \"{k}\" is not a string")))
}

/// A number given as a JSON number or a decimal string (LUKS2 writes
/// 64-bit values as strings).
fn number(v: &Value, k: &str) -> Result<u64> {
    let f = field(v, k)?;
    f.as_u64()
        .or_else(|| f.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| bad(format!("luks: LUKS2 metadata: \"{k}\" is not a number")))
}

fn number32(v: &Value, k: &str) -> Result<u32> {
    u32::try_from(number(v, k)?)
        .map_err(|_| bad(format!("luks: LUKS2 metadata: \"{k}\" is out of range")))
}

fn base64(v: &Value, k: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(string(v, k)?)
        .map_err(|_| bad(format!("luks: LUKS2 metadata: \"{k}\" is not base64")))
}

/// Split `aes-xts-plain64` into `aes` and `xts-plain64`.
fn split_cipher(s: &str) -> Result<(String, String)> {
    s.split_once('-')
        .map(|(c, m)| (c.to_string(), m.to_string()))
        .ok_or_else(|| bad(format!("luks: unsupported encryption: {s}")))
}

fn parse_luks2_json(v: &Value) -> Result<Header> {
    // The first crypt segment and the digest that covers it.
    let segments = field(v, "segments")?
        .as_object()
        .ok_or_else(|| bad("luks: LUKS2 metadata: bad segments"))?;
    let (seg_id, seg) = segments
        .iter()
        .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("crypt"))
        .min_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX))
        .ok_or_else(|| bad("luks: LUKS2 metadata: no crypt segment"))?;
    let (cipher, mode) = split_cipher(string(seg, "encryption")?)?;
    let sector_size = number(seg, "sector_size")? as usize;
    if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(bad(format!("luks: bad sector size: {sector_size}")));
    }
    let size = match string(seg, "size") {
        Ok("dynamic") => None,
        _ => Some(number(seg, "size")?),
    };
    let digests = field(v, "digests")?
        .as_object()
        .ok_or_else(|| bad("luks: LUKS2 metadata: bad digests"))?;
    let covers = |d: &Value, what: &str, id: &str| {
        d.get(what)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
    };
    let digest = digests
        .values()
        .find(|d| covers(d, "segments", seg_id))
        .ok_or_else(|| bad("luks: LUKS2 metadata: no digest for the segment"))?;
    if string(digest, "type")? != "pbkdf2" {
        return Err(bad("luks: unsupported LUKS2 digest type"));
    }
    let check = Check {
        hash: Hash::from_name(string(digest, "hash")?)?,
        iterations: number32(digest, "iterations")?,
        salt: base64(digest, "salt")?,
        digest: base64(digest, "digest")?,
    };
    if check.digest.is_empty() || check.digest.len() > 64 {
        return Err(bad("luks: LUKS2 metadata: bad digest length"));
    }
    let mut key_size = 0;
    let mut keyslots = Vec::new();
    let slots = field(v, "keyslots")?
        .as_object()
        .ok_or_else(|| bad("luks: LUKS2 metadata: bad keyslots"))?;
    let mut ids: Vec<_> = slots.keys().collect();
    ids.sort_by_key(|k| k.parse::<u64>().unwrap_or(u64::MAX));
    for id in ids {
        let ks = &slots[id];
        if ks.get("type").and_then(Value::as_str) != Some("luks2")
            || !covers(digest, "keyslots", id)
        {
            continue;
        }
        let ksize = number(ks, "key_size")? as usize;
        if ksize == 0 || ksize > MAX_KEY {
            return Err(bad(format!("luks: bad key size: {ksize}")));
        }
        key_size = ksize;
        let af = field(ks, "af")?;
        if string(af, "type")? != "luks1" {
            return Err(bad("luks: unsupported LUKS2 anti-forensic splitter"));
        }
        let area = field(ks, "area")?;
        if string(area, "type")? != "raw" {
            return Err(bad("luks: unsupported LUKS2 key slot area"));
        }
        let (acipher, amode) = split_cipher(string(area, "encryption")?)?;
        if number(area, "key_size")? as usize != ksize {
            return Err(bad("luks: LUKS2 key slot area key size differs"));
        }
        let kdf = field(ks, "kdf")?;
        let kdf_v = match string(kdf, "type")? {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: Hash::from_name(string(kdf, "hash")?)?,
                iterations: number32(kdf, "iterations")?,
            },
            t @ ("argon2i" | "argon2id") => Kdf::Argon2 {
                id: t == "argon2id",
                time: number32(kdf, "time")?,
                memory: number32(kdf, "memory")?,
                cpus: number32(kdf, "cpus")?,
            },
            t => return Err(bad(format!("luks: unsupported key derivation: {t}"))),
        };
        keyslots.push(Keyslot {
            kdf: kdf_v,
            salt: base64(kdf, "salt")?,
            key_size: ksize,
            area_offset: number(area, "offset")?,
            stripes: number(af, "stripes")? as usize,
            af_hash: Hash::from_name(string(af, "hash")?)?,
            cipher: acipher,
            mode: amode,
        });
    }
    Ok(Header {
        key_size,
        keyslots,
        check,
        cipher,
        mode,
        offset: number(seg, "offset")?,
        size,
        sector_size,
        iv_tweak: number(seg, "iv_tweak").unwrap_or(0),
    })
}

#[cfg(test)]
mod test {
    use super::*;

    fn read_from(img: &[u8]) -> impl Fn(&mut [u8], u64) -> Result<()> + '_ {
        move |buf, off| {
            let off = off as usize;
            if off + buf.len() > img.len() {
                return Err(bad("past end"));
            }
            buf.copy_from_slice(&img[off..off + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn not_luks_is_a_clear_error() {
        let img = vec![0u8; 8192];
        let e = Header::read(&read_from(&img), 8192).err().unwrap();
        assert_eq!(
            e.to_string(),
            "luks: this disk does not contain a LUKS header"
        );
    }

    #[test]
    fn huge_luks2_header_size_is_refused() {
        let mut img = vec![0u8; 8192];
        img[..6].copy_from_slice(MAGIC);
        img[7] = 2;
        img[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        let e = Header::read(&read_from(&img), 8192).err().unwrap();
        assert!(e.to_string().contains("bad LUKS2 header size"), "{e}");
    }

    #[test]
    fn luks1_with_huge_stripes_is_refused() {
        let mut img = vec![0u8; 8192];
        img[..6].copy_from_slice(MAGIC);
        img[7] = 1;
        img[8..11].copy_from_slice(b"aes");
        img[40..51].copy_from_slice(b"xts-plain64");
        img[72..78].copy_from_slice(b"sha256");
        img[108..112].copy_from_slice(&64u32.to_be_bytes());
        img[208..212].copy_from_slice(&0x00AC_71F3u32.to_be_bytes());
        img[212..216].copy_from_slice(&1u32.to_be_bytes());
        img[252..256].copy_from_slice(&u32::MAX.to_be_bytes());
        let h = Header::read(&read_from(&img), 8192).unwrap();
        let e = h.unlock(b"x", &read_from(&img), 8192).err().unwrap();
        assert_eq!(e.to_string(), "luks: bad key slot geometry");
    }

    #[test]
    fn bad_luks2_json_is_a_clear_error() {
        let v: Value = serde_json::from_str(r#"{"segments": {}}"#).unwrap();
        assert_eq!(
            parse_luks2_json(&v).err().unwrap().to_string(),
            "luks: LUKS2 metadata: no crypt segment"
        );
    }
}
