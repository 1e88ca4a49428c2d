//! A local Docker registry on loopback, for the push chains (tests/tests/detect_registry_chain.rs,
//! tests/tests/fleet.rs).
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Cmd, docker_cli, free_loopback_port, run, tail_file};

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
        let port = free_loopback_port();
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

    /// `docker push reference` (a reference under [`LocalRegistry::host`]); returns the pushed
    /// image's repo digest reference, `HOST/REPO@sha256:...`.
    pub fn push(&self, reference: &str) -> String {
        Cmd::new(docker_cli())
            .args(["push", reference])
            .timeout(Duration::from_secs(120))
            .run();
        let out = run(
            docker_cli(),
            &[
                "image",
                "inspect",
                "--format",
                "{{index .RepoDigests 0}}",
                reference,
            ],
        );
        let repo_digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            repo_digest.contains('@'),
            "no digest after pushing {reference}: {repo_digest:?}"
        );
        repo_digest
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
