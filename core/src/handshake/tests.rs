//! Whole negotiations driven in memory: a scripted client writes bytes, the
//! server answers, and the test reads the replies back with the wire
//! parsers (quinn's `Pair` harness is the model).

use super::*;
use crate::wire::handshake::OptionReplyHeader;

extern crate std;
use std::vec::Vec;

/// One end of an in-memory connection to a [`Server`].
struct Pair {
    server: Server,
    to_server: Vec<u8>,
    from_server: Vec<u8>,
    events: Vec<std::string::String>,
    export_size: u64,
}

impl Pair {
    fn new(config: Config) -> Self {
        let mut p = Pair {
            server: Server::new(config),
            to_server: Vec::new(),
            from_server: Vec::new(),
            events: Vec::new(),
            export_size: 1 << 20,
        };
        p.drive();
        p
    }

    /// Take everything the server queued.
    fn flush(&mut self) {
        let out = self.server.pending_output();
        self.from_server.extend_from_slice(out);
        let n = out.len();
        self.server.consume_output(n);
    }

    /// Run the server until it needs more input, answering its events as a
    /// runtime serving one export named "" (and "other") would.
    fn drive(&mut self) -> Option<Disconnect> {
        for _ in 0..1000 {
            self.flush();
            let input = core::mem::take(&mut self.to_server);
            let p = match self.server.handle_input(&input) {
                Ok(p) => p,
                Err(d) => {
                    self.flush();
                    return Some(d);
                }
            };
            let consumed = p.consumed;
            let idle = consumed == 0 && p.event.is_none();
            match p.event {
                None => {}
                Some(Event::ListExports(mut list)) => {
                    self.events.push("list".into());
                    list.add(&mut self.server, "", None).unwrap();
                    list.add(&mut self.server, "other", Some("desc")).unwrap();
                    assert_eq!(list.done(&mut self.server), Next::Options);
                }
                Some(Event::OpenExport {
                    name,
                    info_only,
                    reply,
                }) => {
                    self.events.push(std::format!("open {name:?} {info_only}"));
                    let next = if name.is_empty() || name == "other" {
                        reply.ready(
                            &mut self.server,
                            &ExportInfo {
                                name,
                                size: self.export_size,
                                eflags: FLAG_SEND_FLUSH | FLAG_SEND_WRITE_ZEROES,
                                description: Some("a disk"),
                                block_size: None,
                            },
                        )
                    } else {
                        reply.refuse(&mut self.server, OptionError::Unknown)
                    };
                    if let Next::Close(d) = next {
                        return Some(d);
                    }
                }
                Some(Event::StartTls(tls)) => {
                    self.events.push("starttls".into());
                    assert_eq!(tls.established(&mut self.server), Next::Options);
                }
            }
            self.to_server = input[consumed..].to_vec();
            if idle {
                self.flush();
                return None;
            }
        }
        panic!("server made no progress");
    }

    fn send(&mut self, b: &[u8]) -> Option<Disconnect> {
        self.to_server.extend_from_slice(b);
        self.drive()
    }

    fn option(&mut self, option: u32, payload: &[u8]) -> Option<Disconnect> {
        let mut h = [0u8; 16];
        OptionHeader {
            option,
            length: payload.len() as u32,
        }
        .emit(&mut h);
        self.to_server.extend_from_slice(&h);
        self.send(payload)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        assert!(self.from_server.len() >= n, "server sent too little");
        self.from_server.drain(..n).collect()
    }

    fn replies(&mut self) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !self.from_server.is_empty() {
            let h = OptionReplyHeader::parse(&self.take(20)).unwrap();
            let payload = self.take(h.length as usize);
            v.push((h.option, h.reply_type, payload));
        }
        v
    }

    fn start(config: Config, cflags: u32) -> Self {
        let mut p = Pair::new(config);
        let g = NewstyleGreeting::parse(&p.take(18)).unwrap();
        assert_eq!(g.flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(p.send(&cflags.to_be_bytes()), None);
        p
    }
}

fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

fn meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

const FIXED: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

#[test]
fn greeting_then_export_name_with_no_zeroes() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_EXPORT_NAME, b"");
    let r = p.take(10);
    assert_eq!(&r[..8], &(1u64 << 20).to_be_bytes());
    assert!(p.server.is_done());
    assert!(p.from_server.is_empty());
}

