//! Starts the Node SocketCluster peers of `tests/peers` (a real
//! socketcluster-server in `server.js`, a real socketcluster-client in
//! `client.js`) and follows what they print.
//!
//! Both peers print one line per event on stdout; the formats are listed in
//! the header comments of `server.js` and `client.js`. A background task per
//! stream stores every line as it arrives, so a test can wait for a line that
//! was printed before the wait started as well as for one still to come.
//!
//! # Waiting consumes lines
//!
//! `next_line_matching` returns the earliest matching line that no earlier
//! wait has returned, and marks it consumed. Two waits for `CONNECTION` lines
//! therefore return the first and then the second connection, and waiting
//! for `SUBSCRIBE` after `CONNECTION` still finds a `SUBSCRIBE` line that was
//! printed in between. `count_lines` and `lines_so_far` see every line,
//! consumed or not, for assertions on exact counts. `consume_all` marks
//! everything printed so far as consumed, for "from now on" waits.
//!
//! Ports are never fixed: the server listens on port 0 and reports the port
//! the system gave it, and a restart reuses that port.

use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout, timeout_at};

/// How long a peer may take to start (print `READY` or `CONNECTED`).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a server command may take; above the server's default 10 s ack
/// timeout so that an unanswered `invoke` still reports its error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a peer may take to exit after it was asked to, or after it
/// finished its work.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How often [`wait_until`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many of the last lines of each stream a failure message shows.
const DIAGNOSTIC_TAIL: usize = 40;

/// Lines a server command prints as its answer (the rest of its output is
/// events that merely happened at the same time).
const COMMAND_REPLY_PREFIXES: [&str; 4] = ["TOKEN ", "INVOKE_RESULT ", "INVOKE_ERROR ", "SOCKETS"];

/// The directory holding `server.js`, `client.js` and their `node_modules`.
///
/// # Panics
///
/// If `node_modules` has not been installed there.
pub fn peers_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("peers");
    let modules = dir.join("node_modules");
    assert!(
        modules.is_dir(),
        "{} is missing: run `npm ci --prefix tests/peers` first (the project's test script does this)",
        modules.display()
    );
    dir
}

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// Every line one output stream of a peer has printed so far, shared between
/// the task that reads the stream and the test that waits on it.
///
/// Cloning gives another handle on the same lines.
#[derive(Clone)]
pub struct Lines {
    /// The lines and the wake-up for waiters.
    inner: Arc<LinesInner>,
}

/// The shared part of [`Lines`].
struct LinesInner {
    /// The lines and their bookkeeping.
    state: Mutex<LinesState>,
    /// Woken whenever a line arrives or the stream closes.
    changed: Notify,
}

/// The lines of a stream and which of them waits have consumed.
#[derive(Default)]
struct LinesState {
    /// Every line, in arrival order, without its line ending.
    lines: Vec<String>,
    /// `consumed[i]` is true once a wait has returned `lines[i]`.
    consumed: Vec<bool>,
    /// Counts the processes that have written into these lines (a restarted
    /// server writes into the same lines), so that the end of an old
    /// process's stream does not mark the new one closed.
    epoch: u64,
    /// The current process has closed the stream (it has exited).
    closed: bool,
}

