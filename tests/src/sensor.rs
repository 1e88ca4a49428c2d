//! The sensor under test: `sensor run ...`, its NDJSON records collected as they come.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{require_root, tail_file, workspace_root};

/// How long the sensor may take to attach its probes, seed from /proc and say `sensor_started`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sensor may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Records whose kinds an error message lists.
const ERROR_RECORDS: usize = 50;
/// Lines of stderr an error message shows.
const ERROR_STDERR_LINES: usize = 40;

/// The sensor binary: `$SENSOR_BIN`, or `<workspace>/target/release/sensor` (under
/// `$CARGO_TARGET_DIR` when that is set).
pub fn sensor_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SENSOR_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("sensor")
}

/// `$SENSOR_TEST_ARGS` (space-separated), added to every `sensor run` the harness starts, so
/// that a suite can run as it is under other options (`SENSOR_TEST_ARGS='--kernel-hooks
/// narrow'`). An option the test passes itself is left to the test's value.
fn test_args(args: &[&str]) -> Vec<String> {
    let extra = std::env::var("SENSOR_TEST_ARGS").unwrap_or_default();
    let mut out = Vec::new();
    let mut skip = false;
    for word in extra.split_whitespace() {
        if word.starts_with("--") {
            let name = word.split('=').next().unwrap_or(word);
            skip = args
                .iter()
                .any(|a| *a == name || a.starts_with(&format!("{name}=")));
        }
        if !skip {
            out.push(word.to_string());
        }
    }
    out
}

/// A running `sensor run ...` whose stdout records are collected on a thread.
///
/// Every stdout line must be one JSON object: a line that is not fails the test with the line
/// shown, at the next [`SensorProcess::wait_for`], [`SensorProcess::records`] or
/// [`SensorProcess::stop`], or when the process is dropped if none of those reported it. Only the `kind` field is relied upon here.
pub struct SensorProcess {
    bin: PathBuf,
    child: Mutex<Option<Child>>,
    stream: Arc<Stream>,
    reader: Option<JoinHandle<()>>,
    stderr_path: PathBuf,
    /// A bad line was reported in an error: dropping need not fail the test again.
    bad_reported: AtomicBool,
}

#[derive(Default)]
struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

#[derive(Default)]
struct StreamState {
    records: Vec<Value>,
    raw: Vec<String>,
    /// Lines that are not a JSON object: (line number from 1, line, why).
    bad: Vec<(usize, String, String)>,
    /// Stdout closed (the sensor exited, or closed it).
    eof: bool,
}

impl SensorProcess {
    /// Starts `$SENSOR_BIN run <args>` (see [`sensor_bin`]) and waits up to 30 s for its
    /// `sensor_started` record.
    pub fn start(args: &[&str]) -> Result<SensorProcess> {
        require_root("running the sensor (loading eBPF programs)");
        let bin = sensor_bin();
        if !bin.is_file() {
            bail!(
                "sensor binary not found at {}: build it with `cargo build --release -p sensor`, \
                 or point SENSOR_BIN at it",
                bin.display()
            );
        }
        SensorProcess::start_bin(&bin, args)
    }

    /// As [`SensorProcess::start`], with `env` added to the sensor's environment.
    pub fn start_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<SensorProcess> {
        require_root("running the sensor (loading eBPF programs)");
        SensorProcess::start_bin_env(&sensor_bin(), args, env)
    }

    /// Starts `<bin> run <args>` and waits up to 30 s for its `sensor_started` record.
    pub fn start_bin(bin: &Path, args: &[&str]) -> Result<SensorProcess> {
        SensorProcess::start_bin_env(bin, args, &[])
    }

