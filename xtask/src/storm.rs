//! `cargo xtask storm KIND N`: the bench's load generator.
//!
//! The bench runs this binary directly (outside any tracked tree) and through a symlink whose
//! name is a tracked runtime name (inside a tracked tree: the sensor tracks the process from
//! its exec, and every child it forks). It prints one JSON line on stdout: the loop's elapsed
//! nanoseconds and the CPU time it and its children used meanwhile (user+system, which includes
//! the sensor's kernel programs, since they run in the context of the process they trace), and
//! for redis the requests per second of each test, so its own start-up is not measured.
//!
//! Every storm's loop runs in this process (no shell, `dd` or Python in between), pinned to
//! CPU 0; only the redis storm runs other programs, `redis-server` as this process's child
//! (so that it is in the same tree, tracked or not) and `redis-benchmark`.
//!
//! With `--switch PATH` (a sensor's `SENSOR_BENCH_SWITCH` socket), the storm of N runs
//! `--pairs` times in each of two settings of the sensor's kernel programs, one right after
//! the other (the order alternating by pair): `--compare work`, working and idle (attached,
//! returning at their first check); `--compare attach`, idle and detached. The line then holds
//! every pair, `{"pairs": [[SET, UNSET], ...]}`, each a timing as above.

use std::ffi::CString;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StormKind {
    /// N fork+exec+wait of /bin/true.
    Exec,
    /// N TCP connects to a listener on 127.0.0.1 in this process.
    Connect,
    /// N one-byte read(2)s of /dev/zero, each followed by a one-byte write(2) to /dev/null:
    /// `dd if=/dev/zero of=/dev/null bs=1 count=N`, 2N syscalls.
    ReadWrite,
    /// N open(2)+close(2) of a file this process creates.
    OpenClose,
    /// N one-byte send(2)+recv(2) over a unix stream socketpair.
    UnixPair,
    /// `redis-benchmark -t set,get -n N` (pinned to CPU 0) against a `redis-server` this
    /// process starts on a loopback port as its child (pinned to CPU 1).
    Redis,
}

#[derive(Args)]
pub struct StormArgs {
    pub kind: StormKind,
    pub count: u32,
    /// A sensor's bench switch (its SENSOR_BENCH_SWITCH socket): run the storm `--pairs`
    /// times in each of the two settings `--compare` names.
    #[arg(long)]
    pub switch: Option<PathBuf>,
    /// Pairs of storms with `--switch`.
    #[arg(long, default_value_t = 20)]
    pub pairs: u32,
    /// With `--switch`: milliseconds to wait after each switch, spinning (see `spin`).
    #[arg(long, default_value_t = 10)]
    pub settle_ms: u64,
    /// With `--switch`: what the pairs compare.
    #[arg(long, value_enum, default_value_t = Compare::Work)]
    pub compare: Compare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compare {
    /// The programs working, against the programs attached but idle: what their work costs.
    Work,
    /// The programs attached but idle, against detached: what the kernel's dispatch to them
    /// costs.
    Attach,
}

impl Compare {
    /// The switch's bytes for the pair's two settings, and for what comes before the pairs.
    fn bytes(self) -> ([u8; 2], u8) {
        match self {
            // (active, idle), attached throughout.
            Compare::Work => ([b'a', b'i'], b'1'),
            // (attached, detached), idle throughout.
            Compare::Attach => ([b'1', b'0'], b'i'),
        }
    }
}

/// The switch's bytes that leave the sensor as it runs unswitched: attached and working.
const SWITCH_RESTORE: [u8; 2] = [b'1', b'a'];

/// How long a switch may take (about a millisecond here).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Waiting after a switch (`--settle-ms`) lets the sensor's reader finish what it still had to
/// do for the previous storm (it wakes at most a few milliseconds after an event), and the
/// kernel what it does after a detach. Spent spinning: a CPU that sleeps between storms comes
/// back slower by 10 % and more here, for a while, and unevenly.
fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

pub fn storm(args: &StormArgs) -> Result<()> {
    pin_to_cpu(0)?;
    // The redis server lives as long as the storms that run against it.
    let redis = match args.kind {
        StormKind::Redis => Some(RedisServer::start()?),
        _ => None,
    };
    let run = || -> Result<serde_json::Value> {
        let cpu_before = cpu_time()?;
        let mut throughput = serde_json::Map::new();
        let elapsed = match (args.kind, &redis) {
            (StormKind::Exec, _) => exec_storm(args.count)?,
            (StormKind::Connect, _) => connect_storm(args.count)?,
            (StormKind::ReadWrite, _) => read_write_storm(args.count)?,
            (StormKind::OpenClose, _) => open_close_storm(args.count)?,
            (StormKind::UnixPair, _) => unix_pair_storm(args.count)?,
            (StormKind::Redis, Some(server)) => {
                let (elapsed, tests) = redis_storm(server, args.count)?;
                for (test, rps) in tests {
                    throughput.insert(test, json!(rps));
                }
                elapsed
            }
            (StormKind::Redis, None) => unreachable!("the server is started above"),
        };
        let cpu = cpu_time()?.saturating_sub(cpu_before);
        Ok(json!({
            "wall_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            "cpu_ns": u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX),
            "throughput": throughput,
        }))
    };
    let Some(path) = &args.switch else {
        println!("{}", run()?);
        return Ok(());
    };
    let mut switch = Switch::connect(path)?;
    let (settings, before) = args.compare.bytes();
    switch.set(before)?;
    let mut pairs = Vec::new();
    for pair in 0..args.pairs {
        let mut timings = [serde_json::Value::Null, serde_json::Value::Null];
        // The setting first in even pairs, its absence first in odd ones.
        for set in [pair % 2 == 0, pair % 2 == 1] {
            switch.set(settings[usize::from(!set)])?;
            spin(Duration::from_millis(args.settle_ms));
            timings[usize::from(!set)] = run()?;
        }
        pairs.push(timings);
    }
    for byte in SWITCH_RESTORE {
        switch.set(byte)?;
    }
    println!("{}", json!({ "pairs": pairs }));
    Ok(())
}

/// A connection to a sensor's bench switch (`sensor/src/ingest/switch.rs`).
struct Switch {
    stream: std::os::unix::net::UnixStream,
    path: PathBuf,
}

impl Switch {
    fn connect(path: &std::path::Path) -> Result<Self> {
        let stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
            format!("connecting to the sensor's bench switch {}", path.display())
        })?;
        // Its answers are waited for spinning (see `set`).
        stream
            .set_nonblocking(true)
            .context("making the bench switch's socket non-blocking")?;
        Ok(Self {
            stream,
            path: path.to_path_buf(),
        })
    }

    /// Send one of the switch's bytes; returns once the sensor says it did what it asks.
    fn set(&mut self, byte: u8) -> Result<()> {
        let mut reply = [0u8; 1];
        let failed = || format!("switching the sensor's programs at {}", self.path.display());
        self.stream.write_all(&[byte]).with_context(failed)?;
        // Spinning, not blocked in read: a CPU left idle comes back slower for a while (see
        // `spin`), which would fall on one side of the pair only.
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            match self.stream.read(&mut reply) {
                Ok(1) => break,
                Ok(_) => bail!(
                    "the sensor closed its bench switch at {}",
                    self.path.display()
                ),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e).with_context(failed),
            }
        }
        if reply[0] != byte {
            bail!(
                "the sensor's bench switch at {} answered {:?} to {:?} (see the sensor's log)",
                self.path.display(),
                reply[0] as char,
                byte as char
            );
        }
        Ok(())
    }
}

