//! A local Docker registry on loopback, for the push chains (tests/tests/detect_more.rs,
//! tests/tests/fleet.rs).
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::tail_file;

/// A Docker registry (Debian's `docker-registry`, distribution 2.x) listening on 127.0.0.1 only,
/// with its config and storage in a temporary directory; stopped on drop. dockerd treats
/// 127.0.0.0/8 as an insecure registry range by default, so plain HTTP push works.
pub struct LocalRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).is_file(),
            "{bin} not found: `apt-get install -y docker-registry` (cargo xtask setup)"
        );
        let dir = tempfile::Builder::new()
            .prefix("sensor-tests-registry-")
            .tempdir()
            .unwrap();
        // A free loopback port: bound, then released for the registry.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.err")).unwrap())
            .spawn()
            .unwrap();
        let mut reg = LocalRegistry {
            child,
            port,
            _dir: dir,
            log,
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}):\n{}",
                    tail_file(&reg.log.with_file_name("registry.err"), 20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr} within 20 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// `127.0.0.1:PORT`, the registry part of a reference pushed to it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
