//! `cargo xtask image`: the static (musl) sensor binary, then its container image from
//! deploy/Dockerfile. FROM scratch: the build needs no registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cmd;
use crate::setup::{self, SetupArgs, Verbosity};

/// Target of the static binary the image holds.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(Args, Clone)]
pub struct ImageArgs {
    /// Name and tag of the image.
    #[arg(long, short = 't', default_value = "sensor:latest")]
    pub tag: String,
    /// Build only the static binary (target/x86_64-unknown-linux-musl/release/sensor).
    #[arg(long)]
    pub binary_only: bool,
}

pub fn image(args: &ImageArgs) -> Result<()> {
    setup::setup(&SetupArgs::default(), Verbosity::Summary)?;
    let bin = build_musl()?;
    eprintln!("xtask: static binary: {}", bin.display());
    if args.binary_only {
        return Ok(());
    }
    build_image(&bin, &args.tag)?;
    eprintln!("xtask: image {} built", args.tag);
    Ok(())
}

/// `cargo build --release -p sensor --target x86_64-unknown-linux-musl`; checks that the result
/// is static (no program interpreter) and returns its path.
pub fn build_musl() -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "sensor",
        "--target",
        MUSL_TARGET,
    ]);
    cmd::run(&mut build).context("building the static sensor binary")?;
    let bin = cmd::target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("sensor");
    let elf = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} is dynamically linked: the image has no libc to load it",
            bin.display()
        );
    }
    Ok(bin)
}

/// `docker build` of deploy/Dockerfile with the binary as the whole context (a staging
/// directory under target/, so the context sent to dockerd is one file).
pub fn build_image(bin: &Path, tag: &str) -> Result<()> {
    let root = cmd::workspace_root();
    let stage = cmd::target_dir().join("image");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    fs::copy(bin, stage.join("sensor")).context("staging the binary")?;
    fs::copy(root.join("deploy/Dockerfile"), stage.join("Dockerfile"))
        .context("staging deploy/Dockerfile")?;
    // The 20.10 client from Debian's docker.io does legacy builds without buildx; a newer
    // client first on PATH may not (shared/HOST-NOTES.md).
    let docker = ["/usr/bin/docker"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("docker");
    let mut build = Command::new(docker);
    build
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--tag", tag])
        .arg(&stage);
    cmd::run(&mut build).with_context(|| {
        format!("building the image {tag} (is dockerd running? `dockerd &` starts it)")
    })
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().context("ELF header")?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(ty) = elf.get(off..off + 4) else {
            bail!("truncated program headers");
        };
        if u32::from_le_bytes(ty.try_into().context("program header")?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}
