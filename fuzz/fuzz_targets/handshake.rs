//! Drive the server handshake with arbitrary client bytes, fed in pieces,
//! answering every event the way a runtime would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdkit_core::handshake::{Config, Event, ExportInfo, Server, TlsMode};

fuzz_target!(|data: &[u8]| {
    let (mode, data) = data.split_first().unwrap_or((&0, &[]));
    let config = Config {
        tls: match mode % 3 {
            0 => TlsMode::Off,
            1 => TlsMode::On,
            _ => TlsMode::Require,
        },
        oldstyle: mode & 0x80 != 0,
        ..Config::default()
    };
    let mut s = Server::new(config);
    let mut out = [0u8; 4096];
    let mut input: Vec<u8> = Vec::new();
    let mut rest = data;
    for _ in 0..10_000 {
        while s.poll_transmit(&mut out) > 0 {}
        let p = match s.handle_input(&input) {
            Ok(p) => p,
            Err(_) => return,
        };
        let consumed = p.consumed;
        match p.event {
            Some(Event::ListExports) => {
                let _ = s.list_export("", None);
                let _ = s.list_done(true);
            }
            Some(Event::OpenExport { name, .. }) => {
                if name.len() % 2 == 0 {
                    let _ = s.export_ready(&ExportInfo {
                        name,
                        size: 1 << 20,
                        eflags: 0xffff,
                        description: Some("d"),
                        block_size: Some((1, 4096, 1 << 25)),
                    });
                } else {
                    let _ = s.export_failed();
                }
            }
            Some(Event::StartTls) => {
                let _ = s.tls_established();
            }
            None if consumed == 0 => {
                if s.is_done() || rest.is_empty() {
                    return;
                }
                let n = (rest[0] as usize % 64 + 1).min(rest.len());
                input.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            None => {}
        }
        input.drain(..consumed.min(input.len()));
    }
});
