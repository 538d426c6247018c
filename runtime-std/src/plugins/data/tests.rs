//! Unit tests of the data plugin: syntax, optimizer, evaluation.

use super::*;

struct NoVars;
impl Vars for NoVars {
    fn get(&self, name: &str) -> Option<String> {
        (name == "pat").then(|| "0x41 0x42".into())
    }
}

/// Evaluate and flatten to bytes.
fn eval(expr: &str) -> Result<Vec<u8>> {
    let (img, size) = evaluate(expr, &NoVars, MAX_SIZE)?;
    let mut out = vec![0u8; size as usize];
    img.read(&mut out, 0);
    Ok(out)
}

fn msg(expr: &str) -> String {
    eval(expr).unwrap_err().message.unwrap()
}

#[test]
fn bytes_and_offsets() {
    let mut want = vec![1, 2, 3];
    want.resize(0x1fe, 0);
    want.extend([0x55, 0xaa]);
    assert_eq!(eval("1 2 3 @0x1fe 0x55 0xaa").unwrap(), want);
    assert_eq!(eval("010 0x10 10").unwrap(), [8, 0x10, 10]);
    assert_eq!(
        eval("0xff*3 @+2 1 @-4 2").unwrap(),
        [0xff, 0xff, 2, 0, 0, 1]
    );
    assert_eq!(eval("1 @10 @5").unwrap().len(), 10);
    assert_eq!(eval("1 @^8").unwrap().len(), 8);
}

#[test]
fn groups_overwrite_with_their_zeroes() {
    assert_eq!(eval("0xff*4 @0 ( @2 )").unwrap(), [0, 0, 0xff, 0xff]);
    assert_eq!(
        eval("( 1 @+5 )*2").unwrap(),
        [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    );
}

#[test]
fn repeats_slices_names_vars() {
    assert_eq!(eval("( 0x55 0xAA ) * 4").unwrap(), b"\x55\xaa".repeat(4));
    assert_eq!(eval("( 1 2 3 4 5 6 7 8 )[2:5]").unwrap(), [3, 4, 5]);
    assert_eq!(eval("\"abc\"*2[1:]").unwrap(), b"bcabc");
    assert_eq!(
        eval("( 9 8 ) -> \\pair\n \\pair \\pair \\pair").unwrap(),
        b"\x09\x08".repeat(3)
    );
    assert_eq!(eval("$pat*2").unwrap(), b"ABAB");
    assert_eq!(eval("# a comment\n 7 8").unwrap(), [7, 8]);
    assert_eq!(eval("( 1 2 3 )[5:5]").unwrap(), b"");
}

#[test]
fn strings_and_words() {
    assert_eq!(
        eval("\"hello\" @^16 le32:0x01020304 be16:0x0506").unwrap(),
        b"hello\0\0\0\0\0\0\0\0\0\0\0\x04\x03\x02\x01\x05\x06"
    );
    assert_eq!(eval("\"a\\x41\\n\\\"\"").unwrap(), b"aA\n\"");
    assert_eq!(eval("be64:1").unwrap(), [0, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn errors_match_nbdkit() {
    assert_eq!(msg("( 1 2"), "unmatched '(' in data string");
    assert_eq!(msg("1 )"), "unmatched ')' in data string");
    assert_eq!(
        msg("0x100"),
        "data parameter BYTE must be in the range 0..255"
    );
    assert_eq!(
        msg("1 2 3 @-5 4"),
        "data parameter @-5 must not be larger than the current offset 3"
    );
    assert_eq!(
        msg("( 1 2 3 )[:10]"),
        "[N:M] does not describe a valid slice"
    );
    assert_eq!(
        msg("le16:0x12345"),
        "data: could not parse number: \"0x12345\": Numerical result out of range"
    );
    assert_eq!(msg("le16:-1"), "data: negative numbers are not allowed");
    assert_eq!(msg("\\x"), "\\x not defined");
    assert_eq!(msg("$nope"), "$nope: variable not found");
    assert_eq!(
        msg("@3 * 2"),
        "*N cannot be applied to this type of expression"
    );
    assert_eq!(msg("1 ?"), "data parameter: parsing error at offset 2");
    assert_eq!(msg("\"abc"), "data parameter: unterminated string");
}

#[test]
fn huge_expressions_stay_small() {
    // A fill is cheap however long.
    let (_, size) = evaluate("0x55*1000000000000", &NoVars, 4096).unwrap();
    assert_eq!(size, 1_000_000_000_000);
    // A group repeated is kept as a pattern, however far it reaches.
    let (img, size) = evaluate("( 1 2 )*1000000000000", &NoVars, MAX_SIZE).unwrap();
    assert_eq!(size, 2_000_000_000_000);
    assert_eq!(img.chunk_count(), 1);
    let mut b = [0u8; 4];
    img.read(&mut b, 1_999_999_999_998);
    assert_eq!(b, [1, 2, 0, 0]);
    // Large blocks repeated, and repeated again.
    let e = "( ( \"abc\" @^1048576 )*4096 )*4 @0x7ffffffffffffffe 9";
    let (img, size) = evaluate(e, &NoVars, MAX_SIZE).unwrap();
    assert_eq!(size, i64::MAX as u64);
    img.read(&mut b, 3 << 32);
    assert_eq!(&b[..3], b"abc");
    assert!(img.chunk_count() < 10, "{}", img.chunk_count());
    // Doubling names cost steps, and are refused.
    let mut e = String::from("( @1 ) -> \\a0 ");
    for i in 1..64 {
        e += &format!("( \\a{} \\a{} ) -> \\a{} ", i - 1, i - 1, i);
    }
    e += "\\a63";
    assert!(evaluate(&e, &NoVars, MAX_SIZE).is_err());
    // Offsets past 2^63-1 are refused.
    assert!(evaluate("@0x7fffffffffffffff 1", &NoVars, MAX_SIZE).is_err());
}

#[test]
fn deep_nesting_is_refused() {
    let e = "(".repeat(5000);
    assert!(evaluate(&e, &NoVars, MAX_SIZE).is_err());
}