#[test]
fn export_name_without_no_zeroes_sends_124_zeroes() {
    let mut p = Pair::start(Config::default(), FLAG_C_FIXED_NEWSTYLE);
    p.option(OPT_EXPORT_NAME, b"");
    assert_eq!(p.take(134)[10..], [0u8; 124]);
}

#[test]
fn unknown_client_flags_disconnect() {
    let mut p = Pair::new(Config::default());
    p.take(18);
    assert_eq!(
        p.send(&0x4000_0001u32.to_be_bytes()),
        Some(Disconnect::BadClientFlags)
    );
    assert!(p.from_server.is_empty());
}

#[test]
fn masked_handshake_refuses_no_zeroes_from_client() {
    let config = Config {
        handshake_flags: FLAG_FIXED_NEWSTYLE,
        ..Config::default()
    };
    let mut p = Pair::new(config);
    assert_eq!(NewstyleGreeting::parse(&p.take(18)).unwrap().flags, 1);
    assert_eq!(
        p.send(&3u32.to_be_bytes()),
        Some(Disconnect::BadClientFlags)
    );
}

#[test]
fn oldstyle_greeting_after_open() {
    let mut p = Pair::new(Config {
        oldstyle: true,
        ..Config::default()
    });
    let g = OldstyleGreeting::parse(&p.take(152)).unwrap();
    assert_eq!(g.size, 1 << 20);
    assert_eq!(g.eflags & FLAG_HAS_FLAGS, FLAG_HAS_FLAGS);
    assert_eq!(g.eflags & FLAG_SEND_DF, 0);
    assert!(p.server.is_done());
}

#[test]
fn list_then_ack() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_LIST, b"");
    let r = p.replies();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].1, &r[0].2[..]), (REP_SERVER, &[0u8, 0, 0, 0][..]));
    assert_eq!(&r[1].2[..], b"\0\0\0\x05otherdesc");
    assert_eq!(r[2].1, REP_ACK);
    // A second LIST is refused, as nbdkit does.
    p.option(OPT_LIST, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
}

#[test]
fn list_with_payload_is_invalid() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_LIST, b"x");
    assert_eq!(p.replies(), [(OPT_LIST, REP_ERR_INVALID, Vec::new())]);
}

#[test]
fn go_sends_export_info_then_ack() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_GO, &go_payload("", &[INFO_NAME, INFO_DESCRIPTION, 77]));
    let r = p.replies();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].1, REP_INFO);
    assert_eq!(r[0].2.len(), 12);
    assert_eq!(&r[1].2[..], b"\0\x01");
    assert_eq!(&r[2].2[..], b"\0\x02a disk");
    assert_eq!(r[3].1, REP_ACK);
    assert!(p.server.is_done());
    assert_eq!(p.server.negotiated().base_allocation, None);
}

#[test]
fn info_then_go_report_the_same() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_INFO, &go_payload("", &[]));
    let info = p.replies();
    assert!(!p.server.is_done());
    p.option(OPT_GO, &go_payload("", &[]));
    let go = p.replies();
    assert_eq!(info[0].2, go[0].2);
}

#[test]
fn go_unknown_export_is_retryable() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_GO, &go_payload("nope", &[]));
    assert_eq!(p.replies(), [(OPT_GO, REP_ERR_UNKNOWN, Vec::new())]);
    p.option(OPT_GO, &go_payload("other", &[]));
    assert_eq!(p.replies().last().unwrap().1, REP_ACK);
}

#[test]
fn go_malformed_lengths_are_invalid() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_GO, b"\0\0\0\x64abc\0\0");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_GO, b"\0\0\0\0\0\x32");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_GO, b"\0\0");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_GO, &go_payload("", &[]));
    assert_eq!(p.replies().last().unwrap().1, REP_ACK);
}

#[test]
fn unknown_options_are_unsupported_and_negotiation_goes_on() {
    let mut p = Pair::start(Config::default(), FIXED);
    for opt in [0, OPT_PEEK_EXPORT, 12, 0x1234, 0xffff_ffff] {
        p.option(opt, b"junk");
        assert_eq!(p.replies(), [(opt, REP_ERR_UNSUP, Vec::new())]);
    }
}

#[test]
fn abort_is_acked_then_closes() {
    let mut p = Pair::start(Config::default(), FIXED);
    assert_eq!(p.option(OPT_ABORT, b""), Some(Disconnect::Abort));
    assert_eq!(p.replies(), [(OPT_ABORT, REP_ACK, Vec::new())]);
}

#[test]
fn starttls_refused_by_policy_when_off() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_STARTTLS, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_POLICY);
}

