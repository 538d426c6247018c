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

/// Pages spliced by the client (`splice(2)`, Linux only).
#[cfg(target_os = "linux")]
mod spliced {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::MIB;
    use nbdkit_tests::{proto, Prng, Server};

    /// Splices `len` bytes from the socket of `c` into a new pipe (which holds
    /// them by reference where the kernel can), returned as (read end, write
    /// end).
    fn splice_into_pipe(c: &nbdkit_tests::RawClient, len: usize) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: two ints for the two ends.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: just opened, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on our pipe.
        let size = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, len as libc::c_int) };
        assert!(size >= len as libc::c_int, "pipe of {len} bytes: {size}");
        let mut got = 0;
        while got < len {
            // SAFETY: valid descriptors, no offsets.
            let n = unsafe {
                libc::splice(
                    c.sock.as_raw_fd(),
                    core::ptr::null_mut(),
                    w.as_raw_fd(),
                    core::ptr::null_mut(),
                    len - got,
                    0,
                )
            };
            assert!(n > 0, "splice: {}", std::io::Error::last_os_error());
            got += n as usize;
        }
        (r, w)
    }

    /// A client that splices READ replies from its socket into pipes of its
    /// own holds the memory plugin's pages by reference (Linux >= 6.5): what
    /// it finds in its pipes must stay the bytes it read after the pages are
    /// overwritten, freed, and their memory used for other pages.
    #[test]
    fn memory_pages_spliced_by_a_client_keep_the_bytes_it_read() {
        const LEN: usize = 256 << 10;
        // 4 MiB read: 128 pages of 32 KiB, more than one batch of pages to
        // detach.
        const READS: usize = 16;
        let srv = Server::start(["memory", "64M"]);
        let old = Prng::new(21).bytes(READS * LEN);
        let mut w = srv.connect_raw();
        w.handshake_go("").expect("handshake");
        for (i, chunk) in old.chunks(LEN).enumerate() {
            assert_eq!(w.pwrite((i * LEN) as u64, chunk, i as u64).expect("io"), 0);
        }
        let mut c = srv.connect_raw();
        c.handshake_go("").expect("handshake");
        let mut pipes = Vec::new();
        for i in 0..READS {
            c.send_request(
                0,
                proto::CMD_READ,
                i as u64,
                (i * LEN) as u64,
                LEN as u32,
                &[],
            )
            .expect("send read");
            assert_eq!(c.read_simple_reply().expect("reply"), (0, i as u64));
            pipes.push(splice_into_pipe(&c, LEN));
        }
        // One more read, copied: the server sees that the client has taken
        // every byte of the reads before and lets go of their pages.
        let again = c.pread(0, 32 << 10, 99).expect("io").expect("read ok");
        assert_eq!(again, old[..32 << 10]);
        // Overwrite them all (their pages are replaced and freed), then write
        // as much again elsewhere (new pages, in the memory freed).
        let new = Prng::new(22).bytes(READS * LEN);
        let more = Prng::new(23).bytes(READS * LEN);
        for (i, chunk) in new.chunks(LEN).enumerate() {
            assert_eq!(
                w.pwrite((i * LEN) as u64, chunk, 100 + i as u64)
                    .expect("io"),
                0
            );
        }
        for (i, chunk) in more.chunks(LEN).enumerate() {
            let off = (32 * MIB + i * LEN) as u64;
            assert_eq!(w.pwrite(off, chunk, 200 + i as u64).expect("io"), 0);
        }
        for (i, (r, _w)) in pipes.into_iter().enumerate() {
            let mut got = vec![0u8; LEN];
            std::fs::File::from(r)
                .read_exact(&mut got)
                .expect("read pipe");
            assert!(
                got == old[i * LEN..(i + 1) * LEN],
                "read {i}: the pipe's bytes changed"
            );
        }
        let now = w.pread(0, LEN as u32, 300).expect("io").expect("read ok");
        assert!(now == new[..LEN], "the overwrite");
        c.disconnect().ok();
        w.disconnect().ok();
        assert!(!srv.stderr().contains("panicked"), "{}", srv.stderr());
    }
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
