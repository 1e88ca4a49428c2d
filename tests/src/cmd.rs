//! Running commands with a time bound, failing with their output shown.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long [`run`] lets a command take before killing it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `cmd args...`, waits at most [`DEFAULT_TIMEOUT`], and returns its output.
///
/// Panics, showing the command, its status, stdout and stderr, when it cannot start, exits
/// non-zero or times out.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Cmd::new(cmd).args(args).run()
}

/// [`run`] with extra environment variables.
pub fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Cmd::new(cmd).args(args);
    for (k, v) in env {
        c = c.env(k, v);
    }
    c.run()
}

/// A command to run with a time bound; see [`Cmd::output`] and [`Cmd::run`].
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Bytes written to the command's stdin (otherwise stdin is /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the command and returns its output whatever its exit status; errors only when it
    /// cannot start or runs past its timeout (it is then killed, with its process group).
    pub fn output(&self) -> Result<Output> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills what it started as well.
            .process_group(0);
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.display()))?;

        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // A command that exits without reading its input makes this fail: that is its
            // business, its exit status tells.
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());

        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for a child")? {
                break status;
            }
            if Instant::now() >= deadline {
                // SAFETY: killpg only sends a signal; the group is the child's own (process_group(0)).
                unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
                let out = finish(stdout, stderr, ExitStatus::from_raw(libc::SIGKILL));
                bail!(
                    "`{}` did not finish within {:?}: killed\n{}",
                    self.display(),
                    self.timeout,
                    describe_output(&out)
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        Ok(finish(stdout, stderr, status))
    }

    /// Runs the command; panics with its output unless it exits 0 within its timeout.
    pub fn run(&self) -> Output {
        match self.try_run() {
            Ok(out) => out,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`Cmd::run`], returning an error instead of panicking.
    pub fn try_run(&self) -> Result<Output> {
        let out = self.output()?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}\n{}",
                self.display(),
                out.status,
                describe_output(&out)
            );
        }
        Ok(out)
    }
}

/// Stdout and stderr of a finished command, trimmed to their ends, for messages.
pub(crate) fn describe_output(out: &Output) -> String {
    format!(
        "--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
        crate::tail_lines(&String::from_utf8_lossy(&out.stdout), 60),
        crate::tail_lines(&String::from_utf8_lossy(&out.stderr), 60)
    )
}

type Collected = mpsc::Receiver<Vec<u8>>;

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Option<Collected> {
    let mut pipe = pipe?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Some(rx)
}

fn finish(stdout: Option<Collected>, stderr: Option<Collected>, status: ExitStatus) -> Output {
    // A daemon the command left behind may hold the pipes open: do not wait for it forever.
    let take = |rx: Option<Collected>| {
        rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok())
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: take(stdout),
        stderr: take(stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_stdout() {
        let out = run("sh", &["-c", "echo hello"]);
        assert_eq!(out.stdout, b"hello\n");
    }

    #[test]
    fn failure_shows_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .try_run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn timeout_kills() {
        let started = Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(300))
            .output()
            .unwrap_err();
        assert!(format!("{err}").contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_is_fed() {
        let out = Cmd::new("cat").stdin(b"abc".to_vec()).run();
        assert_eq!(out.stdout, b"abc");
    }
}