    fn start_bin_env(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<SensorProcess> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let stderr_path = PathBuf::from(format!(
            "/tmp/sensor-tests-sensor-{}-{}.stderr",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut child = Command::new(bin)
            .arg("run")
            .args(args)
            .args(test_args(args))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} run {}", bin.display(), args.join(" ")))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stream = Arc::new(Stream::default());
        let reader = {
            let stream = stream.clone();
            thread::spawn(move || read_records(stdout, &stream))
        };
        let sensor = SensorProcess {
            bin: bin.to_path_buf(),
            child: Mutex::new(Some(child)),
            stream,
            reader: Some(reader),
            stderr_path,
            bad_reported: AtomicBool::new(false),
        };
        sensor
            .wait_for(|r| r["kind"] == "sensor_started", START_TIMEOUT)
            .context("the sensor did not report sensor_started")?;
        Ok(sensor)
    }

    /// The sensor's pid (0 once it was stopped).
    pub fn pid(&self) -> u32 {
        self.child().as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The file its stderr goes to (kept after the test, for reading).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Waits up to `timeout` for a record matching `pred` and returns the first one (in output
    /// order, counting records that came before this call).
    ///
    /// Errors when none comes in time, when the sensor's stdout closes first, or when it wrote a
    /// line that is not a JSON object; the error lists the last 50 records' kinds and the end
    /// of stderr.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        let mut state = self.state();
        loop {
            self.check_lines(&state)?;
            if let Some(found) = state.records[scanned..].iter().find(|r| pred(r)) {
                return Ok(found.clone());
            }
            scanned = state.records.len();
            if state.eof {
                drop(state);
                return Err(self.failure(&format!(
                    "no matching record: the sensor closed its stdout ({})",
                    self.exit_description()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(self.failure(&format!("no matching record within {timeout:?}")));
            }
            state = self
                .stream
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Watches the records for `within` and errors if one matches `pred` (including records
    /// that came before this call).
    pub fn expect_none(&self, pred: impl Fn(&Value) -> bool, within: Duration) -> Result<()> {
        match self.wait_for(&pred, within) {
            Ok(found) => Err(self.failure(&format!("unexpected record: {found}"))),
            Err(_) if self.state().eof => {
                Err(self.failure("the sensor closed its stdout while being watched"))
            }
            Err(e) => {
                // A timeout is the good outcome; a bad line is not.
                self.check_lines(&self.state()).map_err(|_| e)?;
                Ok(())
            }
        }
    }

    /// All records so far. Panics, showing the line, if the sensor wrote a line that is not a
    /// JSON object.
    pub fn records(&self) -> Vec<Value> {
        let state = self.state();
        if let Err(e) = self.check_lines(&state) {
            panic!("{e:#}");
        }
        state.records.clone()
    }

    /// All records so far, without failing on a bad line (for failure messages).
    pub(crate) fn records_lenient(&self) -> Vec<Value> {
        self.state().records.clone()
    }

    /// Records of one kind so far.
    pub fn records_of_kind(&self, kind: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// Stdout lines so far, as written (valid or not).
    pub fn raw_lines(&self) -> Vec<String> {
        self.state().raw.clone()
    }

    /// Sends SIGTERM and waits up to 10 s for the sensor to exit; returns its exit status
    /// (tests assert it is 0). Records stay readable afterwards. Errors when it had to be
    /// killed, or when it wrote a line that is not a JSON object.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child()
            .take()
            .ok_or_else(|| anyhow!("the sensor was already stopped"))?;
        // SAFETY: kill only sends a signal, to our own child that has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for the sensor")? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.finish_reading();
        let Some(status) = status else {
            return Err(self.failure(&format!(
                "the sensor did not exit within {STOP_TIMEOUT:?} of SIGTERM: killed"
            )));
        };
        self.check_lines(&self.state())?;
        Ok(status)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, StreamState> {
        self.stream.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (a little) for the reader to see the end of stdout after the sensor exited.
    fn finish_reading(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = self.state();
        while !state.eof && Instant::now() < deadline {
            state = self
                .stream
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let eof = state.eof;
        drop(state);
        if eof && let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn check_lines(&self, state: &StreamState) -> Result<()> {
        if let Some((n, line, why)) = state.bad.first() {
            self.bad_reported.store(true, Ordering::Relaxed);
            bail!(
                "{} wrote stdout line {n} that is not a JSON object ({why}):\n{line}\n\
                 (stderr: {})",
                self.bin.display(),
                self.stderr_path.display()
            );
        }
        Ok(())
    }

    fn exit_description(&self) -> String {
        match self.child().as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => format!("exited, {status}"),
            Some(Ok(None)) => "still running".to_string(),
            Some(Err(e)) => format!("cannot tell whether it exited: {e}"),
            None => "stopped".to_string(),
        }
    }

    /// An error saying `what`, with the last records' kinds and the end of stderr.
    fn failure(&self, what: &str) -> anyhow::Error {
        let kinds: Vec<String> = {
            let state = self.state();
            let start = state.records.len().saturating_sub(ERROR_RECORDS);
            state.records[start..]
                .iter()
                .map(|r| match &r["kind"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        };
        let total = self.state().records.len();
        anyhow!(
            "{what}\nlast {} of {total} record kinds: [{}]\n--- sensor stderr ({}), end ---\n{}",
            kinds.len(),
            kinds.join(", "),
            self.stderr_path.display(),
            tail_file(&self.stderr_path, ERROR_STDERR_LINES)
        )
    }
}

impl Drop for SensorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that never looked at the records again must still fail on a bad line.
        if !thread::panicking()
            && !self.bad_reported.load(Ordering::Relaxed)
            && let Err(e) = self.check_lines(&self.state())
        {
            panic!("{e:#}");
        }
    }
}

impl std::fmt::Debug for SensorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorProcess")
            .field("bin", &self.bin)
            .field("pid", &self.pid())
            .field("records", &self.state().records.len())
            .field("stderr", &self.stderr_path)
            .finish()
    }
}

fn read_records(stdout: ChildStdout, stream: &Stream) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let mut state = stream.state.lock().unwrap_or_else(|e| e.into_inner());
                state
                    .bad
                    .push((number + 1, String::new(), format!("reading stdout: {e}")));
                break;
            }
        }
        number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        let parsed = match std::str::from_utf8(&buf) {
            Err(e) => Err(format!("not UTF-8: {e}")),
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err("valid JSON but not an object".to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        let mut state = stream.state.lock().unwrap_or_else(|e| e.into_inner());
        match parsed {
            Ok(v) => state.records.push(v),
            Err(why) => state.bad.push((number, line.clone(), why)),
        }
        state.raw.push(line);
        drop(state);
        stream.changed.notify_all();
    }
    stream.state.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
    stream.changed.notify_all();
}