impl Lines {
    /// Empty lines with no stream attached.
    fn new() -> Self {
        Lines {
            inner: Arc::new(LinesInner {
                state: Mutex::new(LinesState::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// Locks the state. A panic elsewhere while the lock was held cannot
    /// leave the state half-updated, so a poisoned lock is still usable.
    fn state(&self) -> MutexGuard<'_, LinesState> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `stream` line by line in a background task until it ends,
    /// appending every line.
    fn follow(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let epoch = {
            let mut state = self.state();
            state.epoch += 1;
            state.closed = false;
            state.epoch
        };
        let lines = self.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buffer);
                        lines.push(text.trim_end_matches(['\n', '\r']).to_owned());
                    }
                }
            }
            lines.close(epoch);
        });
    }

    /// Appends one line and wakes the waiters.
    fn push(&self, line: String) {
        {
            let mut state = self.state();
            state.lines.push(line);
            state.consumed.push(false);
        }
        self.inner.changed.notify_waiters();
    }

    /// Marks the stream of process `epoch` as ended.
    fn close(&self, epoch: u64) {
        {
            let mut state = self.state();
            if state.epoch == epoch {
                state.closed = true;
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// A copy of every line so far, consumed or not.
    pub fn snapshot(&self) -> Vec<String> {
        self.state().lines.clone()
    }

    /// How many lines have arrived so far.
    pub fn len(&self) -> usize {
        self.state().lines.len()
    }

    /// Whether no line has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many lines so far, consumed or not, start with `prefix`.
    ///
    /// Include the separating space when a shorter name would also match
    /// (`"INVOKE "` rather than `"INVOKE"`, which also counts
    /// `INVOKE_RESULT` lines).
    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        self.state().lines.iter().filter(|line| line.starts_with(prefix)).count()
    }

    /// Marks every line so far as consumed: later waits only see lines that
    /// arrive after this call.
    pub fn consume_all(&self) {
        let mut state = self.state();
        state.consumed.iter_mut().for_each(|consumed| *consumed = true);
    }

    /// Whether the process writing these lines has closed the stream.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Waits for the earliest unconsumed line that satisfies `matches`,
    /// marks it consumed and returns it.
    ///
    /// Returns `None` if no such line arrives within `limit`, or if the
    /// stream closes first. `matches` runs while the lines are locked, so it
    /// must not call back into these lines.
    pub async fn wait_for(
        &self,
        mut matches: impl FnMut(&str) -> bool,
        limit: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            // Register for the wake-up before looking, so a line pushed
            // between the look and the wait is not missed.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut guard = self.state();
                let state = &mut *guard;
                let found = (0..state.lines.len())
                    .find(|&i| !state.consumed[i] && matches(&state.lines[i]));
                if let Some(i) = found {
                    state.consumed[i] = true;
                    return Some(state.lines[i].clone());
                }
                if state.closed {
                    return None;
                }
            }
            timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// Waits for the first line at index `start` or later that satisfies
    /// `matches`, consumed or not, and returns its index. `None` on timeout
    /// or when the stream closes first.
    pub async fn wait_for_index(
        &self,
        start: usize,
        mut matches: impl FnMut(&str) -> bool,
        limit: Duration,
    ) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.state();
                let found = (start..state.lines.len()).find(|&i| matches(&state.lines[i]));
                if found.is_some() {
                    return found;
                }
                if state.closed {
                    return None;
                }
            }
            timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// Waits until the stream has closed; false if it is still open after
    /// `limit`.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return true;
            }
            if timeout_at(deadline, changed).await.is_err() {
                return self.is_closed();
            }
        }
    }

    /// The last `count` lines, one per line, for failure messages.
    fn tail(&self, count: usize) -> String {
        let state = self.state();
        let skip = state.lines.len().saturating_sub(count);
        let mut text = String::new();
        if skip > 0 {
            text.push_str(&format!("    ... ({skip} earlier lines)\n"));
        }
        for line in &state.lines[skip..] {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        if state.lines.is_empty() {
            text.push_str("    (nothing)\n");
        }
        text
    }
}

// ---------------------------------------------------------------------------
// Process plumbing shared by the server and the client
// ---------------------------------------------------------------------------

/// A running `node` process and the lines it prints.
struct NodeProcess {
    /// What failure messages call it, e.g. `server.js on port 41234`.
    name: String,
    /// The process; killed if dropped.
    child: Child,
    /// Its stdin; `None` once closed. The lock also keeps server commands
    /// from interleaving.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
}

/// Starts `node <args>` in [`peers_dir`] with `env` added to the environment,
/// its stdout and stderr followed by `stdout` and `stderr`.
fn spawn_node(
    name: String,
    args: &[String],
    env: &[(String, String)],
    stdout: &Lines,
    stderr: &Lines,
) -> NodeProcess {
    let mut command = Command::new("node");
    command
        .args(args)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start `node {}`: {error}", args.join(" ")));
    stdout.follow(child.stdout.take().expect("stdout was requested as a pipe"));
    stderr.follow(child.stderr.take().expect("stderr was requested as a pipe"));
    let stdin = child.stdin.take();
    NodeProcess { name, child, stdin: tokio::sync::Mutex::new(stdin) }
}

