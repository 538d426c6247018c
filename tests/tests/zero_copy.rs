//! READ replies sent without copying: `sendfile(2)` from the file plugin's
//! descriptor, the memory plugin's pages spliced into the socket. The bytes
//! must be right (whatever the alignment, holes, zeroed ranges, replies
//! simple or structured), reads racing writes must see old or new data,
//! and a client that leaves with replies unread must not hurt the server
//! or the next client. Large WRITE payloads spliced from the socket into
//! the file plugin's file must land whole and in place.

use nbdkit_tests::{proto, run_python, skip_unless, write_random_file, Prng, Server, TempDir};

const MIB: usize = 1 << 20;

fn run_reads(srv: &Server, granule: &str) {
    let out = run_python("zero_copy_reads.py", [srv.uri().as_str(), granule]);
    assert!(
        out.success() && out.stdout.lines().any(|l| l == "ok"),
        "zero_copy_reads.py failed: {}\n--- server stderr ---\n{}",
        out.describe(),
        srv.stderr()
    );
}

#[test]
fn memory_reads_are_right_and_race_writes_page_by_page() {
    skip_unless!("python3-nbd");
    let srv = Server::start(["memory", "16M"]);
    run_reads(&srv, "page");
}

#[test]
fn file_reads_are_right_and_race_writes_byte_by_byte() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let disk = dir.join("disk");
    write_random_file(&disk, 16 * MIB, 3);
    let srv = Server::start(["file", disk.to_str().unwrap()]);
    run_reads(&srv, "byte");
}

/// Send `n` READs of `len` bytes at `offset` without reading a reply.
fn unread_reads(c: &mut nbdkit_tests::RawClient, n: u64, offset: u64, len: u32) {
    for i in 0..n {
        // A reader that never reads: the server's writes block once the
        // socket is full, and so may these sends; ignore their failure.
        if c.send_request(0, proto::CMD_READ, i + 1, offset, len, &[])
            .is_err()
        {
            return;
        }
    }
}

/// A client that leaves with replies unread, and one that stops reading
/// and stays: the server goes on serving the next clients correctly.
fn clients_that_do_not_read(srv: &mut Server, data: &[u8]) {
    let len = 1 << 20;
    for round in 0..3 {
        // Leaves with up to 64 MiB of replies unread.
        let mut gone = srv.connect_raw();
        gone.handshake_go("").expect("handshake");
        unread_reads(&mut gone, 64, (round * 4096 + 3) as u64, len);
        drop(gone);
        // Stays, reading nothing (its sends stop once both directions
        // are full: on a thread of its own).
        let mut stuck = srv.connect_raw();
        stuck.handshake_go("").expect("handshake");
        let t = std::thread::spawn(move || {
            unread_reads(&mut stuck, 64, 5, len);
            stuck
        });
        // A client that reads gets the right bytes meanwhile.
        let mut c = srv.connect_raw();
        c.handshake_go("").expect("handshake");
        let mut rng = Prng::new(round as u64);
        for i in 0..50u64 {
            let n = (rng.next_u64() % (2 * MIB as u64)) as usize + 1;
            let off = (rng.next_u64() % (data.len() - n) as u64) as usize;
            let got = c
                .pread(off as u64, n as u32, i)
                .expect("io")
                .expect("read ok");
            assert!(
                got == data[off..off + n],
                "round {round}: pread({n}, {off})"
            );
        }
        c.disconnect().ok();
        // The stuck client finally leaves without reading.
        drop(t.join().expect("sender thread"));
        assert!(srv.is_alive(), "server died: {}", srv.stderr());
    }
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let got = c.pread(0, data.len() as u32, 1).expect("io").expect("ok");
    assert!(got == data, "whole disk after the clients left");
}

#[test]
fn memory_clients_that_leave_replies_unread_do_not_hurt_the_next() {
    let mut srv = Server::start(["memory", "8M"]);
    let data = Prng::new(9).bytes(8 * MIB);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    for (i, chunk) in data.chunks(MIB).enumerate() {
        assert_eq!(c.pwrite((i * MIB) as u64, chunk, i as u64).expect("io"), 0);
    }
    c.disconnect().ok();
    clients_that_do_not_read(&mut srv, &data);
}

