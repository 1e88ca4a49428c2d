//! `cargo xtask bench --peers`: the same untracked storms under auditd with the CIS Docker
//! audit rules (cis-docker.rules), the tool a platform team would otherwise deploy for the
//! same facts. auditd (Debian package auditd) runs in the foreground as the bench's child,
//! with the machine's /etc/audit/auditd.conf, only while its storms run; the rules are
//! deleted and the kernel's audit switch put back as it was after each run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

const RULES: &str = include_str!("cis-docker.rules");
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Auditd {
    rules_path: PathBuf,
    /// Rules loaded per run (watches on paths whose directory is missing are left out).
    rules_loaded: usize,
    rules_skipped: Vec<String>,
    /// `enabled` of `auditctl -s` before the bench, put back after each run.
    enabled_before: String,
}

impl Auditd {
    /// Check that auditd can run here without disturbing another audit setup, and write the
    /// rules file.
    pub fn prepare(out_dir: &Path) -> Result<Self> {
        for program in ["auditd", "auditctl"] {
            if !cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {program}")])) {
                bail!(
                    "{program} not found (Debian package auditd: \
                     `cargo xtask setup --bench-peers` installs it)"
                );
            }
        }
        let status = auditctl(&["-s"])?;
        let pid = status_field(&status, "pid").unwrap_or_default();
        if pid != "0" && !pid.is_empty() {
            bail!("an audit daemon already runs (pid {pid}); the bench would take it over");
        }
        let loaded = auditctl(&["-l"])?;
        if !loaded.trim().eq_ignore_ascii_case("no rules") {
            bail!("audit rules are loaded already; the bench would delete them:\n{loaded}");
        }
        let enabled_before = status_field(&status, "enabled")
            .context("no `enabled` in `auditctl -s`")?
            .to_owned();
        if enabled_before == "2" {
            bail!("the audit configuration is locked (enabled 2)");
        }

        let mut kept = Vec::new();
        let mut rules_skipped = Vec::new();
        for line in RULES.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let watched = line
                .strip_prefix("-w ")
                .and_then(|r| r.split_whitespace().next());
            match watched {
                Some(path) if !Path::new(path).parent().is_some_and(Path::is_dir) => {
                    rules_skipped.push(path.to_owned());
                }
                _ => kept.push(line),
            }
        }
        let rules_path = out_dir.join("cis-docker.rules");
        fs::write(&rules_path, kept.join("\n") + "\n")
            .with_context(|| format!("writing {}", rules_path.display()))?;
        Ok(Self {
            rules_path,
            rules_loaded: kept.len(),
            rules_skipped,
            enabled_before,
        })
    }

    /// Start auditd in the foreground, wait until the kernel knows it, load the rules.
    pub fn start(&mut self) -> Result<Running<'_>> {
        let child = Command::new("auditd")
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting auditd -n")?;
        let running = Running {
            child: Some(child),
            auditd: self,
        };
        let pid = running.pid().to_string();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = auditctl(&["-s"])?;
            if status_field(&status, "pid") == Some(pid.as_str()) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "auditd (pid {pid}) did not register with the kernel within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let path = running.auditd.rules_path.to_string_lossy().into_owned();
        auditctl(&["-R", &path])?;
        auditctl(&["-e", "1"])?;
        Ok(running)
    }

    /// How auditd ran, for the report.
    pub fn describe(&self) -> String {
        let version = auditctl(&["-v"]).unwrap_or_default();
        let mut text = format!(
            "{} (`auditd -n`), {} rules of xtask/src/bench/cis-docker.rules (CIS Docker \
             Benchmark 1.1 watches, execve and connect syscall rules)",
            version.trim(),
            self.rules_loaded
        );
        if !self.rules_skipped.is_empty() {
            text += &format!(
                "; left out, their directory missing: {}",
                self.rules_skipped.join(", ")
            );
        }
        text
    }
}

/// auditd while the audited storms run; stopped (rules deleted, audit switch restored) by
/// `stop` or, on an error path, on drop.
pub struct Running<'a> {
    child: Option<Child>,
    auditd: &'a Auditd,
}

impl Running<'_> {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Rules first: without them the kernel audits nothing, whatever the daemon does.
        let deleted = auditctl(&["-D"]);
        let restored = auditctl(&["-e", &self.auditd.enabled_before]);
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        deleted?;
        restored?;
        Ok(())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("bench: stopping auditd: {e:#}");
        }
    }
}

fn auditctl(args: &[&str]) -> Result<String> {
    cmd::output(Command::new("auditctl").args(args))
}

/// `NAME VALUE` of `auditctl -s`.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(' ')?;
        (key == name).then(|| value.trim())
    })
}