impl NodeProcess {
    /// Writes one line to the process's stdin.
    async fn write_line(stdin: &mut Option<ChildStdin>, name: &str, line: &str) {
        assert!(!line.contains('\n'), "a line for {name} must not contain a newline: {line:?}");
        let pipe = stdin.as_mut().unwrap_or_else(|| panic!("the stdin of {name} is closed"));
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        pipe.write_all(&bytes)
            .await
            .unwrap_or_else(|error| panic!("cannot write {line:?} to {name}: {error}"));
        pipe.flush()
            .await
            .unwrap_or_else(|error| panic!("cannot flush the stdin of {name}: {error}"));
    }

    /// Kills the process (SIGKILL) and waits for it.
    async fn kill(&mut self) {
        // An error here means it has already exited, which is what we want.
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits for the exit; kills it if it takes longer
    /// than [`EXIT_TIMEOUT`].
    async fn terminate(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            if !super::send_signal(pid, libc::SIGTERM) {
                let _ = self.child.start_kill();
            }
        }
        match timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("waiting for a child process"),
            Err(_) => {
                self.kill().await;
                panic!("{} did not exit within {EXIT_TIMEOUT:?} of SIGTERM", self.name);
            }
        }
    }
}

/// A failure message: what was expected, then the last lines of both
/// streams.
fn failure_report(name: &str, what: &str, stdout: &Lines, stderr: &Lines) -> String {
    format!(
        "{name}: {what}\n  stdout:\n{}  stderr:\n{}",
        stdout.tail(DIAGNOSTIC_TAIL),
        stderr.tail(DIAGNOSTIC_TAIL)
    )
}

/// [`Lines::wait_for`] on `stdout` that panics with both streams' tails.
async fn expect_line(
    name: &str,
    stdout: &Lines,
    stderr: &Lines,
    matches: impl FnMut(&str) -> bool,
    limit: Duration,
    what: &str,
) -> String {
    if let Some(line) = stdout.wait_for(matches, limit).await {
        return line;
    }
    let problem = if stdout.is_closed() {
        // Let the last words on stderr arrive before showing them.
        stderr.wait_closed(Duration::from_secs(1)).await;
        format!("exited without printing a {what}")
    } else {
        format!("no {what} within {limit:?}")
    };
    panic!("{}", failure_report(name, &problem, stdout, stderr));
}

/// The line-waiting methods, identical on [`ScServer`] and [`JsClient`].
macro_rules! line_waits {
    () => {
        /// Waits for the next unconsumed stdout line satisfying `matches`
        /// (see the module docs), consumes it and returns it.
        ///
        /// # Panics
        ///
        /// If none arrives within `limit` or the process exits first; the
        /// message shows the last lines of stdout and stderr.
        pub async fn next_line_matching(
            &self,
            matches: impl FnMut(&str) -> bool,
            limit: Duration,
        ) -> String {
            expect_line(
                &self.process.name,
                &self.stdout,
                &self.stderr,
                matches,
                limit,
                "matching line",
            )
            .await
        }

        /// Like [`Self::next_line_matching`], but `None` instead of a panic.
        /// Useful to check that something does *not* happen within a time.
        pub async fn try_next_line_matching(
            &self,
            matches: impl FnMut(&str) -> bool,
            limit: Duration,
        ) -> Option<String> {
            self.stdout.wait_for(matches, limit).await
        }

        /// Waits for the next unconsumed stdout line starting with `prefix`,
        /// consumes it and returns it; panics like
        /// [`Self::next_line_matching`].
        pub async fn next_line_with_prefix(&self, prefix: &str, limit: Duration) -> String {
            expect_line(
                &self.process.name,
                &self.stdout,
                &self.stderr,
                |line| line.starts_with(prefix),
                limit,
                &format!("line starting with {prefix:?}"),
            )
            .await
        }

        /// Every stdout line so far, consumed or not.
        pub fn lines_so_far(&self) -> Vec<String> {
            self.stdout.snapshot()
        }

        /// How many stdout lines so far start with `prefix`, consumed or
        /// not (see [`Lines::count_with_prefix`]).
        pub fn count_lines(&self, prefix: &str) -> usize {
            self.stdout.count_with_prefix(prefix)
        }

        /// Marks every stdout line so far as consumed.
        pub fn consume_all(&self) {
            self.stdout.consume_all();
        }

        /// The stdout lines, for waits and counts beyond the methods above.
        pub fn stdout(&self) -> &Lines {
            &self.stdout
        }

        /// The stderr lines (with `--raw`, the server's frame log).
        pub fn stderr(&self) -> &Lines {
            &self.stderr
        }
    };
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls")
}

