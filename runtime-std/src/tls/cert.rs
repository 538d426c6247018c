//! The subject, issuer, serial number and validity of a DER X.509
//! certificate, for `-D nbdkit.tls.session=1` (a small DER reader: the
//! certificate has already been checked by rustls, or is only described).

/// One DER element: its tag and contents; the rest of the input.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;

/// The elements of a SEQUENCE or SET's contents.
fn elements(mut der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut v = Vec::new();
    while !der.is_empty() {
        let (tag, body, rest) = element(der)?;
        v.push((tag, body));
        der = rest;
    }
    Some(v)
}

/// A dotted OID.
fn oid(der: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in der.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first);
                parts.push(value - first * 40);
            } else {
                parts.push(value);
            }
            value = 0;
        } else if i + 1 == der.len() {
            parts.push(value);
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// OpenSSL's short name of an attribute type, or its dotted OID.
fn attribute_name(der: &[u8]) -> String {
    let o = oid(der);
    let short = match o.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return o,
    };
    short.to_string()
}

/// A Name, most specific attribute first (as in RFC 4514).
fn name(der: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    for (tag, rdn) in elements(der)? {
        if tag != SET {
            return None;
        }
        for (tag, atv) in elements(rdn)? {
            let [(OID, t), (_, value)] = elements(atv)?[..] else {
                return None;
            };
            if tag != SEQUENCE {
                return None;
            }
            let v = String::from_utf8_lossy(value);
            parts.push(format!("{}={v}", attribute_name(t)));
        }
    }
    parts.reverse();
    Some(parts.join(","))
}

/// A UTCTime or GeneralizedTime as OpenSSL prints it
/// (`Dec  3 23:22:00 2026 GMT`).
fn time(tag: u8, der: &[u8]) -> Option<String> {
    let s = core::str::from_utf8(der).ok()?;
    let (year, rest) = match tag {
        UTC_TIME => {
            let y: u32 = s.get(..2)?.parse().ok()?;
            (if y < 50 { 2000 + y } else { 1900 + y }, s.get(2..)?)
        }
        GENERALIZED_TIME => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let month = field(0)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    Some(format!(
        "{m} {:2} {:02}:{:02}:{:02} {year} GMT",
        field(2)?,
        field(4)?,
        field(6)?,
        field(8).unwrap_or(0)
    ))
}

/// `subject ..., issuer ..., serial 0x..., activated ..., expires ...`.
pub(super) fn describe(der: &[u8]) -> String {
    parse(der).unwrap_or_else(|| "unparsable certificate".into())
}

fn parse(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut fields = elements(tbs)?.into_iter().peekable();
    if fields.peek()?.0 == VERSION {
        fields.next();
    }
    let (INTEGER, serial) = fields.next()? else {
        return None;
    };
    let _signature = fields.next()?;
    let (SEQUENCE, issuer) = fields.next()? else {
        return None;
    };
    let (SEQUENCE, validity) = fields.next()? else {
        return None;
    };
    let (SEQUENCE, subject) = fields.next()? else {
        return None;
    };
    let [(t1, not_before), (t2, not_after)] = elements(validity)?[..] else {
        return None;
    };
    // Without the sign byte DER adds to keep an integer positive.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    let serial: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "subject `{}', issuer `{}', serial 0x{serial}, activated `{}', expires `{}'",
        name(subject)?,
        name(issuer)?,
        time(t1, not_before)?,
        time(t2, not_after)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_unparsable() {
        assert_eq!(describe(b""), "unparsable certificate");
        assert_eq!(describe(&[0x30, 0x05, 1, 2]), "unparsable certificate");
    }

    #[test]
    fn oids_and_times() {
        assert_eq!(oid(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(
            oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(
            time(UTC_TIME, b"261203232200Z").unwrap(),
            "Dec  3 23:22:00 2026 GMT"
        );
        assert_eq!(
            time(GENERALIZED_TIME, b"20510101000000Z").unwrap(),
            "Jan  1 00:00:00 2051 GMT"
        );
    }
}
