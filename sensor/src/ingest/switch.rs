//! A bench instrument: with `SENSOR_BENCH_SWITCH=PATH`, a unix socket at PATH on which one
//! byte detaches the kernel programs (`0`; all but the two on classic tracepoints, exec and
//! exit, whose detach waits about 75 ms for RCU) or attaches them again (`1`), or makes them
//! return at their first check (`i`, idle, as `SENSOR_IDLE_PROBES=1`) or work again (`a`);
//! the same byte comes back once done (`!` when it failed, `?` for any other byte). `cargo
//! xtask bench` (its interleaved columns, `--interleave-pairs`) alternates a storm with and
//! without the programs every few milliseconds this way, in one sensor's lifetime, so that
//! this VM's swings of tens of percent over a second fall on both sides alike. Nothing is seen
//! while the programs are detached or idle.
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// What to do ([`Setting`]), and where to say how it went.
pub type Request = (Setting, oneshot::Sender<Result<(), String>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Attached,
    Detached,
    Idle,
    Active,
}

impl Setting {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'1' => Setting::Attached,
            b'0' => Setting::Detached,
            b'i' => Setting::Idle,
            b'a' => Setting::Active,
            _ => return None,
        })
    }
}

/// The switch's requests, when `SENSOR_BENCH_SWITCH` names a socket (bound before this
/// returns, so that whoever reads `sensor_started` can connect at once).
pub fn start() -> anyhow::Result<Option<mpsc::Receiver<Request>>> {
    let Some(path) = std::env::var_os("SENSOR_BENCH_SWITCH").map(PathBuf::from) else {
        return Ok(None);
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("SENSOR_BENCH_SWITCH: binding {}", path.display()))?;
    tracing::warn!(
        "SENSOR_BENCH_SWITCH={}: the kernel programs are detached and attached again on \
         request, and nothing is seen while they are detached (a bench instrument)",
        path.display()
    );
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            while let Ok(byte) = conn.read_u8().await {
                let Some(setting) = Setting::from_byte(byte) else {
                    let _ = conn.write_u8(b'?').await;
                    continue;
                };
                let (done, result) = oneshot::channel();
                if tx.send((setting, done)).await.is_err() {
                    return;
                }
                let reply = match result.await {
                    Ok(Ok(())) => byte,
                    Ok(Err(e)) => {
                        tracing::warn!("SENSOR_BENCH_SWITCH: {e}");
                        b'!'
                    }
                    Err(_) => return,
                };
                if conn.write_u8(reply).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(Some(rx))
}

/// The next request; never, without a switch.
pub async fn next(rx: Option<&mut mpsc::Receiver<Request>>) -> Option<Request> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