/// The CA that signed the test server's certificate.
pub fn test_ca_file() -> PathBuf {
    tls_dir().join("ca.pem")
}

/// How to start `server.js`.
#[derive(Clone, Debug)]
pub struct ScServerOptions {
    /// SocketCluster protocol version, 1 or 2 (only the ping/pong tokens
    /// differ).
    pub protocol: u8,
    /// Reject `#subscribe` and `#publish` from unauthenticated sockets
    /// (`--auth`).
    pub auth_required: bool,
    /// Server ping interval (`SC_PING_INTERVAL`); the server default is 8 s.
    pub ping_interval_ms: Option<u64>,
    /// Server pong timeout (`SC_PING_TIMEOUT`), also sent to clients in the
    /// handshake; the server default is 30 s.
    pub ping_timeout_ms: Option<u64>,
    /// How long the server waits for answers to its own invokes
    /// (`SC_ACK_TIMEOUT`); the server default is 10 s.
    pub ack_timeout_ms: Option<u64>,
    /// Port to listen on; `None` lets the system choose.
    pub port: Option<u16>,
    /// Log every frame on stderr (`--raw`); see [`ScServer::raw_frames`].
    pub raw_log: bool,
    /// More environment for the server, e.g. `SC_PASSWORD`, `SC_PATH`,
    /// `SC_HANDSHAKE_TIMEOUT`, `SC_NO_CLIENT_PUBLISH=1`,
    /// `SC_BATCH_ON_HANDSHAKE=1`.
    pub extra_env: Vec<(String, String)>,
    /// Serve `wss://` with the test certificate in `tests/data/tls`.
    pub tls: bool,
}

impl Default for ScServerOptions {
    fn default() -> Self {
        ScServerOptions {
            protocol: 2,
            auth_required: false,
            ping_interval_ms: None,
            ping_timeout_ms: None,
            ack_timeout_ms: None,
            port: None,
            raw_log: false,
            extra_env: Vec::new(),
            tls: false,
        }
    }
}

impl ScServerOptions {
    /// The defaults: protocol 2, no auth, server timings, ephemeral port.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses protocol version `version` (1 or 2).
    pub fn protocol(mut self, version: u8) -> Self {
        assert!(version == 1 || version == 2, "protocol must be 1 or 2, not {version}");
        self.protocol = version;
        self
    }

    /// Requires authentication for `#subscribe` and `#publish`.
    pub fn auth_required(mut self) -> Self {
        self.auth_required = true;
        self
    }

    /// Sets the server's ping interval.
    pub fn ping_interval_ms(mut self, ms: u64) -> Self {
        self.ping_interval_ms = Some(ms);
        self
    }

    /// Sets the server's pong timeout (also the clients' ping timeout).
    pub fn ping_timeout_ms(mut self, ms: u64) -> Self {
        self.ping_timeout_ms = Some(ms);
        self
    }

    /// Sets the server's ack timeout for its own invokes.
    pub fn ack_timeout_ms(mut self, ms: u64) -> Self {
        self.ack_timeout_ms = Some(ms);
        self
    }

    /// Listens on `port` instead of an ephemeral one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Logs every frame on stderr.
    pub fn raw_log(mut self) -> Self {
        self.raw_log = true;
        self
    }

    /// Serves `wss://` with `tests/data/tls/server.pem` (signed by
    /// [`test_ca_file`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Adds one environment variable for the server.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The `node` arguments for listening on `port` (0: ephemeral).
    fn args(&self, port: u16) -> Vec<String> {
        let mut args = vec![
            "server.js".to_owned(),
            "--port".to_owned(),
            port.to_string(),
            "--proto".to_owned(),
            self.protocol.to_string(),
            // If the test process dies without killing the server, its end
            // of stdin closes and the server goes too.
            "--exit-with-stdin".to_owned(),
        ];
        if self.auth_required {
            args.push("--auth".to_owned());
        }
        if self.raw_log {
            args.push("--raw".to_owned());
        }
        if self.tls {
            let dir = tls_dir();
            for (flag, file) in [("--tls-cert", "server.pem"), ("--tls-key", "server-key.pem")] {
                args.push(flag.to_owned());
                args.push(dir.join(file).display().to_string());
            }
        }
        args
    }

