//! The blocking writers behind each sink's queue: stdout, a rotating file, a TCP or unix stream.
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::{TcpStream, ToSocketAddrs},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long a blocked write to a collector may take before it counts as failed.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect may take (short: shutdown waits for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines written to a collector in this last while, up to this many bytes, are kept and sent
/// again on the next connection when the current one turns out broken: a collector that exits
/// drops what its socket still held unread, which the kernel had already acknowledged.
const RETAIN_AGE: Duration = Duration::from_secs(2);
const RETAIN_BYTES: usize = 4 << 20;

/// Writes whole lines. On error, says how many of the lines went out before it.
pub trait Writer: Send {
    fn write_lines(&mut self, lines: &[String]) -> Result<(), (usize, io::Error)>;
    fn flush(&mut self) -> io::Result<()>;
    /// Whether a failed write is retried after a backoff (streams) or counted as lost.
    fn retries(&self) -> bool {
        false
    }
    /// Whether a connection to the collector is up (always true for stdout and files).
    fn connected(&self) -> bool {
        true
    }
    /// At exit: lines written to a connection found broken that could not be sent again.
    fn unconfirmed(&self) -> u64 {
        0
    }
}

pub struct StdoutWriter(BufWriter<io::Stdout>);

impl StdoutWriter {
    pub fn new() -> Self {
        StdoutWriter(BufWriter::with_capacity(1 << 16, io::stdout()))
    }
}

impl Writer for StdoutWriter {
    fn write_lines(&mut self, lines: &[String]) -> Result<(), (usize, io::Error)> {
        for (i, l) in lines.iter().enumerate() {
            self.0
                .write_all(l.as_bytes())
                .and_then(|_| self.0.write_all(b"\n"))
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A file that is rotated before a line would take it past `max_size`: `PATH` becomes
/// `PATH.1`, `PATH.1` becomes `PATH.2` ... up to `PATH.<keep>`. Lines are never split.
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    out: Option<BufWriter<File>>,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let size = f.metadata()?.len();
    Ok((BufWriter::with_capacity(1 << 16, f), size))
}

impl RotatingFile {
    /// Opens (creates) the file now, so that a bad path fails at start.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<Self> {
        let (out, size) = open_append(path)?;
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_size,
            keep,
            out: Some(out),
            size,
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            for n in (1..self.keep).rev() {
                std::fs::rename(self.numbered(n), self.numbered(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, self.numbered(1)).or_else(ignore_missing)?;
        }
        let (out, size) = open_append(&self.path)?;
        self.out = Some(out);
        self.size = size;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

impl Writer for RotatingFile {
    fn write_lines(&mut self, lines: &[String]) -> Result<(), (usize, io::Error)> {
        for (i, l) in lines.iter().enumerate() {
            let len = l.len() as u64 + 1;
            if self.out.is_none() || (self.size > 0 && self.size + len > self.max_size) {
                self.rotate().map_err(|e| (i, e))?;
            }
            let Some(out) = self.out.as_mut() else {
                return Err((i, io::Error::other("file not open")));
            };
            if let Err(e) = out
                .write_all(l.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
            {
                // The buffer may hold part of the line: start a fresh file rather than append to it.
                self.out = None;
                return Err((i, e));
            }
            self.size += len;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// Where a stream sink connects.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn stream(&mut self) -> &mut dyn Write {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }
    fn fd(&self) -> i32 {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
    /// A collector never writes back: readable means it closed or reset the connection. Checked
    /// before each write so that lines are not written into a connection already gone.
    fn peer_gone(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a valid 1-byte buffer on an fd this struct owns; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        n < 0 && {
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            e != libc::EAGAIN && e != libc::EWOULDBLOCK && e != libc::EINTR
        }
    }
}

/// A TCP or unix stream to a collector, (re)connected when a write needs it.
pub struct StreamWriter {
    endpoint: Endpoint,
    conn: Option<Conn>,
    buf: Vec<u8>,
    /// Lines recently written on the current connection, oldest first, with when.
    retained: VecDeque<(Instant, String)>,
    retained_bytes: usize,
    /// The connection broke after `retained` was written to it: send it again first.
    resend: bool,
}

impl StreamWriter {
    pub fn new(endpoint: Endpoint) -> Self {
        StreamWriter {
            endpoint,
            conn: None,
            buf: Vec::with_capacity(1 << 16),
            retained: VecDeque::new(),
            retained_bytes: 0,
            resend: false,
        }
    }

    fn connect(&self) -> io::Result<Conn> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
                for a in addr.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            s.set_write_timeout(Some(STREAM_TIMEOUT))?;
                            let _ = s.set_nodelay(true);
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_write_timeout(Some(STREAM_TIMEOUT))?;
                Ok(Conn::Unix(s))
            }
        }
    }

    /// Drops the connection if the collector closed it; what it may not have read is resent.
    fn check_peer(&mut self) {
        if self.conn.as_ref().is_some_and(|c| c.peer_gone()) {
            self.broken();
        }
    }

    fn broken(&mut self) {
        self.conn = None;
        if !self.retained.is_empty() {
            self.resend = true;
        }
    }

    fn retain(&mut self, lines: &[String]) {
        let now = Instant::now();
        for l in lines {
            self.retained_bytes += l.len() + 1;
            self.retained.push_back((now, l.clone()));
        }
        while let Some((at, l)) = self.retained.front() {
            if now.duration_since(*at) <= RETAIN_AGE && self.retained_bytes <= RETAIN_BYTES {
                break;
            }
            self.retained_bytes -= l.len() + 1;
            self.retained.pop_front();
        }
    }

    /// Connects if needed and writes the retained lines again (when the last connection broke)
    /// and then `lines`, all or nothing.
    fn send(&mut self, lines: &[String]) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        self.buf.clear();
        if self.resend {
            for (_, l) in &self.retained {
                self.buf.extend_from_slice(l.as_bytes());
                self.buf.push(b'\n');
            }
        }
        for l in lines {
            self.buf.extend_from_slice(l.as_bytes());
            self.buf.push(b'\n');
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::other("not connected"));
        };
        // All or nothing: on a broken connection the whole batch is sent again on the next one
        // (a collector may see a line twice, or a cut line at the break, never a lost one).
        if let Err(e) = conn.stream().write_all(&self.buf) {
            self.broken();
            return Err(e);
        }
        if self.resend {
            tracing::info!(
                "sink {}: the connection broke; sent the last {} records again (a collector may see them twice)",
                self.endpoint,
                self.retained.len()
            );
            self.resend = false;
        }
        Ok(())
    }
}

impl Writer for StreamWriter {
    fn write_lines(&mut self, lines: &[String]) -> Result<(), (usize, io::Error)> {
        self.check_peer();
        self.send(lines).map_err(|e| (0, e))?;
        self.retain(lines);
        Ok(())
    }
    /// Called when the queue runs empty (and at least every 500 ms while idle): a collector that
    /// went away meanwhile gets what it may not have read on a new connection now, not at the
    /// next record.
    fn flush(&mut self) -> io::Result<()> {
        self.check_peer();
        if self.resend {
            self.send(&[])?;
        }
        Ok(())
    }
    fn retries(&self) -> bool {
        true
    }
    fn connected(&self) -> bool {
        self.conn.is_some()
    }
    fn unconfirmed(&self) -> u64 {
        if self.resend {
            self.retained.len() as u64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rotates_between_lines() {
        let dir = std::env::temp_dir().join(format!("sensor-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.ndjson");
        let mut f = RotatingFile::open(&path, 100, 3).unwrap();
        let lines: Vec<String> = (0..40).map(|i| format!("{{\"n\":{i:04}}}")).collect();
        f.write_lines(&lines).unwrap();
        f.flush().unwrap();
        let mut all = Vec::new();
        for p in [
            dir.join("out.ndjson.3"),
            dir.join("out.ndjson.2"),
            dir.join("out.ndjson.1"),
            path.clone(),
        ] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 100, "{} is {} bytes", p.display(), text.len());
            assert!(text.ends_with('\n'));
            all.extend(text.lines().map(String::from));
        }
        assert!(!dir.join("out.ndjson.4").exists());
        // The newest lines are all there, in order, none cut.
        assert_eq!(all, lines[lines.len() - all.len()..].to_vec());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
