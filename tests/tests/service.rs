//! nbdkit as a service: forking into the background with a pidfile, and
//! systemd socket activation.
#![allow(clippy::std_instead_of_core)]

use std::os::unix::process::CommandExt;
use std::time::Duration;

use nbdkit_tests::*;

#[test]
fn daemon_writes_pidfile_when_ready_serves_and_stops_on_sigterm() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let sock = dir.join("bg.sock");
    let pidfile = dir.join("bg.pid");
    // Without -f the command returns once the server is in the background.
    let out = run(
        nbdkit_cmd()
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(["memory", "1M"]),
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(wait_until(Duration::from_secs(20), || read_pidfile(
        &pidfile
    )
    .is_some()));
    let pid = read_pidfile(&pidfile).unwrap();
    assert_ne!(pid as u32, std::process::id());
    // The pidfile exists only once the socket accepts connections.
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let info = run_tool("nbdinfo", ["--size", uri.as_str()]);
    let kill_it = || {
        // SAFETY: we started this daemon; its pid came from its pidfile.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    };
    if !info.success() {
        kill_it();
        panic!("{}", info.describe());
    }
    assert_eq!(info.stdout.trim(), "1048576");
    kill_it();
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(pid)),
        "daemon did not exit on SIGTERM"
    );
}

#[test]
fn socket_activation_serves_on_listen_fds() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let sock = dir.join("sa.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    let mut cmd = nbdkit_cmd();
    cmd.args(["memory", "2M"]);
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 and
    // setenv of our own environment copy are done before exec by the
    // standard library's environment handling (envs below) and dup2 here.
    unsafe {
        cmd.pre_exec(move || {
            // Through a fresh descriptor: dup2 onto itself would keep
            // close-on-exec set.
            let tmp = libc::dup(fd);
            if tmp < 0 || libc::dup2(tmp, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid();
            let v = std::ffi::CString::new(pid.to_string()).unwrap();
            libc::setenv(c"LISTEN_PID".as_ptr(), v.as_ptr(), 1);
            libc::setenv(c"LISTEN_FDS".as_ptr(), c"1".as_ptr(), 1);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let info = run_tool("nbdinfo", ["--size", uri.as_str()]);
    // SAFETY: we started this child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    if st.is_none() {
        let _ = child.kill();
    }
    assert!(info.success(), "{}", info.describe());
    assert_eq!(info.stdout.trim(), "2097152");
    assert_eq!(st.and_then(|s| s.code()), Some(0));
}

#[test]
fn socket_activation_conflicts_with_listen_options() {
    let mut cmd = nbdkit_cmd();
    cmd.args(["-U", "/nonexistent/x.sock", "memory", "1M"]);
    // SAFETY: setenv before exec in the child.
    unsafe {
        cmd.pre_exec(|| {
            let pid = libc::getpid();
            let v = std::ffi::CString::new(pid.to_string()).unwrap();
            libc::setenv(c"LISTEN_PID".as_ptr(), v.as_ptr(), 1);
            libc::setenv(c"LISTEN_FDS".as_ptr(), c"1".as_ptr(), 1);
            Ok(())
        });
    }
    let out = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("nbdkit: error:"), "{}", out.describe());
}

#[test]
fn vsock_listens_and_run_gets_a_vsock_uri() {
    let port = 20000 + (std::process::id() % 20000);
    let out = run(
        nbdkit_cmd()
            .args([
                "--vsock",
                "-p",
                &port.to_string(),
                "-f",
                "memory",
                "1M",
                "--run",
            ])
            .arg("echo \"uri=$uri\""),
        Duration::from_secs(30),
    );
    if !out.success() && out.stderr.contains("AF_VSOCK") {
        // The kernel has no vsock transport here: the listener code is the
        // same accept loop the TCP and Unix tests exercise.
        println!("SKIP: no AF_VSOCK on this machine: {}", out.stderr.trim());
        return;
    }
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("uri=nbd+vsock://1:{port}")),
        "{}",
        out.describe()
    );
}

#[test]
fn shebang_sh_script_runs_as_a_plugin() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let script = dir.join("disk.sh");
    let text = format!(
        "#!{} sh\ncase \"$1\" in\n  get_size) echo 1M ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;\n  *) exit 2 ;;\nesac\n",
        nbdkit_bin().display()
    );
    write_executable(&script, &text);
    // The kernel runs `nbdkit sh SCRIPT ARGS...`; the sh plugin must then
    // run the script with /bin/sh, not through its shebang again.
    let out = run(
        std::process::Command::new(&script).args(["-U", "-", "--run", "nbdinfo --size \"$uri\""]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "1048576");
}