    /// The environment for the server.
    fn env_vars(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (key, value) in [
            ("SC_PING_INTERVAL", self.ping_interval_ms),
            ("SC_PING_TIMEOUT", self.ping_timeout_ms),
            ("SC_ACK_TIMEOUT", self.ack_timeout_ms),
        ] {
            if let Some(ms) = value {
                env.push((key.to_owned(), ms.to_string()));
            }
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// The WebSocket path the server will serve.
    fn path(&self) -> String {
        self.extra_env
            .iter()
            .rev()
            .find(|(key, _)| key == "SC_PATH")
            .map_or_else(|| "/socketcluster/".to_owned(), |(_, path)| path.clone())
    }
}

/// A running `server.js`: a real socketcluster-server on 127.0.0.1.
///
/// Killed when dropped.
pub struct ScServer {
    /// What it was started with.
    options: ScServerOptions,
    /// The port it listens on (kept across restarts).
    port: u16,
    /// The current process.
    process: NodeProcess,
    /// Stdout of this process and of every restarted one.
    stdout: Lines,
    /// Stderr of this process and of every restarted one.
    stderr: Lines,
}

impl ScServer {
    /// Starts the server and waits for its `READY <port>` line.
    ///
    /// # Panics
    ///
    /// If it does not report ready within [`STARTUP_TIMEOUT`]; the message
    /// shows what it printed.
    pub async fn start(options: ScServerOptions) -> ScServer {
        let stdout = Lines::new();
        let stderr = Lines::new();
        let requested = options.port.unwrap_or(0);
        let process = spawn_node(
            format!("server.js (port {requested})"),
            &options.args(requested),
            &options.env_vars(),
            &stdout,
            &stderr,
        );
        let mut server = ScServer { options, port: 0, process, stdout, stderr };
        server.port = server.wait_ready(requested).await;
        server.process.name = format!("server.js on port {}", server.port);
        server
    }

    /// Waits for `READY <port>` (any port when `expected` is 0) and returns
    /// the port.
    async fn wait_ready(&self, expected: u16) -> u16 {
        let line = expect_line(
            &self.process.name,
            &self.stdout,
            &self.stderr,
            |line| line.starts_with("READY "),
            STARTUP_TIMEOUT,
            "READY line",
        )
        .await;
        let port: u16 = line["READY ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("bad READY line {line:?}: {error}"));
        assert!(
            expected == 0 || port == expected,
            "server.js listens on {port}, not on the requested {expected}"
        );
        port
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebSocket URL, `ws://127.0.0.1:PORT/socketcluster/` (or the
    /// `SC_PATH` given in the options).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{}", self.port, self.options.path())
    }

    /// The options it was started with.
    pub fn options(&self) -> &ScServerOptions {
        &self.options
    }

    line_waits!();

    /// Waits for the next `CONNECTION` line and returns its socket id.
    pub async fn next_socket_id(&self, limit: Duration) -> String {
        let line = self.next_line_with_prefix("CONNECTION ", limit).await;
        line.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("bad CONNECTION line {line:?}"))
            .to_owned()
    }

    /// Runs one stdin command (see `server.js`) and returns its reply lines
    /// (`TOKEN`, `INVOKE_RESULT`, `INVOKE_ERROR`, `SOCKETS`), which it
    /// consumes, as it does the closing `OK` line. Event lines printed
    /// meanwhile are left for later waits.
    ///
    /// # Panics
    ///
    /// If the server answers `ERR`, or not within [`COMMAND_TIMEOUT`].
    pub async fn command(&self, line: &str) -> Vec<String> {
        match self.try_command(line, COMMAND_TIMEOUT).await {
            Ok(reply) => reply,
            Err(error) => panic!(
                "{}",
                failure_report(
                    &self.process.name,
                    &format!("command {line:?} failed: {error}"),
                    &self.stdout,
                    &self.stderr
                )
            ),
        }
    }

    /// Like [`Self::command`], but an `ERR` answer is returned as `Err` with
    /// the server's reason. Still panics on a timeout.
    pub async fn try_command(&self, line: &str, limit: Duration) -> Result<Vec<String>, String> {
        let line = line.trim();
        let ok = format!("OK {line}");
        let err = format!("ERR {line} ");
        let mut stdin = self.process.stdin.lock().await;
        let start = self.stdout.len();
        NodeProcess::write_line(&mut stdin, &self.process.name, line).await;
        let Some(end) =
            self.stdout.wait_for_index(start, |l| l == ok || l.starts_with(&err), limit).await
        else {
            panic!(
                "{}",
                failure_report(
                    &self.process.name,
                    &format!("no answer to command {line:?} within {limit:?}"),
                    &self.stdout,
                    &self.stderr
                )
            );
        };
        let mut state = self.stdout.state();
        state.consumed[end] = true;
        if let Some(reason) = state.lines[end].strip_prefix(&err) {
            return Err(reason.to_owned());
        }
        let mut reply = Vec::new();
        for i in start..end {
            let is_reply =
                COMMAND_REPLY_PREFIXES.iter().any(|prefix| state.lines[i].starts_with(prefix));
            if is_reply && !state.consumed[i] {
                state.consumed[i] = true;
                reply.push(state.lines[i].clone());
            }
        }
        Ok(reply)
    }

    /// A JWT for `username`, signed with the server's key, so the server
    /// accepts it in a handshake or `#authenticate` (valid for a day).
    pub async fn sign_token(&self, username: &str) -> String {
        self.signed(&format!("sign {username}")).await
    }

    /// A JWT for `username` that expired an hour ago.
    pub async fn sign_expired_token(&self, username: &str) -> String {
        self.signed(&format!("sign-expired {username}")).await
    }

    /// Runs a `sign` command and returns the token of its `TOKEN` line.
    async fn signed(&self, command: &str) -> String {
        let reply = self.command(command).await;
        let line = reply
            .iter()
            .find(|line| line.starts_with("TOKEN "))
            .unwrap_or_else(|| panic!("no TOKEN line in the answer to {command:?}: {reply:?}"));
        line.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("bad TOKEN line {line:?}"))
            .to_owned()
    }

    /// Publishes `data` on `channel` from the server side
    /// (`exchange.invokePublish`).
    pub async fn publish(&self, channel: &str, data: &Value) {
        self.command(&format!("publish {channel} {data}")).await;
    }

    /// The ids of the sockets connected right now.
    pub async fn socket_ids(&self) -> Vec<String> {
        let reply = self.command("sockets").await;
        let line = reply
            .iter()
            .find(|line| line.starts_with("SOCKETS"))
            .unwrap_or_else(|| panic!("no SOCKETS line in {reply:?}"));
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    }

    /// The frames logged so far with [`ScServerOptions::raw_log`], each a
    /// JSON object `{"t": ms, "socket": id, "dir": "in"|"out"|"close",
    /// "frame": text}` (`code` and `reason` instead of `frame` for a close).
    pub fn raw_frames(&self) -> Vec<Value> {
        self.stderr
            .snapshot()
            .iter()
            .filter(|line| line.starts_with('{'))
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|frame| frame.get("dir").is_some())
            .collect()
    }

    /// Kills the server (SIGKILL), as a crash would: clients see their
    /// connection drop without a close frame.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Stops the server with SIGTERM, as a service manager would: it closes
    /// every socket with 1001 and exits. Returns its exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let status = self.process.terminate().await;
        status.code()
    }

