//! Running other programs, and where the workspace and its tools are.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // xtask/ always sits directly under the workspace root.
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR as cargo does.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `$CARGO_HOME/bin`, where rustup, cargo-installed tools and bpf-linker live.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH with `$CARGO_HOME/bin` in front, for children that look up bpf-linker or rustup.
pub fn path_with_cargo_bin() -> OsString {
    let bin = cargo_bin_dir();
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|p| p == bin) {
        return current;
    }
    let paths = std::iter::once(bin).chain(env::split_paths(&current));
    env::join_paths(paths).unwrap_or(current)
}

/// A command for a tool found on PATH or, failing that, in `$CARGO_HOME/bin`.
pub fn tool(name: &str) -> Command {
    let in_cargo_bin = cargo_bin_dir().join(name);
    let mut cmd = if in_cargo_bin.is_file() {
        Command::new(in_cargo_bin)
    } else {
        Command::new(name)
    };
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// The cargo of the toolchain running this xtask (set by cargo), for workspace builds.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// `rustup run TOOLCHAIN PROGRAM`: a program of a given toolchain whatever this process's
/// toolchain is (cargo sets RUSTUP_TOOLCHAIN for us, which `rustup run` overrides).
pub fn rustup_run(toolchain: &str, program: &str) -> Command {
    let mut cmd = tool("rustup");
    cmd.args(["run", toolchain, program]);
    cmd
}

/// The command line, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Run with inherited stdio; fail unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Run, capture stdout (stderr passes through); fail unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Run silently; true if it started and exited 0. For "is this already there?" checks.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run silently and capture stdout; None if it could not start or failed.
pub fn quiet_output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}