/// Run the storm (all its threads and children) on CPU 0: on a 2-CPU machine the scheduler
/// otherwise puts the connect storm's client and listener threads on one CPU in some runs and
/// on two in others, a bimodal 0.8 s / 1.25 s that drowns the sensor's cost. The sensor's
/// kernel programs run in the storm's context, so their cost is measured all the same; its
/// userspace reader competes for CPU 0 like any other task.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    set_affinity(cpu).with_context(|| format!("sched_setaffinity to CPU {cpu}"))
}

/// Pin the calling thread (and what it forks from then on) to one CPU. Only a syscall on a
/// stack value: fit to run between fork and exec.
fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity get valid
    // pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
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

/// A failed or short read/write/send/recv: the OS error when there is one.
fn io_error(ret: isize, what: &str) -> anyhow::Error {
    if ret < 0 {
        anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_owned())
    } else {
        anyhow::anyhow!("{what}: {ret} bytes instead of 1")
    }
}

fn open_fd(path: &std::ffi::CStr, flags: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: a NUL-terminated path; the descriptor returned is owned by the OwnedFd.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("open {}", path.to_string_lossy()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dd if=/dev/zero of=/dev/null bs=1 count=N` in this process: the cheapest syscalls there
/// are, so what a hook on every syscall costs shows in full.
fn read_write_storm(count: u32) -> Result<Duration> {
    let zero = open_fd(c"/dev/zero", libc::O_RDONLY)?;
    let null = open_fd(c"/dev/null", libc::O_WRONLY)?;
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: a descriptor owned above and a buffer of the length given.
        let r = unsafe { libc::read(zero.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        if r != 1 {
            return Err(io_error(r, "read of /dev/zero"));
        }
        // SAFETY: as above.
        let w = unsafe { libc::write(null.as_raw_fd(), byte.as_ptr().cast(), 1) };
        if w != 1 {
            return Err(io_error(w, "write to /dev/null"));
        }
    }
    Ok(start.elapsed())
}

/// A file or directory of this storm's own under the temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        Self(std::env::temp_dir().join(format!("sensor-bench-{what}-{}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

/// N open(O_RDONLY)+close of one small file.
fn open_close_storm(count: u32) -> Result<Duration> {
    let file = Scratch::new("open");
    std::fs::write(&file.0, b"sensor bench\n")
        .with_context(|| format!("creating {}", file.0.display()))?;
    let path = CString::new(file.0.as_os_str().as_encoded_bytes()).context("file path")?;
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: a NUL-terminated path; the descriptor is closed just below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("open {}", file.0.display()));
        }
        // SAFETY: the descriptor opened just above, closed once.
        if unsafe { libc::close(fd) } != 0 {
            return Err(std::io::Error::last_os_error()).context("close");
        }
    }
    Ok(start.elapsed())
}

/// N one-byte send+recv over a unix stream socketpair, both ends in this thread.
fn unix_pair_storm(count: u32) -> Result<Duration> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: two fresh descriptors nothing else owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut byte = [b'x'; 1];
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: descriptors owned above and a buffer of the length given.
        let s = unsafe { libc::send(a.as_raw_fd(), byte.as_ptr().cast(), 1, 0) };
        if s != 1 {
            return Err(io_error(s, "send on the socketpair"));
        }
        // SAFETY: as above.
        let r = unsafe { libc::recv(b.as_raw_fd(), byte.as_mut_ptr().cast(), 1, 0) };
        if r != 1 {
            return Err(io_error(r, "recv on the socketpair"));
        }
    }
    Ok(start.elapsed())
}

/// How long redis-server may take to answer its first PING.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// `redis-server` on a free loopback port, a child of this process pinned to CPU 1 (the
/// benchmark, like every storm, runs on CPU 0); stopped on drop.
struct RedisServer {
    child: Child,
    port: u16,
    /// Its working directory; a field, so removed only after `drop` has stopped the server.
    _dir: Scratch,
}

impl RedisServer {
    fn start() -> Result<Self> {
        // A port the kernel just handed out and took back: free unless something grabs it in
        // the next milliseconds, which redis-server would then say in its log.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port")?
            .port();
        let dir = Scratch::new("redis");
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        let log_path = dir.0.join("redis-server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // No persistence: the bench measures the network path, not the disk.
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("redis-server log")?)
            .stderr(log);
        // SAFETY: the closure only makes the sched_setaffinity syscall, which is
        // async-signal-safe, on its own stack.
        unsafe {
            command.pre_exec(|| set_affinity(1));
        }
        let child = command.spawn().context(
            "starting redis-server (Debian package redis-server; `cargo xtask setup` installs it)",
        )?;
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        server.wait_ready(&log_path)?;
        Ok(server)
    }

    /// Until the server answers PING with +PONG.
    fn wait_ready(&mut self, log_path: &std::path::Path) -> Result<()> {
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if self.pong() {
                return Ok(());
            }
            let log = || std::fs::read_to_string(log_path).unwrap_or_default();
            if let Some(status) = self.child.try_wait().context("checking on redis-server")? {
                bail!(
                    "redis-server exited ({status}) at start; its log:\n{}",
                    log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not answer PING on 127.0.0.1:{} within {} s; its log:\n{}",
                    self.port,
                    REDIS_START_TIMEOUT.as_secs(),
                    log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time `redis-benchmark -t set,get -n N --csv` against the server; returns the benchmark's
/// wall time and its requests per second by test (`SET`, `GET`).
fn redis_storm(server: &RedisServer, count: u32) -> Result<(Duration, Vec<(String, f64)>)> {
    let mut bench = Command::new("redis-benchmark");
    bench
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", "set,get", "-n", &count.to_string(), "--csv"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let out = bench.output().context(
        "running redis-benchmark (Debian package redis-tools; `cargo xtask setup` installs it)",
    )?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("redis-benchmark failed ({})", out.status);
    }
    let tests = parse_redis_csv(&String::from_utf8_lossy(&out.stdout))?;
    Ok((elapsed, tests))
}

/// `"test","rps",...` then `"SET","23764.26",...` per test.
fn parse_redis_csv(csv: &str) -> Result<Vec<(String, f64)>> {
    let tests: Vec<(String, f64)> = csv
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
            let test = fields.next()?;
            let rps = fields.next()?.parse().ok()?;
            Some((test.to_owned(), rps))
        })
        .collect();
    for wanted in ["SET", "GET"] {
        if !tests.iter().any(|(t, _)| t == wanted) {
            bail!("no {wanted} figure in redis-benchmark's output: {csv:?}");
        }
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::parse_redis_csv;

    #[test]
    fn redis_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"23764.26\",\"1.595\"\n\"GET\",\"28089.89\",\"1.393\"\n";
        let tests = parse_redis_csv(csv).unwrap();
        assert_eq!(
            tests,
            vec![("SET".to_owned(), 23764.26), ("GET".to_owned(), 28089.89)]
        );
        assert!(parse_redis_csv("\"test\",\"rps\"\n\"SET\",\"1\"\n").is_err());
    }
}