    /// Starts the server again, with the same options and on the same port,
    /// and waits for `READY`; kills the old process first if it still runs.
    /// The lines continue in the same buffer.
    pub async fn restart(&mut self) {
        self.process.kill().await;
        // Let the old process's output reach the buffer before the new one
        // starts writing.
        self.stdout.wait_closed(EXIT_TIMEOUT).await;
        self.stderr.wait_closed(EXIT_TIMEOUT).await;
        self.process = spawn_node(
            format!("server.js on port {}", self.port),
            &self.options.args(self.port),
            &self.options.env_vars(),
            &self.stdout,
            &self.stderr,
        );
        self.wait_ready(self.port).await;
    }
}

// ---------------------------------------------------------------------------
// A SocketCluster cluster (SCC)
// ---------------------------------------------------------------------------

/// A running `scc-broker.js`: the real scc-broker, which relays pub/sub
/// between the servers of a cluster, on an ephemeral port.
///
/// Killed when dropped.
pub struct SccBroker {
    process: NodeProcess,
    stdout: Lines,
    stderr: Lines,
    port: u16,
    /// Where it and the servers look for the state server.
    state_port: u16,
}

impl SccBroker {
    /// Starts the broker and waits for its `READY <port>` line. It looks
    /// for the cluster's state server on `state_port`, where none answers.
    pub async fn start(state_port: u16) -> SccBroker {
        let stdout = Lines::new();
        let stderr = Lines::new();
        let env = [("SCC_STATE_SERVER_PORT".to_owned(), state_port.to_string())];
        let process = spawn_node(
            "scc-broker.js".to_owned(),
            &["scc-broker.js".to_owned()],
            &env,
            &stdout,
            &stderr,
        );
        let line = expect_line(
            &process.name,
            &stdout,
            &stderr,
            |line| line.starts_with("READY "),
            STARTUP_TIMEOUT,
            "READY line",
        )
        .await;
        let port = line["READY ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("bad READY line {line:?}: {error}"));
        SccBroker { process, stdout, stderr, port, state_port }
    }

    /// The URL servers join the cluster through (`SC_SCC_BROKERS`).
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The options for one server of the cluster: it joins through this
    /// broker, and looks for the state server where the broker does.
    pub fn server_options(&self) -> ScServerOptions {
        ScServerOptions::new()
            .env("SC_SCC_BROKERS", &self.url())
            .env("SC_SCC_STATE_PORT", &self.state_port.to_string())
    }

    line_waits!();
}

// ---------------------------------------------------------------------------
// The JS client
// ---------------------------------------------------------------------------

/// A running `client.js`: a real socketcluster-client.
///
/// Killed when dropped.
pub struct JsClient {
    /// The process.
    process: NodeProcess,
    /// Its stdout.
    stdout: Lines,
    /// Its stderr.
    stderr: Lines,
    /// The socket id of its first connection, once known.
    socket_id: Option<String>,
}

impl JsClient {
    /// Starts `node client.js <args>` as it is: any mode, any options.
    pub async fn spawn(args: &[&str]) -> JsClient {
        let stdout = Lines::new();
        let stderr = Lines::new();
        let mut all = vec!["client.js".to_owned()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let process =
            spawn_node(format!("`client.js {}`", args.join(" ")), &all, &[], &stdout, &stderr);
        JsClient { process, stdout, stderr, socket_id: None }
    }

    /// Starts a subscriber (`client.js sub`) to `channels` on the server at
    /// `port`, with `extra_args` (e.g. `--count`, `--login`), without waiting
    /// for anything.
    pub async fn spawn_subscriber(port: u16, channels: &[&str], extra_args: &[&str]) -> JsClient {
        let channels = channels.join(",");
        let port = port.to_string();
        let mut args = vec!["sub", channels.as_str(), "--port", port.as_str()];
        args.extend_from_slice(extra_args);
        Self::spawn(&args).await
    }

    /// Starts a subscriber like [`Self::spawn_subscriber`] and waits until
    /// every channel is subscribed (consuming the `SUBSCRIBED` lines).
    ///
    /// # Panics
    ///
    /// If a subscription fails or takes longer than [`STARTUP_TIMEOUT`].
    pub async fn subscribe(port: u16, channels: &[&str], extra_args: &[&str]) -> JsClient {
        let mut client = Self::spawn_subscriber(port, channels, extra_args).await;
        client.socket_id = Some(client.wait_connected().await);
        for channel in channels {
            let subscribed = format!("SUBSCRIBED {channel}");
            let failed = format!("SUBFAIL {channel} ");
            let line = client
                .next_line_matching(
                    |line| line == subscribed || line.starts_with(&failed),
                    STARTUP_TIMEOUT,
                )
                .await;
            assert_eq!(line, subscribed, "subscribing to {channel} failed");
        }
        client
    }

    /// Starts a publisher (`client.js pub`) sending `n` messages on
    /// `channel`: `data_json` in every message, or `{"seq":i,"ts":ms}` when
    /// `None`; with `transmit`, fire-and-forget instead of acked. Wait for
    /// it with [`Self::wait_exit`] (0 when every publish succeeded).
    pub async fn publish(
        port: u16,
        channel: &str,
        data_json: Option<&str>,
        n: usize,
        transmit: bool,
    ) -> JsClient {
        let port = port.to_string();
        let n = n.to_string();
        let mut args = vec!["pub", channel, "--port", port.as_str(), "--n", n.as_str()];
        if let Some(data) = data_json {
            args.extend_from_slice(&["--data", data]);
        }
        if transmit {
            args.push("--transmit");
        }
        Self::spawn(&args).await
    }

    /// Starts an interactive client (`client.js interactive`, driven with
    /// [`Self::send_line`]) speaking `protocol` and waits until it is
    /// connected.
    pub async fn interactive(port: u16, protocol: u8) -> JsClient {
        Self::interactive_with(port, protocol, &[]).await
    }

    /// Like [`Self::interactive`], with more options (`--token JWT`,
    /// `--path P`, `--reconnect-delay MS`).
    pub async fn interactive_with(port: u16, protocol: u8, extra_args: &[&str]) -> JsClient {
        let port = port.to_string();
        let protocol = protocol.to_string();
        let mut args = vec!["interactive", "--port", port.as_str(), "--proto", protocol.as_str()];
        args.extend_from_slice(extra_args);
        let mut client = Self::spawn(&args).await;
        client.socket_id = Some(client.wait_connected().await);
        client
    }

    /// Waits for the next `CONNECTED` line and returns its socket id.
    pub async fn wait_connected(&self) -> String {
        let line = self.next_line_with_prefix("CONNECTED ", STARTUP_TIMEOUT).await;
        line["CONNECTED ".len()..].trim().to_owned()
    }

    /// The socket id of its first connection, if a constructor waited for
    /// it (it changes on every reconnect; see the `CONNECTED` lines).
    pub fn socket_id(&self) -> Option<&str> {
        self.socket_id.as_deref()
    }

    line_waits!();

    /// The messages received so far, each the JSON of a `MSG` line:
    /// `{"channel": ..., "data": ...}`.
    pub fn messages(&self) -> Vec<Value> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|line| line.strip_prefix("MSG "))
            .map(|text| {
                serde_json::from_str(text).unwrap_or_else(|error| panic!("bad MSG {text}: {error}"))
            })
            .collect()
    }

