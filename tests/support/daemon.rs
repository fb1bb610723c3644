//! The real `scbridge` binary as a process: a temporary config file, a
//! NOTIFY_SOCKET the test owns (so it sees READY=1, WATCHDOG=1, STOPPING=1
//! exactly as systemd would), signals, and the captured log.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// A loopback TCP port that refuses connections and that nobody else can
/// take while this lives: bound, never listening.
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind a loopback port");
        ClosedPort(socket)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().expect("a bound socket has an address").port()
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("scbridge-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub async fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_scbridge"))
        .args(args)
        .env_remove("SCBRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run scbridge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A NOTIFY_SOCKET: what the daemon tells systemd arrives here.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let std = StdDatagram::bind(&path).expect("bind the notify socket");
        std.set_nonblocking(true).expect("nonblocking");
        NotifySocket { socket: UnixDatagram::from_std(std).expect("tokio socket"), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram (one or more `KEY=value` lines).
    pub async fn next(&self, limit: Duration) -> String {
        let mut buffer = vec![0u8; 4096];
        let len = tokio::time::timeout(limit, self.socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no notify message within {limit:?}"))
            .expect("read the notify socket");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    }

    /// Waits for a datagram with this line (e.g. `READY=1`); returns it.
    pub async fn wait_for(&self, line: &str, limit: Duration) -> String {
        self.wait_for_line(|l| l == line, limit).await
    }

    /// Waits for a datagram with a line that starts with `prefix`.
    pub async fn wait_for_prefix(&self, prefix: &str, limit: Duration) -> String {
        self.wait_for_line(|l| l.starts_with(prefix), limit).await
    }

    async fn wait_for_line(&self, wanted: impl Fn(&str) -> bool, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.next(left).await;
            if message.lines().any(&wanted) {
                return message;
            }
        }
    }
}

/// A running `scbridge run`.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<String>>,
    /// Copies stderr into `log` until the pipe closes.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `scbridge run --config CONFIG` with extra environment.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scbridge"));
        command.args(["run", "--config"]).arg(config);
        Daemon::spawn(command, env)
    }

    /// Starts `scbridge run --config CONFIG` with `JOURNAL_STREAM` naming the
    /// device and inode of its stderr, as systemd sets it when a service's
    /// output goes to the journal.
    pub fn start_on_journal_stream(config: &Path) -> Daemon {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(
                r#"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" run --config "$1""#,
            )
            .arg(env!("CARGO_BIN_EXE_scbridge"))
            .arg(config);
        Daemon::spawn(command, &[])
    }

    fn spawn(mut command: Command, env: &[(&str, &str)]) -> Daemon {
        command
            .env_remove("SCBRIDGE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "scbridge=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start scbridge");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                sink.lock().expect("log lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Daemon { child, log, reader: Some(reader) }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub async fn signal(&self, name: &str) {
        let signal = match name {
            "HUP" => libc::SIGHUP,
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            other => panic!("no such signal in these tests: {other}"),
        };
        let pid = self.child.id().expect("running");
        assert!(super::send_signal(pid, signal), "SIG{name} could not be sent to {pid}");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(&mut self, limit: Duration) -> i32 {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("scbridge did not exit within {limit:?}; log:\n{}", self.log())
            })
            .expect("wait for scbridge");
        // The log's last lines may still be in the pipe: read to its end, so
        // that what the test reads next is everything it logged.
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(limit, reader).await;
        }
        status.code().unwrap_or(-1)
    }

    /// The address a listener really bound (the config asks for port 0),
    /// read from its log line: the first line containing `what`, and its
    /// `listen=ADDRESS` field.
    pub async fn listening(&self, what: &str, limit: Duration) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let log = self.log();
            let field = log
                .lines()
                .filter(|line| line.contains(what))
                .find_map(|line| line.split_whitespace().find_map(|f| f.strip_prefix("listen=")));
            if let Some(address) = field {
                return address.parse().unwrap_or_else(|_| panic!("not an address: {address}"));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{what}` line with listen= within {limit:?}; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}
