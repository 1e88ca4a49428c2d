//! The blocking writers behind each sink's queue: stdout, a rotating file, a TCP or unix stream.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::{TcpStream, ToSocketAddrs},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

/// How long a blocked write to a collector may take before it counts as failed.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect may take (short: shutdown waits for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl StreamWriter {
    pub fn new(endpoint: Endpoint) -> Self {
        StreamWriter {
            endpoint,
            conn: None,
            buf: Vec::with_capacity(1 << 16),
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
}

impl Writer for StreamWriter {
    fn write_lines(&mut self, lines: &[String]) -> Result<(), (usize, io::Error)> {
        if self.conn.as_ref().is_some_and(|c| c.peer_gone()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|e| (0, e))?);
        }
        self.buf.clear();
        for l in lines {
            self.buf.extend_from_slice(l.as_bytes());
            self.buf.push(b'\n');
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err((0, io::Error::other("not connected")));
        };
        // All or nothing: on a broken connection the whole batch is sent again on the next one
        // (a collector may see a line twice, or a cut line at the break, never a lost one).
        if let Err(e) = conn.stream().write_all(&self.buf) {
            self.conn = None;
            return Err((0, e));
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn retries(&self) -> bool {
        true
    }
    fn connected(&self) -> bool {
        self.conn.is_some()
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