    /// Writes one command line to an interactive client (`sub <ch>`,
    /// `pub <ch> <json>`, `ipub <ch> <json>`, `invoke <event> <json>`,
    /// `quit`, ...).
    pub async fn send_line(&self, line: &str) {
        let mut stdin = self.process.stdin.lock().await;
        NodeProcess::write_line(&mut stdin, &self.process.name, line).await;
    }

    /// Waits for the client to exit and for all its output to arrive, and
    /// returns its exit code (0 done, 1 a publish or login failed, 2 timed
    /// out; -1 if a signal ended it).
    ///
    /// # Panics
    ///
    /// If it is still running after [`EXIT_TIMEOUT`].
    pub async fn wait_exit(&mut self) -> i32 {
        let status = match timeout(EXIT_TIMEOUT, self.process.child.wait()).await {
            Ok(status) => status.expect("waiting for client.js"),
            Err(_) => panic!(
                "{}",
                failure_report(
                    &self.process.name,
                    &format!("still running after {EXIT_TIMEOUT:?}"),
                    &self.stdout,
                    &self.stderr
                )
            ),
        };
        self.stdout.wait_closed(EXIT_TIMEOUT).await;
        self.stderr.wait_closed(EXIT_TIMEOUT).await;
        status.code().unwrap_or(-1)
    }