#[test]
fn tls_require_refuses_everything_but_starttls() {
    let config = Config {
        tls: TlsMode::Require,
        ..Config::default()
    };
    let mut p = Pair::start(config, FIXED);
    for opt in [OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, 0x99] {
        p.option(opt, b"");
        assert_eq!(p.replies(), [(opt, REP_ERR_TLS_REQD, Vec::new())]);
    }
    p.option(OPT_STARTTLS, b"");
    assert_eq!(p.replies(), [(OPT_STARTTLS, REP_ACK, Vec::new())]);
    assert!(p.server.is_tls());
    p.option(OPT_STARTTLS, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_GO, &go_payload("", &[]));
    assert_eq!(p.replies().last().unwrap().1, REP_ACK);
}

#[test]
fn tls_require_export_name_disconnects() {
    let config = Config {
        tls: TlsMode::Require,
        ..Config::default()
    };
    let mut p = Pair::start(config, FIXED);
    assert_eq!(
        p.option(OPT_EXPORT_NAME, b""),
        Some(Disconnect::TlsRequired)
    );
    assert!(p.from_server.is_empty());
}

#[test]
fn starttls_forgets_negotiated_state() {
    let config = Config {
        tls: TlsMode::On,
        ..Config::default()
    };
    let mut p = Pair::start(config, FIXED);
    p.option(OPT_STRUCTURED_REPLY, b"");
    p.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("", &["base:allocation"]),
    );
    p.option(OPT_STARTTLS, b"");
    p.replies();
    p.option(OPT_GO, &go_payload("", &[]));
    p.replies();
    let n = p.server.negotiated();
    assert!(!n.structured_replies);
    assert_eq!(n.base_allocation, None);
}

#[test]
fn structured_reply_once_and_df_flag() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(p.replies()[0].1, REP_ACK);
    p.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_GO, &go_payload("", &[]));
    let r = p.replies();
    let eflags = u16::from_be_bytes([r[0].2[10], r[0].2[11]]);
    assert_eq!(eflags & FLAG_SEND_DF, FLAG_SEND_DF);
}

#[test]
fn no_sr_refuses_structured_replies() {
    let config = Config {
        structured_replies: false,
        ..Config::default()
    };
    let mut p = Pair::start(config, FIXED);
    p.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_UNSUP);
}

#[test]
fn extended_headers_imply_structured_replies() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_EXTENDED_HEADERS, b"");
    assert_eq!(p.replies()[0].1, REP_ACK);
    p.option(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(p.replies()[0].1, REP_ERR_EXT_HEADER_REQD);
    p.option(OPT_GO, &go_payload("", &[]));
    p.replies();
    let n = p.server.negotiated();
    assert!(n.extended_headers && n.structured_replies);
}

#[test]
fn meta_contexts() {
    let mut p = Pair::start(Config::default(), FIXED);
    // Before structured replies: invalid.
    p.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("", &["base:allocation"]),
    );
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_STRUCTURED_REPLY, b"");
    p.replies();
    // LIST with no query lists base:allocation with id 0.
    p.option(OPT_LIST_META_CONTEXT, &meta_payload("", &[]));
    let r = p.replies();
    assert_eq!(r[0].1, REP_META_CONTEXT);
    assert_eq!(&r[0].2[..], b"\0\0\0\0base:allocation");
    // LIST "base:" is a wildcard.
    p.option(OPT_LIST_META_CONTEXT, &meta_payload("", &["base:"]));
    assert_eq!(p.replies().len(), 2);
    // Unknown namespaces are ignored: bare ACK.
    p.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("", &["qemu:dirty-bitmap:x", "base:"]),
    );
    assert_eq!(p.replies(), [(OPT_SET_META_CONTEXT, REP_ACK, Vec::new())]);
    // A query overrunning the payload is invalid.
    let mut bad = meta_payload("", &["base:allocation"]);
    bad[11] = 200;
    p.option(OPT_SET_META_CONTEXT, &bad);
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    // SET selects it for the export GO then uses.
    p.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("", &["base:allocation"]),
    );
    let r = p.replies();
    assert_eq!(&r[0].2[..4], &BASE_ALLOCATION_ID.to_be_bytes());
    p.option(OPT_GO, &go_payload("", &[]));
    p.replies();
    assert_eq!(
        p.server.negotiated().base_allocation,
        Some(BASE_ALLOCATION_ID)
    );
}

