//! The real `switchboard serve` as a child process on a free port (for `kill -9` and
//! several-process stories).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestDb, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A gateway child process on a free port.
pub struct Gateway {
    pub child: Child,
    pub base: String,
}

impl Gateway {
    pub async fn start(db: &TestDb) -> Gateway {
        Self::start_with(db, db.dir.path(), &[]).await
    }

    /// On `db`'s database with its own data directory and more environment.
    pub async fn start_with(db: &TestDb, data_dir: &Path, env: &[(&str, &str)]) -> Gateway {
        Self::spawn(db, data_dir, env, Command::new(BIN), Stdio::null()).await
    }

    /// Like [`Gateway::start`], allowed one CPU (`taskset -c 0`): the process then runs its
    /// tasks on the single-threaded runtime (see `main.rs`). `taskset` execs the gateway, so
    /// the child's pid is the gateway's. Its standard error goes to `log` (appended).
    pub async fn start_on_one_core(db: &TestDb, log: &Path) -> Gateway {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", BIN]);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the gateway's log");
        Self::spawn(db, db.dir.path(), &[], command, stderr.into()).await
    }

    async fn spawn(
        db: &TestDb,
        data_dir: &Path,
        env: &[(&str, &str)],
        mut command: Command,
        stderr: Stdio,
    ) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        command
            .arg("serve")
            .env("SWITCHBOARD_DATABASE_URL", &db.url)
            .env("SWITCHBOARD_DATA_DIR", data_dir)
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_OUTBOX_BASE_DELAY_MS", "100")
            .env("SWITCHBOARD_OUTBOX_MAX_DELAY_MS", "300")
            .env("SWITCHBOARD_OUTBOX_MAX_ATTEMPTS", "1000")
            .env("SWITCHBOARD_OUTBOX_LEASE_MS", "1500")
            .env("SWITCHBOARD_OUTBOX_SEND_TIMEOUT_MS", "1000")
            .env("SWITCHBOARD_OUTBOX_POLL_MS", "50")
            // The callback receiver listens on loopback: the operator's exception.
            .env("SWITCHBOARD_EGRESS_ALLOW", "127.0.0.0/8,localhost")
            .env("SWITCHBOARD_LLM_PROVIDER", "none")
            .env("SWITCHBOARD_EMBED_MODEL", "none")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn gateway");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("gateway ready", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{base}/readyz");
            async move {
                http.get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Gateway { child, base }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