    /// Kills the client (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Something [`wait_until`] can poll: a closure returning `bool`, or a
/// closure returning a future of `bool`. `Marker` only tells the two apart.
pub trait Condition<Marker> {
    /// Evaluates the condition once.
    fn check(&mut self) -> impl Future<Output = bool>;
}

/// The [`Condition`] marker for closures returning `bool`.
pub struct PlainCondition;

/// The [`Condition`] marker for closures returning a future.
pub struct AsyncCondition<Fut>(PhantomData<Fut>);

impl<F> Condition<PlainCondition> for F
where
    F: FnMut() -> bool,
{
    fn check(&mut self) -> impl Future<Output = bool> {
        std::future::ready(self())
    }
}

impl<F, Fut> Condition<AsyncCondition<Fut>> for F
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    fn check(&mut self) -> impl Future<Output = bool> {
        self()
    }
}

/// Checks `condition` every 20 ms until it holds.
///
/// `condition` is a closure returning `bool` or a future of `bool`:
/// `wait_until(|| flag.load(Relaxed), ..)` or
/// `wait_until(|| async { server.socket_ids().await.len() == 2 }, ..)`.
///
/// # Panics
///
/// With "timed out after ... waiting until `what`" if it does not hold
/// within `limit`.
pub async fn wait_until<Marker>(
    mut condition: impl Condition<Marker>,
    limit: Duration,
    what: &str,
) {
    let deadline = Instant::now() + limit;
    loop {
        if condition.check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
