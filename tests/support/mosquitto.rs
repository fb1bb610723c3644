//! A real Mosquitto broker (Debian package `mosquitto`) on a loopback port
//! chosen at run time, plus a small subscriber and publisher built on
//! rumqttc for assertions, so the tests need no other binaries.
//!
//! The broker runs in the foreground with its own config in a temporary
//! directory and logs to a file there; a failure to start shows that log.
//! [`Mosquitto::kill`] is a SIGKILL (no clean goodbye to clients), and
//! [`Mosquitto::restart`] brings it back on the same port with no state:
//! persistence is off, so retained messages and sessions are gone.
//!
//! [`Mosquitto::start_with_tls`] adds a TLS listener whose certificate (for
//! `127.0.0.1`) is signed by a throwaway CA made with the `openssl` command.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// How long the broker may take to accept connections.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test client may take to connect, subscribe or publish.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Large enough for every payload the tests send.
const TEST_PACKET_LIMIT: usize = 1024 * 1024;

/// Where Debian installs the broker when it is not on `PATH` (`/usr/sbin`
/// is missing from many users' `PATH`).
const DEBIAN_BINARY: &str = "/usr/sbin/mosquitto";

/// Gives every broker directory and test client its own name.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The broker binary.
///
/// # Panics
///
/// If mosquitto is not installed.
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("mosquitto")).find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("mosquitto is not installed: run scripts/install-test-peers"))
}

/// A running broker; killed when dropped.
pub struct Mosquitto {
    port: u16,
    /// The TLS listener's port, when there is one.
    tls_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    /// Lines added to the generated broker config.
    extra_config: String,
    /// Counts starts, so each run logs to its own file.
    runs: u32,
}

/// Why one start did not work out.
enum StartFailure {
    /// Another process took the port between choosing and binding it.
    PortTaken,
    Other(String),
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// If it is not installed or does not come up (with its log).
    pub async fn start() -> Mosquitto {
        Mosquitto::launch(false, "").await
    }

    /// Like [`start`](Self::start), with `lines` added to the broker's
    /// config (e.g. `max_packet_size 1024`).
    pub async fn start_configured(lines: &str) -> Mosquitto {
        Mosquitto::launch(false, lines).await
    }

    /// Like [`start`](Self::start), plus a TLS listener on another free port;
    /// see [`tls_port`](Self::tls_port) and [`ca_file`](Self::ca_file).
    ///
    /// # Panics
    ///
    /// Also if the `openssl` command is missing or fails.
    pub async fn start_with_tls() -> Mosquitto {
        Mosquitto::launch(true, "").await
    }

