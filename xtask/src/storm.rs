//! `cargo xtask storm exec|connect N`: the bench's load generator.
//!
//! The bench runs this binary directly (outside any tracked tree) and through a symlink whose
//! name is a tracked runtime name (inside a tracked tree: the sensor tracks the process from
//! its exec, and every child it forks). It prints the loop's elapsed nanoseconds and the CPU
//! time it and its children used meanwhile (user+system, which includes the sensor's kernel
//! programs, since they run in the context of the process they trace) on stdout, so its own
//! start-up is not measured.

use std::ffi::CString;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StormKind {
    /// N fork+exec+wait of /bin/true.
    Exec,
    /// N TCP connects to a listener on 127.0.0.1 in this process.
    Connect,
}

#[derive(Args)]
pub struct StormArgs {
    pub kind: StormKind,
    pub count: u32,
}

pub fn storm(args: &StormArgs) -> Result<()> {
    pin_to_first_cpu()?;
    let cpu_before = cpu_time()?;
    let elapsed = match args.kind {
        StormKind::Exec => exec_storm(args.count)?,
        StormKind::Connect => connect_storm(args.count)?,
    };
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    println!("{} {}", elapsed.as_nanos(), cpu.as_nanos());
    Ok(())
}

/// Run the storm (all its threads and children) on CPU 0: on a 2-CPU machine the scheduler
/// otherwise puts the connect storm's client and listener threads on one CPU in some runs and
/// on two in others, a bimodal 0.8 s / 1.25 s that drowns the sensor's cost. The sensor's
/// kernel programs run in the storm's context, so their cost is measured all the same; its
/// userspace reader competes for CPU 0 like any other task.
fn pin_to_first_cpu() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity get valid
    // pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// User+system time of this process (all threads) and its waited-for children.
fn cpu_time() -> Result<Duration> {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid `who` and a pointer to a live rusage.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage");
        }
        for tv in [usage.ru_utime, usage.ru_stime] {
            total +=
                Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
        }
    }
    Ok(total)
}

/// fork + execve("/bin/true") + waitpid, N times, as a runtime forks and execs its children.
fn exec_storm(count: u32) -> Result<Duration> {
    let path = CString::new("/bin/true").context("program path")?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: this process is single-threaded here (the storm runs on the main thread and
        // has started no other), and the child only calls async-signal-safe execve and _exit
        // on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above; argv and envp are NULL-terminated arrays of C strings.
            unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked just above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited != pid {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("/bin/true exited with wait status {status:#x}");
        }
    }
    Ok(start.elapsed())
}

/// N connects to a fresh listener on 127.0.0.1, each closed at once; a thread of this process
/// accepts them and closes its end after the client's FIN.
/// A fresh listening port per storm keeps the 4-tuples apart from the TIME_WAIT sockets of the
/// previous storm, so ephemeral ports never run out between repetitions.
fn connect_storm(count: u32) -> Result<Duration> {
    let listener = listen_loopback()?;
    let addr = listener.local_addr().context("listener address")?;
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut accepted = 0u32;
        while accepted < count {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    // Close after the client does, so TIME_WAIT stays on the client's side,
                    // where connect()'s port choice accounts for it: a server-side TIME_WAIT
                    // on a 4-tuple the client reuses can cost a 1 s SYN retransmit.
                    let _ = stream.read(&mut [0u8; 1]);
                    drop(stream);
                    accepted += 1;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                    return;
                }
            }
        }
        let _ = done_tx.send(Ok(()));
    });

    let start = Instant::now();
    for i in 0..count {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect #{i} to {addr}"))?;
        // Close with a reset (linger 0): no TIME_WAIT piles up over a bench's 200,000+
        // connects, which made some storms stall for seconds on port reuse.
        set_linger_zero(&stream)?;
        drop(stream);
    }
    let elapsed = start.elapsed();

    match done_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => Ok(elapsed),
        Ok(Err(e)) => Err(e).context("accept"),
        Err(_) => bail!("the listener did not accept all {count} connections within 30 s"),
    }
}

fn set_linger_zero(s: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a live linger of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_LINGER");
    }
    Ok(())
}

/// A listener with a deep accept queue: with std's backlog, a burst can fill the queue, and a
/// dropped SYN costs a 1 s retransmit that would swamp the measurement.
fn listen_loopback() -> Result<TcpListener> {
    // SAFETY: plain socket calls on a descriptor this function owns until it hands it over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        // From here the TcpListener owns (and on error closes) the descriptor.
        let listener = TcpListener::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).context("bind 127.0.0.1:0");
        }
        if libc::listen(fd, 4096) != 0 {
            return Err(std::io::Error::last_os_error()).context("listen");
        }
        let addr: SocketAddr = listener.local_addr().context("listener address")?;
        debug_assert!(addr.ip().is_loopback());
        Ok(listener)
    }
}