#[test]
fn file_clients_that_leave_replies_unread_do_not_hurt_the_next() {
    let dir = TempDir::new();
    let disk = dir.join("disk");
    let data = write_random_file(&disk, 8 * MIB, 4);
    let mut srv = Server::start(["file", disk.to_str().unwrap()]);
    clients_that_do_not_read(&mut srv, &data);
}

/// A WRITE header and the first `head` bytes of its payload, then the
/// rest after a pause: the server has part of the payload buffered and
/// must take the rest from the socket.
fn split_write(
    c: &mut nbdkit_tests::RawClient,
    handle: u64,
    offset: u64,
    data: &[u8],
    head: usize,
) {
    let len = data.len() as u32;
    c.send_request(0, proto::CMD_WRITE, handle, offset, len, &data[..head])
        .expect("send head");
    std::thread::sleep(core::time::Duration::from_millis(20));
    std::io::Write::write_all(&mut c.sock, &data[head..]).expect("send rest");
}

/// Large WRITEs to the file plugin (their payloads moved from the socket
/// into the file with splice(2)): the bytes land where they belong,
/// pipelined or not, whatever part of the payload came with its header;
/// a client that leaves in the middle of a payload does not hurt the next.
#[test]
fn file_large_writes_land_in_the_file() {
    let dir = TempDir::new();
    let disk = dir.join("disk");
    let mut data = write_random_file(&disk, 16 * MIB, 5);
    let mut srv = Server::start(["file", disk.to_str().unwrap()]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let mut rng = Prng::new(11);
    let mut handle = 0u64;
    for round in 0..6u64 {
        // Eight pipelined writes of 64 KiB to 3 MiB at any offset.
        for _ in 0..8 {
            let n = 64 * 1024 + (rng.next_u64() % (3 * MIB as u64)) as usize;
            let off = (rng.next_u64() % (data.len() - n) as u64) as usize;
            let buf = Prng::new(100 + handle).bytes(n);
            handle += 1;
            c.send_request(0, proto::CMD_WRITE, handle, off as u64, n as u32, &buf)
                .expect("send");
            data[off..off + n].copy_from_slice(&buf);
        }
        for _ in 0..8 {
            let (error, _) = c.read_simple_reply().expect("reply");
            assert_eq!(error, 0, "round {round}");
        }
        // Then one whose payload is split, part of it sent with its header.
        let n = 256 * 1024 + 5;
        let off = (rng.next_u64() % (data.len() - n) as u64) as usize;
        let buf = Prng::new(1000 + round).bytes(n);
        handle += 1;
        split_write(
            &mut c,
            handle,
            off as u64,
            &buf,
            1000 + round as usize * 9000,
        );
        assert_eq!(c.read_simple_reply().expect("reply"), (0, handle));
        data[off..off + n].copy_from_slice(&buf);
    }
    // A client that leaves halfway through a payload.
    let mut gone = srv.connect_raw();
    gone.handshake_go("").expect("handshake");
    gone.send_request(0, proto::CMD_WRITE, 1, 0, MIB as u32, &[0xa5; MIB / 2])
        .expect("send");
    drop(gone);
    assert!(srv.is_alive(), "server died: {}", srv.stderr());
    // Whatever that client's half write left at offset 0 (the file may or
    // may not have it), the rest is what was written, read back in full.
    let got = c
        .pread(0, data.len() as u32, handle + 1)
        .expect("io")
        .expect("read ok");
    assert!(
        got[MIB / 2..] == data[MIB / 2..],
        "the file after the large writes"
    );
    assert!(got[..MIB / 2]
        .iter()
        .zip(&data[..MIB / 2])
        .all(|(g, d)| *g == *d || *g == 0xa5));
    c.disconnect().ok();
}