    async fn launch(tls: bool, extra_config: &str) -> Mosquitto {
        let binary = binary();
        let dir = std::env::temp_dir().join(unique("scbridge-mosquitto"));
        std::fs::create_dir_all(&dir).expect("create the broker's temporary directory");
        if tls {
            make_certificates(&dir);
        }
        let mut broker = Mosquitto {
            port: 0,
            tls_port: None,
            dir,
            child: None,
            extra_config: extra_config.to_owned(),
            runs: 0,
        };
        for _ in 0..5 {
            broker.port = free_port().await;
            if tls {
                broker.tls_port = Some(free_port().await);
            }
            match broker.spawn(&binary).await {
                Ok(()) => return broker,
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::Other(why)) => panic!("{why}"),
            }
        }
        panic!("mosquitto found every chosen port taken; giving up after 5 tries");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The TLS listener's port (only after [`start_with_tls`](Self::start_with_tls)).
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("the broker was started without TLS")
    }

    /// The PEM file of the CA that signed the TLS listener's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Kills the broker with SIGKILL and waits until it is gone; clients see
    /// their connections drop with no DISCONNECT.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = timeout(STARTUP_TIMEOUT, child.wait()).await;
        }
    }

    /// Kills the broker if it runs and starts it again on the same port.
    ///
    /// # Panics
    ///
    /// If it does not come back (for instance because the port was taken).
    pub async fn restart(&mut self) {
        self.kill().await;
        if self.spawn(&binary()).await.is_err() {
            panic!("mosquitto did not restart on port {}:\n{}", self.port, self.log());
        }
    }

    /// What the current (or last) run has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("mosquitto-{}.log", self.runs))
    }

    async fn spawn(&mut self, binary: &Path) -> Result<(), StartFailure> {
        self.runs += 1;
        let config_path = self.dir.join("mosquitto.conf");
        let mut config = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            self.port
        );
        config.push_str(&self.extra_config);
        config.push('\n');
        if let Some(tls_port) = self.tls_port {
            config.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                self.dir.join("server.pem").display(),
                self.dir.join("server.key").display()
            ));
        }
        std::fs::write(&config_path, config).expect("write the broker config");
        let log = std::fs::File::create(self.log_path()).expect("create the broker log");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StartFailure::Other(format!("cannot run {}: {e}", binary.display())))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log();
                return Err(if log.contains("Address already in use") {
                    StartFailure::PortTaken
                } else {
                    StartFailure::Other(format!("mosquitto exited with {status}:\n{log}"))
                });
            }
            // "running" is logged once the listener is bound, so a connect
            // that succeeds after it reached this broker, not another process.
            if self.log().contains(" running")
                && TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
                && match self.tls_port {
                    Some(port) => TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
                    None => true,
                }
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(StartFailure::Other(format!(
                    "mosquitto did not accept connections on port {} within {STARTUP_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                )));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway CA and a server certificate for `127.0.0.1` signed by it,
/// in `dir`: `ca.pem`, `server.pem`, `server.key`.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the certificate extensions");
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!("req -x509 {new_key} -days 2 -keyout ca.key -out ca.pem"),
        format!("req {new_key} -keyout server.key -out server.csr"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem"
            .to_owned(),
    ];
    let subjects = [Some("/CN=scbridge test CA"), Some("/CN=127.0.0.1"), None];
    for (step, subject) in steps.iter().zip(subjects) {
        let mut command = std::process::Command::new("openssl");
        command.args(step.split_whitespace()).current_dir(dir);
        if let Some(subject) = subject {
            command.args(["-subj", subject]);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (package `openssl`): {e}"));
        assert!(
            output.status.success(),
            "openssl {step} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Started as root, mosquitto reads the key only after switching to its
    // own user; this key protects nothing.
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o644))
        .expect("make the test key readable");
}

/// A loopback port nobody listens on right now.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// One message a [`TestSubscriber`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    /// As published: the subscription asks for Retain As Published, so live
    /// messages keep the flag; retained ones delivered on subscribe have it.
    pub retain: bool,
}

impl Received {
    /// The payload as text (lossy, for messages in assertions).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// An MQTT 5 client subscribed to one filter, collecting what arrives.
/// It stops (without reconnecting) when its connection ends.
pub struct TestSubscriber {
    received: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

/// Connects a subscriber to the broker on `port` and returns once the
/// broker has acknowledged the subscription to `filter`.
///
/// # Panics
///
/// If that does not happen within 10 s.
pub async fn subscribe(port: u16, filter: &str) -> TestSubscriber {
    let mut options = v5::MqttOptions::new(unique("test-sub"), "127.0.0.1", port);
    options.set_max_packet_size(Some(TEST_PACKET_LIMIT as u32));
    let (client, mut eventloop) = v5::AsyncClient::new(options, 16);
    let mut wanted = v5::mqttbytes::v5::Filter::new(filter, v5::mqttbytes::QoS::AtLeastOnce);
    wanted.preserve_retain = true;
    client.try_subscribe_many([wanted]).expect("queue the SUBSCRIBE");
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let (received_tx, received) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        use v5::mqttbytes::v5::Packet;
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(v5::Event::Incoming(Packet::SubAck(ack))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(ack.return_codes);
                    }
                }
                Ok(v5::Event::Incoming(Packet::Publish(p))) => {
                    let _ = received_tx.send(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    });
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let codes = timeout(CLIENT_TIMEOUT, subscribed_rx)
        .await
        .unwrap_or_else(|_| panic!("no SUBACK for `{filter}` within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|_| panic!("the subscriber for `{filter}` lost its connection"));
    assert!(
        codes.iter().all(|c| matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))),
        "the broker refused `{filter}`: {codes:?}"
    );
    TestSubscriber { received, task }
}

impl TestSubscriber {
    /// The next message.
    ///
    /// # Panics
    ///
    /// If none arrives within `wait`.
    pub async fn next_message(&mut self, wait: Duration) -> Received {
        match timeout(wait, self.received.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("the test subscriber's connection ended"),
            Err(_) => panic!("no MQTT message within {wait:?}"),
        }
    }

    /// The next message, or `None` when none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        timeout(wait, self.received.recv()).await.ok().flatten()
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(message)) = timeout(quiet, self.received.recv()).await {
            panic!("expected no message, got {message:?}");
        }
    }
}

impl Drop for TestSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes one message from a fresh MQTT 3.1.1 client, waits until the
/// broker has it (the PUBACK/PUBCOMP, or the write for QoS 0), then
/// disconnects cleanly.
///
/// # Panics
///
/// If that does not finish within 10 s.
pub async fn publish(port: u16, topic: &str, payload: impl Into<Vec<u8>>, qos: u8, retain: bool) {
    use rumqttc::{Event, Outgoing, Packet};
    let qos = match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        2 => rumqttc::QoS::ExactlyOnce,
        other => panic!("QoS {other} does not exist"),
    };
    let payload = payload.into();
    let limit = TEST_PACKET_LIMIT.max(payload.len() + topic.len() + 64);
    let mut options = rumqttc::MqttOptions::new(unique("test-pub"), "127.0.0.1", port);
    options.set_max_packet_size(limit, limit);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    client.try_publish(topic, qos, retain, payload).expect("queue the PUBLISH");
    let done = async {
        let mut disconnecting = false;
        loop {
            let event = eventloop.poll().await.expect("test publisher connection");
            let delivered = match (&event, qos) {
                (Event::Outgoing(Outgoing::Publish(_)), rumqttc::QoS::AtMostOnce) => true,
                (Event::Incoming(Packet::PubAck(_)), rumqttc::QoS::AtLeastOnce) => true,
                (Event::Incoming(Packet::PubComp(_)), rumqttc::QoS::ExactlyOnce) => true,
                (Event::Outgoing(Outgoing::Disconnect), _) => return,
                _ => false,
            };
            if delivered && !disconnecting {
                client.try_disconnect().expect("queue the DISCONNECT");
                disconnecting = true;
            }
        }
    };
    timeout(CLIENT_TIMEOUT, done).await.unwrap_or_else(|_| {
        panic!("publishing to `{topic}` did not finish within {CLIENT_TIMEOUT:?}")
    });
}