#[test]
fn meta_context_for_another_export_is_dropped_at_go() {
    let mut p = Pair::start(Config::default(), FIXED);
    p.option(OPT_STRUCTURED_REPLY, b"");
    p.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("other", &["base:allocation"]),
    );
    p.option(OPT_GO, &go_payload("", &[]));
    p.replies();
    assert_eq!(p.server.negotiated().base_allocation, None);
}

#[test]
fn non_fixed_client_may_only_use_export_name() {
    let mut p = Pair::start(Config::default(), 0);
    p.option(OPT_GO, &go_payload("", &[]));
    assert_eq!(p.replies()[0].1, REP_ERR_INVALID);
    p.option(OPT_EXPORT_NAME, b"");
    assert_eq!(p.take(134).len(), 134);
}

#[test]
fn bad_option_magic_disconnects() {
    let mut p = Pair::start(Config::default(), FIXED);
    assert_eq!(
        p.send(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Some(Disconnect::BadOptionMagic)
    );
}

#[test]
fn huge_option_length_disconnects_without_buffering() {
    let mut p = Pair::start(Config::default(), FIXED);
    let mut h = [0u8; 16];
    OptionHeader {
        option: OPT_GO,
        length: 0xffff_ffff,
    }
    .emit(&mut h);
    assert_eq!(p.send(&h), Some(Disconnect::OptionTooLong));
}

#[test]
fn long_option_is_skipped_and_refused() {
    let mut p = Pair::start(Config::default(), FIXED);
    let payload = std::vec![0u8; 100_000];
    p.option(OPT_SET_META_CONTEXT, &payload);
    assert_eq!(
        p.replies(),
        [(OPT_SET_META_CONTEXT, REP_ERR_TOO_BIG, Vec::new())]
    );
    p.option(0x4321, &payload);
    assert_eq!(p.replies()[0].1, REP_ERR_UNSUP);
    p.option(OPT_GO, &go_payload("", &[]));
    assert_eq!(p.replies().last().unwrap().1, REP_ACK);
}

#[test]
fn too_many_options_disconnect() {
    let mut p = Pair::start(Config::default(), FIXED);
    for _ in 0..32 {
        assert_eq!(p.option(OPT_INFO, &go_payload("", &[])), None);
    }
    assert_eq!(
        p.option(OPT_INFO, &go_payload("", &[])),
        Some(Disconnect::TooManyOptions)
    );
}

#[test]
fn options_fed_in_pieces_count_once() {
    let mut p = Pair::start(Config::default(), FIXED);
    let payload = go_payload("", &[]);
    let mut h = [0u8; 16];
    OptionHeader {
        option: OPT_INFO,
        length: payload.len() as u32,
    }
    .emit(&mut h);
    for _ in 0..30 {
        assert_eq!(p.send(&h), None);
        for b in &payload {
            assert_eq!(p.send(&[*b]), None);
        }
    }
    assert_eq!(p.replies().len(), 60);
}

#[test]
fn byte_at_a_time_input_makes_the_same_progress() {
    let mut whole = Pair::start(Config::default(), FIXED);
    let mut opt = Vec::new();
    let payload = go_payload("", &[INFO_NAME]);
    let mut h = [0u8; 16];
    OptionHeader {
        option: OPT_GO,
        length: payload.len() as u32,
    }
    .emit(&mut h);
    opt.extend_from_slice(&h);
    opt.extend_from_slice(&payload);
    whole.send(&opt);
    let mut split = Pair::start(Config::default(), FIXED);
    for b in &opt {
        split.send(&[*b]);
    }
    assert_eq!(whole.from_server, split.from_server);
    assert!(split.server.is_done());
}

/// Real clients' opening bytes, captured against nbdkit: every capture
/// negotiates to the transmission phase (or ends with ABORT) without the
/// server refusing anything.
#[test]
fn real_client_captures_negotiate() {
    let captures: &[(&str, &[u8])] = &[
        (
            "nbdinfo-json",
            include_bytes!("../../testdata/captures/nbdinfo-json-1.c2s"),
        ),
        (
            "nbdinfo-list",
            include_bytes!("../../testdata/captures/nbdinfo-list-1.c2s"),
        ),
        (
            "nbdinfo-map",
            include_bytes!("../../testdata/captures/nbdinfo-map-1.c2s"),
        ),
        (
            "qemuimg-info",
            include_bytes!("../../testdata/captures/qemuimg-info-1.c2s"),
        ),
        (
            "qemuio-rw",
            include_bytes!("../../testdata/captures/qemuio-rw-1.c2s"),
        ),
        (
            "nbdsh",
            include_bytes!("../../testdata/captures/nbdsh-commands-1.c2s"),
        ),
        (
            "nbdcopy",
            include_bytes!("../../testdata/captures/nbdcopy-read-1.c2s"),
        ),
    ];
    for (name, bytes) in captures {
        let mut p = Pair::new(Config::default());
        p.take(18);
        let end = p.send(bytes);
        assert!(
            p.server.is_done() || end == Some(Disconnect::Abort),
            "{name}: {end:?} {:?}",
            p.server
        );
        let replies_ok = p.events.iter().all(|e| !e.contains("nope"));
        assert!(replies_ok, "{name}");
    }
}

/// A server past the client flags, with `option` (and `payload`) as input.
fn server_with_option(option: u32, payload: &[u8]) -> (Server, Vec<u8>) {
    let mut s = Server::new(Config::default());
    let n = s.pending_output().len();
    s.consume_output(n);
    let flags = FIXED.to_be_bytes();
    assert_eq!(s.handle_input(&flags).unwrap().consumed, 4);
    let mut input = [0u8; OptionHeader::LEN].to_vec();
    OptionHeader {
        option,
        length: payload.len() as u32,
    }
    .emit(&mut input);
    input.extend_from_slice(payload);
    (s, input)
}

#[test]
fn unanswered_event_closes_the_connection() {
    let (mut s, input) = server_with_option(OPT_LIST, b"");
    let p = s.handle_input(&input).unwrap();
    let Some(Event::ListExports(token)) = p.event else {
        panic!("expected a list event");
    };
    // The token is dropped without an answer: feeding more input ends
    // the connection instead of waiting forever.
    drop(token);
    assert_eq!(s.handle_input(&[]).unwrap_err(), Disconnect::Protocol);
}

#[test]
fn list_entries_keep_room_for_the_final_ack() {
    let (mut s, input) = server_with_option(OPT_LIST, b"");
    let p = s.handle_input(&input).unwrap();
    let Some(Event::ListExports(mut list)) = p.event else {
        panic!("expected a list event");
    };
    let name = "n".repeat(MAX_STRING);
    let mut added = 0;
    while list.add(&mut s, &name, None).is_ok() {
        added += 1;
        assert!(added < 10, "the output buffer never filled");
    }
    // Full: the ACK still fits, and every entry is intact.
    assert_eq!(list.done(&mut s), Next::Options);
    let out = s.pending_output();
    let entry = OptionReplyHeader::LEN + 4 + MAX_STRING;
    assert_eq!(out.len(), added * entry + OptionReplyHeader::LEN);
    let ack = OptionReplyHeader::parse(&out[added * entry..]).unwrap();
    assert_eq!(ack.reply_type, REP_ACK);
}

#[test]
fn a_token_answers_only_its_own_question() {
    // A token from another server's question is refused with a clean
    // disconnect.
    let (mut a, input_a) = server_with_option(OPT_LIST, b"");
    let (mut b, input_b) = server_with_option(OPT_GO, &go_payload("", &[]));
    let Some(Event::ListExports(list)) = a.handle_input(&input_a).unwrap().event else {
        panic!("expected a list event");
    };
    let Some(Event::OpenExport { reply, .. }) = b.handle_input(&input_b).unwrap().event else {
        panic!("expected an open event");
    };
    assert_eq!(list.done(&mut b), Next::Close(Disconnect::Protocol));
    assert_eq!(
        reply.refuse(&mut a, OptionError::Unknown),
        Next::Close(Disconnect::Protocol)
    );
}

#[test]
fn refusing_export_name_closes_and_go_continues() {
    let (mut s, input) = server_with_option(OPT_EXPORT_NAME, b"x");
    let Some(Event::OpenExport { reply, .. }) = s.handle_input(&input).unwrap().event else {
        panic!("expected an open event");
    };
    assert_eq!(
        reply.refuse(&mut s, OptionError::Unknown),
        Next::Close(Disconnect::ExportNameFailed)
    );
    let (mut s, input) = server_with_option(OPT_GO, &go_payload("x", &[]));
    let Some(Event::OpenExport { reply, .. }) = s.handle_input(&input).unwrap().event else {
        panic!("expected an open event");
    };
    assert_eq!(reply.refuse(&mut s, OptionError::Unknown), Next::Options);
    let r = OptionReplyHeader::parse(s.pending_output()).unwrap();
    assert_eq!((r.option, r.reply_type), (OPT_GO, REP_ERR_UNKNOWN));
}
