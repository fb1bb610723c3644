//! `scbridge-bench`: measures the whole bridge, as a separate process,
//! against the real peers, all on loopback with ports chosen at run time.
//!
//! Run it with `scripts/bench` (builds release first); `--help` lists the
//! options.
//!
//! # What runs
//!
//! - the real socketcluster-server (`node tests/peers/server.js --port 0`);
//! - Mosquitto, with a config written per run (`max_queued_messages 0`, so the
//!   broker never drops QoS 0 messages for a subscriber that lags, and
//!   `set_tcp_nodelay true`, so its deliveries do not wait out Nagle's
//!   algorithm: a live installation's broker wants both);
//! - `scbridge run` with a config written per run: cables objects `load/*` go to
//!   OSC `/load/*` and to MQTT `bench/load/+`; OSC `/rev/*` goes back to
//!   cables objects `rev/{1}`. The OSC route uses `objects = "json"`: one
//!   datagram per message carrying the payload as one JSON string, so `seq`
//!   and the send time `t` arrive together and exactly. `split` would send
//!   three datagrams per message (loss and rate no longer per message) and
//!   a float32 cannot hold a microsecond timestamp;
//! - in this process: a load generator (a Rust `ScClient` publishing cables
//!   envelopes `{"topic":"load/x","clientId":"gen","payload":{"seq","t","v"}}`
//!   on `bench/objects`), and three receivers: a UDP socket for the bridge's
//!   OSC, an MQTT subscriber on `bench/load/#` (QoS 0), and the *plain*
//!   subscriber, a second `ScClient` subscribed to `bench/objects` on the
//!   same server with no bridge in between.
//!
//! `t` is the send time in microseconds since the Unix epoch, taken when the
//! generator hands the message to its client; every receiver takes the same
//! clock on arrival, so latency is arrival minus `t` (one machine, one clock).
//!
//! # Phases (each run starts every process afresh)
//!
//! - warm-up: until the plain subscriber, the OSC receiver and the MQTT
//!   subscriber have each received a warm-up publish; then the idle RSS;
//! - `burst`: `--burst` messages as fast as the generator can send them;
//! - `paced_1k`, `paced_10k`: 1,000 and 10,000 messages/s, by due times;
//! - `reverse_osc`: OSC datagrams `/rev/aN [seq i, t h, 0.5 f]` to the
//!   bridge's listen port, `--reverse-addresses` addresses at `--reverse-hz`
//!   each, received by the plain subscriber as cables envelopes `rev/aN`;
//! - `reverse_mqtt`: the same load as MQTT publishes `[seq, t, 0.5]` on
//!   `benchrev/aN` through Mosquitto, received as `rev/maN`.
//!
//! The reverse phases spread their messages evenly over time (one due time
//! each), so a latency is the path's and not a queue's behind a frame;
//! `--reverse-frames` sends each frame's addresses back to back instead, as
//! TouchDesigner does with a CHOP's channels.
//!
//! Each phase ends when every receiver has everything, or when nothing has
//! arrived for 1 s (bounded at 30 s).
//!
//! # How to read the figures
//!
//! - The plain subscriber is the ceiling: the server delivers the same
//!   publishes to it and to the bridge, so `osc_over_plain_rate` and
//!   `mqtt_over_plain_rate` (delivered msg/s through the bridge divided by
//!   the plain rate, in the same burst) are 1.0 for a bridge that keeps up
//!   with the server, and fall below 1.0 by the share the bridge loses or
//!   delays. A rate is messages received over the time from the phase's
//!   first send to the last arrival.
//! - `plain_over_offered_rate` (paced phases): below 1.0 the server itself
//!   did not keep up with the offered rate, so every output's latency
//!   includes the server's queue; the differences to plain still isolate
//!   the bridge.
//! - `added_p50_us`/`added_p99_us`: the bridge's percentile minus the plain
//!   subscriber's for the same messages: what the extra hop costs. For the
//!   reverse phases the reference is the plain subscriber of the paced
//!   phase at the same rate in the same run (1,000/s by default): the same
//!   publish-to-delivery path through the server, without the bridge.
//! - `osc_behind_plain_p50_us`/`_p99_us` (and `mqtt_`): message by
//!   message, how much later the output had it than the plain subscriber,
//!   then the percentiles of that. The server hands each publish to both
//!   subscribers at once, so its queueing, which dominates the p99 at
//!   10,000/s, cancels out here; it does not cancel out of a difference of
//!   two p99s.
//! - `broker` (paced phases): every message is also published by this
//!   process straight to Mosquitto on `benchref/x` and received by the same
//!   MQTT subscriber: the broker's own hop, which the MQTT output pays and
//!   the plain subscriber does not. `mqtt_added_beyond_broker_*` is the
//!   MQTT added latency minus that hop: the bridge's share, approximately
//!   (percentiles do not subtract exactly).
//! - `bridge_cpu_us_per_msg`: scbridge's user+system CPU over the phase
//!   (from `/proc/<pid>/stat`, in clock ticks of `getconf CLK_TCK`, 100 if
//!   that fails) divided by the messages sent into it; each load message
//!   becomes two outputs (OSC and MQTT). On loopback the kernel delivers a
//!   datagram or segment into the receiver's socket on the sender's time,
//!   so this includes that work. `bridge_cpu_s_per_100k` is the same
//!   figure scaled to 100,000 messages.
//! - `floor_cpu_us_per_msg`: after each load phase, the same number of
//!   messages (two seconds' worth at a paced rate), of the size of the
//!   frame the server sends, at the same rate, through a bare forwarder
//!   thread in this process: one blocking TCP read per wake-up, then per
//!   message one UDP `send_to` and one TCP write, nothing else. Its CPU per
//!   message is what the sockets alone cost on this machine;
//!   `bridge_cpu_over_floor` is scbridge's CPU per message over it, in the
//!   same run. `floor_msgs_per_wakeup` is the messages per read that
//!   returned data.
//! - `paced_floor_cpu_us_per_msg` (burst only): flat out, the floor reads
//!   far more messages per wake-up than scbridge, which gets them as fast
//!   as the server sends them. This floor is fed the way scbridge was: at
//!   the plain subscriber's measured rate, in writes of as many messages
//!   as scbridge took per wake-up (`paced_floor_msgs_per_wakeup` is what
//!   it then read per wake-up); `bridge_cpu_over_paced_floor` is
//!   scbridge's CPU over it.
//! - `bridge_msgs_per_wakeup`: messages over the times scbridge's thread
//!   went to sleep for want of work (voluntary context switches). Every
//!   wake-up costs the kernel a fixed amount whatever the turn handles, so
//!   the CPU per message falls as this rises.
//! - `rss.idle_kib` is VmRSS after warm-up; `rss.peak_kib` is VmHWM at the
//!   end of the run.
//! - `rx_socket_drops`: datagrams the kernel dropped at this process's OSC
//!   receive socket (its receive buffer was full): OSC loss that the
//!   measurement, not scbridge, caused. `bridge_socket_drops` (reverse
//!   phase): the same at scbridge's OSC listen socket, which is scbridge's
//!   loss. Both from the `drops` column of `/proc/net/udp`.
//!
//! With `--runs N` every figure is computed within one run and the summary
//! shows the median across runs. `--soak SECS` replaces the phases with
//! 5,000 msg/s for SECS seconds, sampling scbridge's RSS every 10 s;
//! `soak.rss_end_over_reference` is the RSS at the end over the RSS after
//! the first minute (for a soak of a minute or less, after half of it).
//!
//! The JSON object printed last (and written by `--json`) holds
//! `settings`, `median` (each figure's median over the runs) and `runs`
//! (every run's own figures); a figure that could not be measured is null.
//! `host.loadavg_1m_*` records how busy the machine was: other work on it
//! shows in every latency.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use rosc::{OscMessage, OscPacket, OscType};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use scbridge::sc::{Incoming, ScClient, ScConfig, ScStats};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// The cables channel the bridge serves; envelopes travel on `bench/objects`.
const OBJECTS_CHANNEL: &str = "bench/objects";
/// How long a peer may take to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the warm-up may take before the run is declared broken.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// A phase has drained once nothing arrived for this long. A run without
/// loss never waits for it; long enough that a busy machine's stall (a
/// debug build in the test suite) is not taken for loss.
const QUIET: Duration = Duration::from_secs(3);
/// The longest a phase may drain after its last send.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How often the RSS is sampled in soak mode.
const SOAK_SAMPLE: Duration = Duration::from_secs(10);
/// The soak rate, through both outputs.
const SOAK_RATE: f64 = 5000.0;
/// The kernel receive buffer asked for on this process's OSC socket (the
/// kernel caps it at net.core.rmem_max).
const RX_BUFFER_BYTES: i32 = 8 << 20;
/// The generator waits while its client holds more than this many packets.
const GENERATOR_BACKLOG: usize = 100_000;

/// Measures scbridge end to end against the real peers (all on loopback).
#[derive(Parser, Debug)]
#[command(name = "scbridge-bench", about)]
struct Cli {
    /// Runs; each figure is computed within one run, the summary shows the
    /// median (default 3, or 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Messages in the burst phase (default 50000, or 2000 with --quick).
    #[arg(long)]
    burst: Option<u64>,
    /// Seconds of each paced phase (default 10 at 1,000/s and 5 at
    /// 10,000/s; with --quick 1 and 0.5).
    #[arg(long)]
    paced_secs: Option<f64>,
    /// Distinct OSC addresses (/rev/a0 ...) in the reverse phase; 500 with
    /// --reverse-hz 60 is the "500 addresses at 60 Hz" case (30k msg/s).
    #[arg(long, default_value_t = 10)]
    reverse_addresses: u32,
    /// Messages per second per address in the reverse phase.
    #[arg(long, default_value_t = 100)]
    reverse_hz: u32,
    /// Seconds of the reverse phase (default 5, or 1 with --quick).
    #[arg(long)]
    reverse_secs: Option<f64>,
    /// Coalesce the reverse routes to at most this many messages per second
    /// per address (`max_rate`); "lost" then counts the values replaced by
    /// newer ones, by design.
    #[arg(long)]
    reverse_max_rate: Option<f64>,
    /// Send each reverse frame's addresses back to back, as TouchDesigner
    /// sends a CHOP's channels once per frame, instead of spreading every
    /// message evenly over time.
    #[arg(long)]
    reverse_frames: bool,
    /// Small numbers, one run: a smoke test of the whole setup.
    #[arg(long)]
    quick: bool,
    /// Also write the summary JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Soak mode: 5,000 msg/s through both outputs for SECS seconds,
    /// sampling scbridge's RSS every 10 s (replaces the phases).
    #[arg(long, value_name = "SECS")]
    soak: Option<u64>,
    /// The scbridge binary (default: `scbridge` next to this binary).
    #[arg(long)]
    scbridge: Option<PathBuf>,
}

/// What one invocation measures, with the defaults resolved.
#[derive(Debug, Clone)]
struct Settings {
    runs: usize,
    burst: u64,
    /// (name, messages per second, seconds)
    paced: Vec<(&'static str, f64, f64)>,
    reverse_addresses: u32,
    reverse_hz: u32,
    reverse_secs: f64,
    reverse_max_rate: Option<f64>,
    reverse_frames: bool,
    soak: Option<u64>,
    scbridge: PathBuf,
    root: PathBuf,
    clk_tck: f64,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Result<Settings> {
        let quick = cli.quick;
        let runs = cli.runs.unwrap_or(if quick { 1 } else { 3 });
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let burst = cli.burst.unwrap_or(if quick { 2000 } else { 50_000 });
        let (slow, fast) = match cli.paced_secs {
            Some(secs) => (secs, secs),
            None if quick => (1.0, 0.5),
            None => (10.0, 5.0),
        };
        if cli.reverse_addresses == 0 || cli.reverse_hz == 0 {
            bail!("--reverse-addresses and --reverse-hz must be at least 1");
        }
        let scbridge = match &cli.scbridge {
            Some(path) => path.clone(),
            None => {
                std::env::current_exe().context("locate this binary")?.with_file_name("scbridge")
            }
        };
        if !scbridge.is_file() {
            bail!("{} not found: build it with `cargo build --release`", scbridge.display());
        }
        Ok(Settings {
            runs,
            burst,
            paced: vec![("paced_1k", 1000.0, slow), ("paced_10k", 10_000.0, fast)],
            reverse_addresses: cli.reverse_addresses,
            reverse_hz: cli.reverse_hz,
            reverse_secs: cli.reverse_secs.unwrap_or(if quick { 1.0 } else { 5.0 }),
            reverse_max_rate: cli.reverse_max_rate,
            reverse_frames: cli.reverse_frames,
            soak: cli.soak,
            scbridge,
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            clk_tck: clock_ticks(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("scbridge-bench: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    // Dropping the benchmark future on a signal drops every child handle,
    // and with it (kill_on_drop) every process it started.
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(&cli) => result,
            () = interrupted() => Err(anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scbridge-bench: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn bench(cli: &Cli) -> Result<()> {
    let settings = Settings::from_cli(cli)?;
    let mut runs = Vec::new();
    let mut extras = Vec::new();
    let count = if settings.soak.is_some() { 1 } else { settings.runs };
    for index in 0..count {
        eprintln!("scbridge-bench: run {} of {count}", index + 1);
        let (figures, extra) = run_once(&settings, index).await?;
        runs.push(figures);
        extras.push(extra);
    }
    let median = median_of(&runs);
    print_table(&settings, &runs, &median);
    let summary = json!({
        "settings": settings_json(&settings),
        "median": figures_json(&median),
        "runs": runs.iter().zip(&extras).map(|(figures, extra)| {
            json!({ "figures": figures_json(figures), "extra": extra })
        }).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &cli.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn settings_json(settings: &Settings) -> Value {
    json!({
        "runs": if settings.soak.is_some() { 1 } else { settings.runs },
        "burst": settings.burst,
        "paced": settings.paced.iter().map(|(name, rate, secs)| {
            json!({ "phase": name, "rate": rate, "secs": secs })
        }).collect::<Vec<_>>(),
        "reverse": {
            "addresses": settings.reverse_addresses,
            "hz": settings.reverse_hz,
            "max_rate": settings.reverse_max_rate,
            "secs": settings.reverse_secs,
            "rate": f64::from(settings.reverse_addresses) * f64::from(settings.reverse_hz),
            "frames": settings.reverse_frames,
        },
        "soak_secs": settings.soak,
        "clk_tck": settings.clk_tck,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

/// Every figure of one run by name; NaN where it could not be measured.
type Figures = BTreeMap<String, f64>;

fn put(figures: &mut Figures, key: impl Into<String>, value: f64) {
    figures.insert(key.into(), value);
}

/// The receivers' tallies, one per output.
struct Sinks {
    osc: Arc<Sink>,
    mqtt: Arc<Sink>,
    plain: Arc<Sink>,
    reverse: Arc<Sink>,
    /// The broker alone: the paced phases' reference publishes, straight
    /// from this process through Mosquitto back to the MQTT subscriber.
    broker: Arc<Sink>,
}

impl Sinks {
    fn new() -> Sinks {
        Sinks {
            osc: Arc::default(),
            mqtt: Arc::default(),
            plain: Arc::default(),
            reverse: Arc::default(),
            broker: Arc::default(),
        }
    }

    /// The outputs of a load phase, by name.
    fn load(&self) -> [(&'static str, &Arc<Sink>); 3] {
        [("plain", &self.plain), ("osc", &self.osc), ("mqtt", &self.mqtt)]
    }
}

/// Everything a run starts. Dropping it stops every process and thread.
struct Rig {
    _server: Server,
    _broker: Broker,
    bridge: Bridge,
    _osc_receiver: OscReceiver,
    mqtt_receiver: tokio::task::JoinHandle<()>,
    /// Publishes the MQTT reverse phase's messages.
    mqtt_sender: AsyncClient,
    mqtt_sender_loop: tokio::task::JoinHandle<()>,
    plain_receiver: tokio::task::JoinHandle<()>,
    plain: ScClient,
    generator: ScClient,
    sinks: Sinks,
    /// The port of this process's OSC receive socket.
    rx_port: u16,
    seq: u64,
    _dir: TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.mqtt_receiver.abort();
        self.mqtt_sender_loop.abort();
        self.plain_receiver.abort();
    }
}

async fn run_once(settings: &Settings, index: usize) -> Result<(Figures, Value)> {
    let dir = TempDir::new(index)?;
    let server = Server::start(&settings.root, &dir.0).await?;
    let broker = Broker::start(&dir.0).await?;
    let sinks = Sinks::new();
    let osc_socket = StdUdpSocket::bind("127.0.0.1:0").context("bind the OSC receiver")?;
    let rx_port = osc_socket.local_addr()?.port();
    let rx_buffer = enlarge_receive_buffer(&osc_socket, RX_BUFFER_BYTES);
    let osc_receiver = OscReceiver::spawn(osc_socket, sinks.osc.clone())?;
    let bridge = Bridge::start(
        &settings.scbridge,
        &dir.0,
        server.port,
        broker.port,
        rx_port,
        settings.reverse_max_rate,
    )
    .await?;
    let mqtt_receiver = mqtt_receiver(broker.port, sinks.mqtt.clone(), sinks.broker.clone());
    let (mqtt_sender, mqtt_sender_loop) = mqtt_sender(broker.port);
    let (plain, plain_receiver) = plain_receiver(server.port, &sinks);
    let generator = sc_client(server.port, 200_000).0;
    let mut rig = Rig {
        _server: server,
        _broker: broker,
        bridge,
        _osc_receiver: osc_receiver,
        mqtt_receiver,
        mqtt_sender,
        mqtt_sender_loop,
        plain_receiver,
        plain,
        generator,
        sinks,
        rx_port,
        seq: 1,
        _dir: dir,
    };
    let result = measure(settings, &mut rig).await.map(|(mut figures, extra)| {
        put(&mut figures, "rx_socket_buffer_bytes", rx_buffer.map_or(f64::NAN, f64::from));
        (figures, extra)
    });
    // Closing both clients before the server goes keeps their links from
    // reporting the server's end as a lost connection.
    for client in [&rig.generator, &rig.plain] {
        let _ = timeout(Duration::from_secs(2), client.shutdown()).await;
    }
    result.map_err(|err| {
        let log = tail(&rig.bridge.log, 20);
        err.context(format!("scbridge's log ends with:\n{log}"))
    })
}

async fn measure(settings: &Settings, rig: &mut Rig) -> Result<(Figures, Value)> {
    let mut figures = Figures::new();
    let mut extra = json!({});
    put(&mut figures, "host.loadavg_1m_at_start", load_average());
    warm_up(rig).await?;
    sleep(Duration::from_millis(500)).await;
    put(&mut figures, "rss.idle_kib", rig.bridge.memory()?.rss_kib as f64);

    if let Some(secs) = settings.soak {
        extra = soak(settings, rig, secs, &mut figures).await?;
    } else {
        let burst = Load { name: "burst", count: settings.burst, rate: None };
        load_phase(settings, rig, &burst, &mut figures).await?;
        for &(name, rate, secs) in &settings.paced {
            let count = (rate * secs).round().max(1.0) as u64;
            let load = Load { name, count, rate: Some(rate) };
            load_phase(settings, rig, &load, &mut figures).await?;
        }
        reverse_phase(settings, rig, ReverseSource::Osc, &mut figures).await?;
        reverse_phase(settings, rig, ReverseSource::Mqtt, &mut figures).await?;
        headline(settings, &mut figures);
    }

    put(&mut figures, "host.loadavg_1m_at_end", load_average());
    let memory = rig.bridge.memory()?;
    put(&mut figures, "rss.peak_kib", memory.hwm_kib as f64);
    put(&mut figures, "rss.end_kib", memory.rss_kib as f64);
    let log = std::fs::read_to_string(&rig.bridge.log).unwrap_or_default();
    let is_warning = |line: &&str| line.contains(" WARN ") || line.contains(" ERROR ");
    let warnings = log.lines().filter(is_warning).count();
    put(&mut figures, "bridge.log_warnings", warnings as f64);
    let gen_stats = rig.generator.stats();
    put(&mut figures, "generator.queue_overflow", counter(&gen_stats.queue_overflow));
    let plain_stats = rig.plain.stats();
    put(&mut figures, "plain.inbound_dropped", counter(&plain_stats.inbound_queue_full));
    if warnings > 0 {
        let lines: Vec<&str> = log.lines().filter(is_warning).take(5).collect();
        extra["bridge_warnings"] = json!(lines);
    }
    Ok((figures, extra))
}

/// An `ScStats` counter as a figure.
fn counter(counter: &AtomicU64) -> f64 {
    ScStats::get(counter) as f64
}

/// The ratios and differences the summary leads with.
fn headline(settings: &Settings, figures: &mut Figures) {
    let get = |f: &Figures, key: &str| f.get(key).copied().unwrap_or(f64::NAN);
    // The reverse phases' reference is the plain subscriber of the paced
    // phase at the same rate in this run: the same server path (a publish
    // in, a delivery out) without the bridge's hop.
    let reverse_rate = f64::from(settings.reverse_addresses) * f64::from(settings.reverse_hz);
    let reference = settings
        .paced
        .iter()
        .find(|(_, rate, _)| *rate == reverse_rate)
        .filter(|_| !settings.reverse_frames)
        .map(|(name, _, _)| *name);
    if let Some(reference) = reference {
        for phase in ["reverse_osc", "reverse_mqtt"] {
            for p in ["p50", "p99"] {
                let added = get(figures, &format!("{phase}.{p}_us"))
                    - get(figures, &format!("{reference}.plain.{p}_us"));
                put(figures, format!("{phase}.added_{p}_us"), added);
            }
        }
    }
    for output in ["osc", "mqtt"] {
        let ratio = get(figures, &format!("burst.{output}.rate_msg_s"))
            / get(figures, "burst.plain.rate_msg_s");
        put(figures, format!("burst.{output}_over_plain_rate"), ratio);
        for phase in ["paced_1k", "paced_10k"] {
            for p in ["p50", "p99"] {
                let added = get(figures, &format!("{phase}.{output}.{p}_us"))
                    - get(figures, &format!("{phase}.plain.{p}_us"));
                put(figures, format!("{phase}.{output}_added_{p}_us"), added);
                if output == "mqtt" {
                    // What is left of the added latency once the broker's
                    // own hop (publish to subscriber, timed alone) is
                    // taken out: the bridge's share, approximately.
                    let broker = get(figures, &format!("{phase}.broker.{p}_us"));
                    put(
                        figures,
                        format!("{phase}.mqtt_added_beyond_broker_{p}_us"),
                        added - broker,
                    );
                }
            }
        }
    }
}

/// Publishes warm-up messages until every output has delivered one.
async fn warm_up(rig: &mut Rig) -> Result<()> {
    let first = rig.seq;
    let deadline = Instant::now() + WARM_UP_TIMEOUT;
    loop {
        rig.bridge.check_alive()?;
        let seq = rig.seq;
        rig.seq += 1;
        rig.generator.publish(OBJECTS_CHANNEL, &envelope(seq));
        sleep(Duration::from_millis(100)).await;
        let ready = rig.sinks.load().iter().all(|(_, sink)| sink.max_seq() >= first);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = rig
                .sinks
                .load()
                .iter()
                .filter(|(_, sink)| sink.max_seq() < first)
                .map(|(name, _)| *name)
                .collect();
            bail!("no warm-up message reached {missing:?} within {WARM_UP_TIMEOUT:?}");
        }
    }
}

/// One load phase: how many messages, and at what rate (None: flat out).
struct Load {
    name: &'static str,
    count: u64,
    rate: Option<f64>,
}

/// The cables envelope the generator publishes.
fn envelope(seq: u64) -> Value {
    json!({
        "topic": "load/x",
        "clientId": "gen",
        "payload": { "seq": seq, "t": now_us(), "v": 0.5 },
    })
}

async fn load_phase(
    settings: &Settings,
    rig: &mut Rig,
    load: &Load,
    figures: &mut Figures,
) -> Result<()> {
    eprintln!("scbridge-bench:   {} ({} messages)", load.name, load.count);
    let lo = rig.seq;
    let hi = lo + load.count;
    rig.seq = hi;
    for (_, sink) in rig.sinks.load() {
        sink.begin(lo, hi);
    }
    // The paced phases also time the broker alone; a burst would only
    // crowd the broker.
    // Above 2,000/s the reference would double the broker's load and crowd
    // the machine the bridge is measured on.
    let reference = load.rate.filter(|rate| *rate <= 2000.0).map(|_| &rig.mqtt_sender);
    if reference.is_some() {
        rig.sinks.broker.begin(lo, hi);
    }
    let cpu_before = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_before = udp_drops(rig.rx_port);
    let start_us = now_us();
    generate(&rig.generator, reference, lo, hi, load.rate).await;
    let mut sinks: Vec<&Sink> =
        rig.sinks.load().into_iter().map(|(_, sink)| sink.as_ref()).collect();
    if reference.is_some() {
        sinks.push(&rig.sinks.broker);
    }
    drain(&sinks, load.count).await;
    let cpu_after = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_after = udp_drops(rig.rx_port);
    rig.bridge.check_alive()?;

    let name = load.name;
    put(figures, format!("{name}.sent"), load.count as f64);
    let mut tallies = Vec::new();
    for (output, sink) in rig.sinks.load() {
        let mut tally = sink.take();
        output_figures(figures, &format!("{name}.{output}"), &mut tally, load.count, start_us);
        tallies.push(tally);
    }
    if let [plain, osc, mqtt] = &tallies[..] {
        for (output, tally) in [("osc", osc), ("mqtt", mqtt)] {
            let mut delays = delays_behind(tally, plain);
            for (p, q) in [("p50", 0.50), ("p99", 0.99)] {
                put(figures, format!("{name}.{output}_behind_plain_{p}_us"), delays.percentile(q));
            }
        }
    }
    if reference.is_some() {
        let mut tally = rig.sinks.broker.take();
        output_figures(figures, &format!("{name}.broker"), &mut tally, load.count, start_us);
    }
    cpu_figures(figures, name, settings, spent(cpu_before, cpu_after), load.count);
    // The floor beside it: the same messages through a bare forwarder (two
    // seconds' worth at a paced rate: the rate, not the count, sets the
    // cost per message).
    let floor_count = load.rate.map_or(load.count, |rate| load.count.min((rate * 2.0) as u64));
    // As large as the frame the server sends the bridge for one message.
    let frame_bytes =
        scbridge::sc::codec::encode_publish(OBJECTS_CHANNEL, &envelope(hi), None).len();
    let feed = Feed { rate: load.rate, batch: 1 };
    let floor = run_floor(floor_count, feed, frame_bytes).await?;
    put(figures, format!("{name}.floor_cpu_us_per_msg"), floor.cpu_us_per_msg);
    put(figures, format!("{name}.floor_msgs_per_wakeup"), floor.msgs_per_wakeup);
    let bridge = figures.get(&format!("{name}.bridge_cpu_us_per_msg")).copied();
    let bridge = bridge.unwrap_or(f64::NAN);
    put(figures, format!("{name}.bridge_cpu_over_floor"), bridge / floor.cpu_us_per_msg);
    if load.rate.is_none() {
        // Flat out, the floor reads far more messages per wake-up than
        // scbridge, which gets them as the server sends them. This second
        // floor is fed as scbridge was: at the rate the plain subscriber
        // measured, in writes of as many messages as scbridge took per
        // wake-up.
        let plain = figures.get(&format!("{name}.plain.rate_msg_s")).copied();
        let per_wakeup = figures.get(&format!("{name}.bridge_msgs_per_wakeup")).copied();
        if let (Some(rate), Some(per_wakeup)) = (plain, per_wakeup)
            && rate.is_finite()
            && per_wakeup.is_finite()
        {
            let feed = Feed { rate: Some(rate), batch: per_wakeup.round().max(1.0) as usize };
            let count = floor_count.min((rate * 2.0) as u64);
            let paced = run_floor(count, feed, frame_bytes).await?;
            put(figures, format!("{name}.paced_floor_cpu_us_per_msg"), paced.cpu_us_per_msg);
            put(figures, format!("{name}.paced_floor_msgs_per_wakeup"), paced.msgs_per_wakeup);
            put(
                figures,
                format!("{name}.bridge_cpu_over_paced_floor"),
                bridge / paced.cpu_us_per_msg,
            );
        }
    }
    if let Some(rate) = load.rate {
        // Below 1.0 the server itself could not keep up with the offered
        // rate, and every output's latency includes its queueing.
        let plain = figures.get(&format!("{name}.plain.rate_msg_s")).copied();
        put(figures, format!("{name}.plain_over_offered_rate"), plain.unwrap_or(f64::NAN) / rate);
    }
    put(
        figures,
        format!("{name}.rx_socket_drops"),
        drops_after.saturating_sub(drops_before) as f64,
    );
    put(figures, format!("{name}.bridge_rss_kib"), rig.bridge.memory()?.rss_kib as f64);
    Ok(())
}

fn spent(before: (u64, u64), after: (u64, u64)) -> (u64, u64) {
    (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1))
}

/// CPU and sleeps of scbridge over a phase of `messages` messages.
fn cpu_figures(
    figures: &mut Figures,
    name: &str,
    settings: &Settings,
    (ticks, sleeps): (u64, u64),
    messages: u64,
) {
    // Each sleep is a wake-up later: the kernel's fixed cost per turn of
    // the runtime, whatever the turn then handles.
    let per_sleep = if sleeps > 0 { messages as f64 / sleeps as f64 } else { f64::NAN };
    put(figures, format!("{name}.bridge_msgs_per_wakeup"), per_sleep);
    let secs = ticks as f64 / settings.clk_tck;
    put(figures, format!("{name}.bridge_cpu_s"), secs);
    let per_message = if messages > 0 { secs * 1e6 / messages as f64 } else { f64::NAN };
    put(figures, format!("{name}.bridge_cpu_us_per_msg"), per_message);
    put(figures, format!("{name}.bridge_cpu_s_per_100k"), per_message * 0.1);
}

fn output_figures(
    figures: &mut Figures,
    prefix: &str,
    tally: &mut Tally,
    sent: u64,
    start_us: i64,
) {
    put(figures, format!("{prefix}.received"), tally.received as f64);
    put(figures, format!("{prefix}.lost"), sent.saturating_sub(tally.received) as f64);
    put(figures, format!("{prefix}.duplicates"), tally.duplicates as f64);
    let elapsed = (tally.last_us - start_us) as f64 / 1e6;
    let rate = if tally.received > 0 && elapsed > 0.0 {
        tally.received as f64 / elapsed
    } else {
        f64::NAN
    };
    put(figures, format!("{prefix}.rate_msg_s"), rate);
    put(figures, format!("{prefix}.p50_us"), tally.latency.percentile(0.50));
    put(figures, format!("{prefix}.p99_us"), tally.latency.percentile(0.99));
    put(figures, format!("{prefix}.max_us"), tally.latency.max());
}

/// Publishes `lo..hi`, flat out or at `rate` messages/s by due times (all
/// overdue messages go at once, so the timer's 1 ms grain costs no rate).
/// With `reference`, every message is also published straight to the
/// broker on `benchref/x`, for the broker-alone latency.
async fn generate(
    client: &ScClient,
    reference: Option<&AsyncClient>,
    lo: u64,
    hi: u64,
    rate: Option<f64>,
) {
    let start = Instant::now();
    for seq in lo..hi {
        match rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64((seq - lo) as f64 / rate);
                if due > Instant::now() {
                    sleep_until(due).await;
                }
            }
            None => {
                if (seq - lo) % 256 == 0 {
                    // Lets the link task send while this one encodes, and
                    // keeps the client's queue from overflowing.
                    while client.queued() > GENERATOR_BACKLOG {
                        sleep(Duration::from_millis(1)).await;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        let envelope = envelope(seq);
        client.publish(OBJECTS_CHANNEL, &envelope);
        if let (Some(mqtt), Some(payload)) = (reference, envelope.get("payload")) {
            // A full channel shows as loss in the broker figures.
            let _ = mqtt.try_publish("benchref/x", QoS::AtMostOnce, false, payload.to_string());
        }
    }
}

/// Waits until every sink has `expected` messages, or nothing arrived
/// anywhere for [`QUIET`], or [`DRAIN_BOUND`] passed.
async fn drain(sinks: &[&Sink], expected: u64) {
    let deadline = Instant::now() + DRAIN_BOUND;
    let quiet_us = QUIET.as_micros() as i64;
    loop {
        sleep(Duration::from_millis(50)).await;
        if sinks.iter().all(|sink| sink.received() >= expected) {
            return;
        }
        let last = sinks.iter().map(|sink| sink.last_arrival_us()).max().unwrap_or(0);
        if now_us() - last > quiet_us || Instant::now() > deadline {
            return;
        }
    }
}

/// Where a reverse phase feeds the bridge.
#[derive(Debug, Clone, Copy)]
enum ReverseSource {
    /// OSC datagrams `/rev/aN [seq i, t h, 0.5 f]` to its listen port.
    Osc,
    /// MQTT publishes `[seq, t, 0.5]` (JSON) on `benchrev/aN`, QoS 0.
    Mqtt,
}

impl ReverseSource {
    fn phase(self) -> &'static str {
        match self {
            ReverseSource::Osc => "reverse_osc",
            ReverseSource::Mqtt => "reverse_mqtt",
        }
    }
}

/// OSC or MQTT into the bridge, cables envelopes `rev/*` out to the plain
/// subscriber. Message `k` goes to address `k mod addresses`; by default
/// every message has its own due time (`addresses × hz` per second, evenly),
/// with `--reverse-frames` each frame's addresses go back to back.
async fn reverse_phase(
    settings: &Settings,
    rig: &mut Rig,
    source: ReverseSource,
    figures: &mut Figures,
) -> Result<()> {
    let phase = source.phase();
    let addresses = u64::from(settings.reverse_addresses);
    let hz = f64::from(settings.reverse_hz);
    let frames = (hz * settings.reverse_secs).round().max(1.0) as u64;
    let count = frames * addresses;
    let rate = hz * addresses as f64;
    eprintln!(
        "scbridge-bench:   {phase} ({count} messages: {addresses} addresses at {hz} Hz{})",
        if settings.reverse_frames { ", frame by frame" } else { "" }
    );
    let lo = rig.seq;
    let hi = lo + count;
    rig.seq = hi;
    rig.sinks.reverse.begin(lo, hi);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let target = rig.bridge.osc_listen;
    let cpu_before = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_before = udp_drops(target.port());
    let start = Instant::now();
    let start_us = now_us();
    for k in 0..count {
        let due = if settings.reverse_frames {
            start + Duration::from_secs_f64((k / addresses) as f64 / hz)
        } else {
            start + Duration::from_secs_f64(k as f64 / rate)
        };
        if due > Instant::now() {
            sleep_until(due).await;
        }
        let seq = lo + k;
        let address = k % addresses;
        match source {
            ReverseSource::Osc => {
                let message = OscMessage {
                    addr: format!("/rev/a{address}"),
                    args: vec![
                        OscType::Int(i32::try_from(seq).context("sequence beyond OSC int")?),
                        OscType::Long(now_us()),
                        OscType::Float(0.5),
                    ],
                };
                let bytes = rosc::encoder::encode(&OscPacket::Message(message))?;
                socket.send_to(&bytes, target).await?;
            }
            ReverseSource::Mqtt => {
                let payload = json!([seq, now_us(), 0.5]).to_string();
                rig.mqtt_sender
                    .publish(format!("benchrev/a{address}"), QoS::AtMostOnce, false, payload)
                    .await
                    .context("queue an MQTT publish")?;
            }
        }
    }
    drain(&[rig.sinks.reverse.as_ref()], count).await;
    let cpu_after = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_after = udp_drops(target.port());
    rig.bridge.check_alive()?;
    let mut tally = rig.sinks.reverse.take();
    put(figures, format!("{phase}.sent"), count as f64);
    put(figures, format!("{phase}.offered_msg_s"), rate);
    output_figures(figures, phase, &mut tally, count, start_us);
    cpu_figures(figures, phase, settings, spent(cpu_before, cpu_after), count);
    if let ReverseSource::Osc = source {
        put(
            figures,
            format!("{phase}.bridge_socket_drops"),
            drops_after.saturating_sub(drops_before) as f64,
        );
    }
    Ok(())
}

/// 5,000 msg/s for `secs`, with scbridge's RSS sampled every 10 s.
async fn soak(
    settings: &Settings,
    rig: &mut Rig,
    secs: u64,
    figures: &mut Figures,
) -> Result<Value> {
    let count = (SOAK_RATE * secs as f64).round() as u64;
    eprintln!("scbridge-bench:   soak ({count} messages over {secs} s)");
    let lo = rig.seq;
    let hi = lo + count;
    rig.seq = hi;
    for (_, sink) in rig.sinks.load() {
        sink.begin(lo, hi);
    }
    let cpu_before = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_before = udp_drops(rig.rx_port);
    let start_us = now_us();
    let pid = rig.bridge.pid;
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampled = samples.clone();
    let sampler = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SOAK_SAMPLE);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Ok(memory) = memory_of(pid) else { return };
            let sample = (start.elapsed().as_secs_f64(), memory.rss_kib);
            sampled.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
        }
    });
    generate(&rig.generator, None, lo, hi, Some(SOAK_RATE)).await;
    let sinks: Vec<&Sink> = rig.sinks.load().into_iter().map(|(_, sink)| sink.as_ref()).collect();
    drain(&sinks, count).await;
    sampler.abort();
    let mut samples = samples.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let end = rig.bridge.memory()?.rss_kib;
    samples.push((start.elapsed().as_secs_f64(), end));
    let cpu_after = (rig.bridge.cpu_ticks()?, rig.bridge.sleeps()?);
    let drops_after = udp_drops(rig.rx_port);
    rig.bridge.check_alive()?;
    put(figures, "soak.sent", count as f64);
    for (output, sink) in rig.sinks.load() {
        let mut tally = sink.take();
        output_figures(figures, &format!("soak.{output}"), &mut tally, count, start_us);
    }
    cpu_figures(figures, "soak", settings, spent(cpu_before, cpu_after), count);
    put(figures, "soak.rx_socket_drops", drops_after.saturating_sub(drops_before) as f64);
    // The reference is the sample after the first minute; a shorter soak
    // uses the sample nearest its middle instead (and says so).
    let reference_at = if secs > 60 { 60.0 } else { (secs as f64 / 2.0).max(10.0) };
    let reference = samples
        .iter()
        .min_by(|a, b| (a.0 - reference_at).abs().total_cmp(&(b.0 - reference_at).abs()))
        .copied()
        .unwrap_or((secs as f64, end));
    put(figures, "soak.rss_reference_at_s", reference.0.round());
    put(figures, "soak.rss_reference_kib", reference.1 as f64);
    put(figures, "soak.rss_end_kib", end as f64);
    put(figures, "soak.rss_end_over_reference", end as f64 / reference.1 as f64);
    Ok(json!({
        "soak_rss_samples": samples.iter().map(|(at, kib)| json!({ "at_s": at.round(), "rss_kib": kib })).collect::<Vec<_>>(),
    }))
}

// ---------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------

/// What one output received in the current phase. Safe to record into from
/// any thread.
#[derive(Default)]
struct Sink {
    tally: Mutex<Tally>,
    /// Arrival time (µs since the epoch) of the latest message of any phase.
    last_arrival_us: AtomicI64,
    /// One more than the highest sequence number seen (0: none yet).
    max_seq: AtomicU64,
}

/// Arrivals counted by sequence number within `lo..hi`.
#[derive(Default)]
struct Tally {
    lo: u64,
    hi: u64,
    /// One bit per sequence number: received already.
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    /// Arrival time of the latest first arrival.
    last_us: i64,
    latency: Latencies,
    /// First arrival time of each sequence number (µs since the epoch; 0:
    /// not arrived), to set one output against another message by message.
    arrivals: Vec<i64>,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting `lo..hi` afresh.
    fn begin(&self, lo: u64, hi: u64) {
        let words = usize::try_from((hi - lo).div_ceil(64)).unwrap_or(usize::MAX);
        let count = usize::try_from(hi - lo).unwrap_or(usize::MAX);
        *self.lock() =
            Tally { lo, hi, seen: vec![0; words], arrivals: vec![0; count], ..Tally::default() };
    }

    /// Ends the phase and returns its tally.
    fn take(&self) -> Tally {
        std::mem::take(&mut *self.lock())
    }

    fn record(&self, seq: u64, sent_us: i64) {
        let now = now_us();
        self.last_arrival_us.store(now, Ordering::Relaxed);
        self.max_seq.fetch_max(seq + 1, Ordering::Relaxed);
        let mut tally = self.lock();
        if seq < tally.lo || seq >= tally.hi {
            return;
        }
        let index = (seq - tally.lo) as usize;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if tally.seen[word] & bit != 0 {
            tally.duplicates += 1;
            return;
        }
        tally.seen[word] |= bit;
        tally.received += 1;
        tally.last_us = now;
        tally.arrivals[index] = now;
        tally.latency.record(u64::try_from(now - sent_us).unwrap_or(0));
    }

    fn received(&self) -> u64 {
        self.lock().received
    }

    fn last_arrival_us(&self) -> i64 {
        self.last_arrival_us.load(Ordering::Relaxed)
    }

    /// The highest sequence number seen so far (0 when none).
    fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// For every message both received: how much later `output` had it than
/// `plain` (µs; negative when earlier). The server sends each publish to
/// every subscriber at once, so its own queueing cancels out of this, as it
/// does not out of a difference of two percentiles.
fn delays_behind(output: &Tally, plain: &Tally) -> SignedSamples {
    let values = output
        .arrivals
        .iter()
        .zip(&plain.arrivals)
        .filter(|(at, reference)| **at != 0 && **reference != 0)
        .map(|(at, reference)| at - reference)
        .collect();
    SignedSamples { values, sorted: false }
}

/// Samples that may be negative, with nearest-rank percentiles.
struct SignedSamples {
    values: Vec<i64>,
    sorted: bool,
}

impl SignedSamples {
    /// The nearest-rank value at quantile `q` (0..=1); NaN when empty.
    fn percentile(&mut self, q: f64) -> f64 {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let n = self.values.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.values[rank - 1] as f64
    }
}

/// `seq` and `t` of a load payload `{"seq","t","v"}`.
fn load_payload(payload: &Value) -> Option<(u64, i64)> {
    Some((payload.get("seq")?.as_u64()?, payload.get("t")?.as_i64()?))
}

/// `seq` and `t` of a reverse payload `[seq, t, v]`.
fn reverse_payload(payload: &Value) -> Option<(u64, i64)> {
    Some((payload.get(0)?.as_u64()?, payload.get(1)?.as_i64()?))
}

/// The UDP socket the bridge's OSC target points at, read on its own
/// thread so it keeps up however busy the runtime is.
struct OscReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OscReceiver {
    fn spawn(socket: StdUdpSocket, sink: Arc<Sink>) -> Result<OscReceiver> {
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("osc-receiver".into()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopping.load(Ordering::Relaxed) {
                let Ok(len) = socket.recv(&mut buf) else { continue };
                if let Ok((_, packet)) = rosc::decoder::decode_udp(&buf[..len]) {
                    record_osc(&packet, &sink);
                }
            }
        })?;
        Ok(OscReceiver { stop, thread: Some(thread) })
    }
}

fn record_osc(packet: &OscPacket, sink: &Sink) {
    match packet {
        OscPacket::Message(message) => {
            if let Some(OscType::String(text)) = message.args.first() {
                if let Some((seq, t)) =
                    serde_json::from_str::<Value>(text).ok().as_ref().and_then(load_payload)
                {
                    sink.record(seq, t);
                }
            }
        }
        OscPacket::Bundle(bundle) => {
            for packet in &bundle.content {
                record_osc(packet, sink);
            }
        }
    }
}

impl Drop for OscReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An MQTT 3.1.1 subscriber on `bench/load/#` (the bridge's output) and
/// `benchref/#` (the broker reference), QoS 0; subscribes again after
/// every CONNACK.
fn mqtt_receiver(port: u16, sink: Arc<Sink>, broker: Arc<Sink>) -> tokio::task::JoinHandle<()> {
    let mut options =
        MqttOptions::new(format!("scbridge-bench-rx-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some((seq, t)) = serde_json::from_slice::<Value>(&publish.payload)
                        .ok()
                        .as_ref()
                        .and_then(load_payload)
                    {
                        let to =
                            if publish.topic.starts_with("benchref/") { &broker } else { &sink };
                        to.record(seq, t);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("bench/load/#", QoS::AtMostOnce);
                    let _ = client.try_subscribe("benchref/#", QoS::AtMostOnce);
                }
                Ok(_) => {}
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

/// The MQTT 3.1.1 client that feeds the MQTT reverse phase; its event
/// loop runs until the rig is dropped.
fn mqtt_sender(port: u16) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut options =
        MqttOptions::new(format!("scbridge-bench-tx-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    let (client, mut eventloop) = AsyncClient::new(options, 1 << 16);
    eventloop.set_network_options(network);
    let task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                sleep(Duration::from_millis(200)).await;
            }
        }
    });
    (client, task)
}

/// A SocketCluster client for the bench server; `queue_size` bounds its
/// send queue, its receive queue is large so it never drops.
fn sc_client(port: u16, queue_size: usize) -> (ScClient, tokio::sync::mpsc::Receiver<Incoming>) {
    let url = url::Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/"))
        .expect("a loopback URL parses");
    let mut config = ScConfig::new(url);
    config.queue_size = queue_size;
    config.inbound_queue_size = 1 << 20;
    ScClient::start(config)
}

/// The plain subscriber: `bench/objects` straight from the server. Load
/// envelopes go to the plain sink, `rev/*` envelopes to the reverse sink.
fn plain_receiver(port: u16, sinks: &Sinks) -> (ScClient, tokio::task::JoinHandle<()>) {
    let (client, mut incoming) = sc_client(port, 1000);
    let subscriber = client.clone();
    let plain = sinks.plain.clone();
    let reverse = sinks.reverse.clone();
    let task = tokio::spawn(async move {
        subscriber.subscribe(OBJECTS_CHANNEL, false).await;
        while let Some(message) = incoming.recv().await {
            let Incoming::Publish { data, .. } = message else { continue };
            let topic = data.get("topic").and_then(Value::as_str).unwrap_or("");
            let Some(payload) = data.get("payload") else { continue };
            if topic.starts_with("rev/") {
                if let Some((seq, t)) = reverse_payload(payload) {
                    reverse.record(seq, t);
                }
            } else if let Some((seq, t)) = load_payload(payload) {
                plain.record(seq, t);
            }
        }
    });
    (client, task)
}

// ---------------------------------------------------------------------------
// Latencies
// ---------------------------------------------------------------------------

/// Every latency of a phase, in µs, kept exactly: added and p99 figures are
/// differences of large numbers when the server queues, so bucketing would
/// show up in them. Four bytes a message (a one-hour soak at 5,000 msg/s
/// keeps about 70 MB per output).
#[derive(Default)]
struct Latencies {
    values: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    fn record(&mut self, micros: u64) {
        self.values.push(u32::try_from(micros).unwrap_or(u32::MAX));
        self.sorted = false;
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
    }

    /// The nearest-rank value at quantile `q` (0..=1); NaN when empty.
    fn percentile(&mut self, q: f64) -> f64 {
        self.sort();
        let n = self.values.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        f64::from(self.values[rank - 1])
    }

    fn max(&mut self) -> f64 {
        self.sort();
        self.values.last().map_or(f64::NAN, |v| f64::from(*v))
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A directory for configs and logs, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(run: usize) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("scbridge-bench-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real socketcluster-server; killed when dropped.
struct Server {
    _child: Child,
    /// Held open: the server exits when its stdin closes.
    _stdin: Option<ChildStdin>,
    port: u16,
}

impl Server {
    async fn start(root: &Path, dir: &Path) -> Result<Server> {
        let peers = root.join("tests").join("peers");
        if !peers.join("node_modules").is_dir() {
            bail!("{} has no node_modules: run scripts/install-test-peers", peers.display());
        }
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut child = Command::new("node")
            .arg(peers.join("server.js"))
            .args(["--port", "0", "--exit-with-stdin"])
            .current_dir(&peers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("run node tests/peers/server.js")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the server's stdout")?;
        // The server prints a line per publish; a thread of its own reads
        // and discards them so the server never blocks on a full pipe.
        let stdout = std::fs::File::from(stdout.into_owned_fd()?);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("server-stdout".into()).spawn(move || {
            let mut reader = BufReader::with_capacity(64 * 1024, stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = ready_tx.send(first);
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        })?;
        let line = timeout(STARTUP_TIMEOUT, ready_rx)
            .await
            .map_err(|_| anyhow!("the server printed nothing within {STARTUP_TIMEOUT:?}"))?
            .unwrap_or_default();
        let port =
            line.trim().strip_prefix("READY ").and_then(|port| port.parse().ok()).ok_or_else(
                || {
                    anyhow!(
                        "the server did not print READY <port> (got {line:?}); its log:\n{}",
                        tail(&dir.join("server.log"), 20)
                    )
                },
            )?;
        Ok(Server { _child: child, _stdin: stdin, port })
    }
}

/// Mosquitto on a free loopback port; killed when dropped.
struct Broker {
    _child: Child,
    port: u16,
}

impl Broker {
    async fn start(dir: &Path) -> Result<Broker> {
        let binary = mosquitto_binary()?;
        for attempt in 0..5 {
            let port = free_tcp_port()?;
            let config = dir.join("mosquitto.conf");
            let log_path = dir.join(format!("mosquitto-{attempt}.log"));
            std::fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 0\nset_tcp_nodelay true\nlog_dest stderr\n\
                     log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                ),
            )?;
            let mut child = Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("run {}", binary.display()))?;
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            loop {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Some(status) = child.try_wait()? {
                    if log.contains("Address already in use") {
                        break;
                    }
                    bail!("mosquitto exited with {status}:\n{log}");
                }
                if log.contains(" running") && TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                {
                    return Ok(Broker { _child: child, port });
                }
                if Instant::now() > deadline {
                    bail!("mosquitto did not come up within {STARTUP_TIMEOUT:?}:\n{log}");
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
        bail!("mosquitto found every chosen port taken; gave up after 5 tries")
    }
}

fn mosquitto_binary() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("mosquitto")).find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")).filter(|p| p.is_file()))
        .ok_or_else(|| anyhow!("mosquitto is not installed: run scripts/install-test-peers"))
}

/// scbridge as its own process; killed when dropped.
struct Bridge {
    child: Child,
    pid: u32,
    /// The bridge's OSC listen socket (the reverse direction's target).
    osc_listen: SocketAddr,
    log: PathBuf,
}

impl Bridge {
    async fn start(
        binary: &Path,
        dir: &Path,
        sc_port: u16,
        mqtt_port: u16,
        rx_port: u16,
        reverse_max_rate: Option<f64>,
    ) -> Result<Bridge> {
        let config = dir.join("bridge.toml");
        std::fs::write(&config, bridge_config(sc_port, mqtt_port, rx_port, reverse_max_rate))?;
        let log = dir.join("scbridge.log");
        let mut child = Command::new(binary)
            // Warnings only, but the OSC module's start-up lines too: they
            // say which port the listener got. It logs nothing at info per
            // message, so the hot path writes no more than before.
            .args(["run", "--log-level", "warn,scbridge::osc=info", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("run {}", binary.display()))?;
        let pid = child.id().context("scbridge's pid")?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(osc_listen) = osc_listen_address(&text) {
                let osc_listen = osc_listen
                    .parse()
                    .with_context(|| format!("scbridge's OSC listen address {osc_listen}"))?;
                return Ok(Bridge { child, pid, osc_listen, log });
            }
            if let Some(status) = child.try_wait()? {
                bail!("scbridge exited with {status}:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("scbridge logged no OSC listen address within {STARTUP_TIMEOUT:?}:\n{text}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("scbridge exited with {status}"),
            None => Ok(()),
        }
    }

    fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks_of(self.pid)
    }

    /// How often scbridge's thread has gone to sleep waiting for work
    /// (voluntary context switches of its main thread, which runs the
    /// whole runtime).
    fn sleeps(&self) -> Result<u64> {
        status_field(self.pid, "voluntary_ctxt_switches:")
    }

    fn memory(&self) -> Result<Memory> {
        memory_of(self.pid)
    }
}

/// The `listen=` field of scbridge's `OSC listening` log line: where its
/// OSC listener, asked for port 0, was bound.
fn osc_listen_address(log: &str) -> Option<&str> {
    log.lines()
        .filter(|line| line.contains("OSC listening"))
        .find_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("listen=")))
}

fn bridge_config(
    sc_port: u16,
    mqtt_port: u16,
    rx_port: u16,
    reverse_max_rate: Option<f64>,
) -> String {
    let coalesce = reverse_max_rate.map(|rate| format!("max_rate = {rate}\n")).unwrap_or_default();
    format!(
        r#"[socketcluster]
url = "ws://127.0.0.1:{sc_port}/socketcluster/"
queue_size = 100000

[cables]
channel = "bench"
client_id = "scbridge-bench"

[osc]
listen = ["127.0.0.1:0"]
queue_size = 65536

[osc.targets]
rx = "127.0.0.1:{rx_port}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "scbridge-bench"
queue_size = 100000

[[route]]
name = "load"
from = {{ cables_object = "load/*" }}
to = [{{ osc = "/load/*", objects = "json" }}, {{ mqtt = "bench/load/+" }}]

[[route]]
name = "reverse"
from = {{ osc = "/rev/*" }}
to = [{{ cables_object = "rev/{{1}}" }}]
{coalesce}
[[route]]
name = "reverse_mqtt"
from = {{ mqtt = "benchrev/+" }}
to = [{{ cables_object = "rev/m{{1}}" }}]
{coalesce}"#
    )
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// Resident memory of a process, KiB.
struct Memory {
    rss_kib: u64,
    /// The peak (VmHWM).
    hwm_kib: u64,
}

fn memory_of(pid: u32) -> Result<Memory> {
    Ok(Memory { rss_kib: status_field(pid, "VmRSS:")?, hwm_kib: status_field(pid, "VmHWM:")? })
}

/// A number from `/proc/<pid>/status`, by its label.
fn status_field(pid: u32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks_of(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are plain. After
    // ")" come state (field 3) ... utime (14) and stime (15).
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))
    };
    Ok(number(11)? + number(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value, if that
/// cannot be run).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// Asks the kernel for a receive buffer of `bytes` on `socket` and returns
/// what it granted (Linux reports double the usable size). The bridge's
/// datagrams must not be lost here just because the scheduler kept this
/// receiver waiting for a few milliseconds on a busy machine; std has no
/// call for this and the bench adds no crate for it, so it calls libc,
/// which std links anyway.
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn enlarge_receive_buffer(socket: &StdUdpSocket, bytes: i32) -> Option<i32> {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
        fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            len: *mut u32,
        ) -> c_int;
    }
    // asm-generic values, shared by x86_64 and aarch64.
    const SOL_SOCKET: c_int = 1;
    const SO_RCVBUF: c_int = 8;
    let fd = socket.as_raw_fd();
    let mut granted: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as u32;
    // SAFETY: `fd` is an open socket borrowed for both calls; each value
    // pointer points at a live c_int and the length says so.
    let ok = unsafe {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, (&raw const bytes).cast(), len) == 0
            && getsockopt(fd, SOL_SOCKET, SO_RCVBUF, (&raw mut granted).cast(), &mut len) == 0
    };
    ok.then_some(granted)
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn enlarge_receive_buffer(_socket: &StdUdpSocket, _bytes: i32) -> Option<i32> {
    None
}

/// Datagrams the kernel dropped so far at the IPv4 UDP socket(s) bound to
/// `port` (the `drops` column of `/proc/net/udp`); 0 when unreadable.
fn udp_drops(port: u16) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else { return 0 };
    let wanted = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            local.ends_with(&wanted).then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// The 1-minute load average (other work on the machine skews every
/// figure); NaN when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Microseconds since the Unix epoch: the clock every timestamp uses.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// The median of each figure over the runs where it is a number.
fn median_of(runs: &[Figures]) -> Figures {
    let mut keys: Vec<&String> = runs.iter().flat_map(|run| run.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let mut values: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.get(key))
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            values.sort_by(f64::total_cmp);
            let median = match values.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => values[n / 2],
                n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            };
            (key.clone(), median)
        })
        .collect()
}

/// Figures as a JSON object; NaN becomes null.
fn figures_json(figures: &Figures) -> Value {
    let map = figures
        .iter()
        .map(|(key, value)| {
            let value = if value.is_finite() {
                if value.fract() == 0.0 && value.abs() < 9e15 {
                    json!(*value as i64)
                } else {
                    json!((value * 1000.0).round() / 1000.0)
                }
            } else {
                Value::Null
            };
            (key.clone(), value)
        })
        .collect();
    Value::Object(map)
}

fn fmt(value: Option<&f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

fn print_table(settings: &Settings, runs: &[Figures], median: &Figures) {
    let mut out = String::new();
    let n = runs.len();
    out.push_str(&format!(
        "\nscbridge-bench summary: {n} run(s), median of each figure (each computed within one run)\n"
    ));
    match settings.soak {
        Some(secs) => out.push_str(&format!("soak: {SOAK_RATE} msg/s for {secs} s\n")),
        None => {
            let paced: Vec<String> = settings
                .paced
                .iter()
                .map(|(_, rate, secs)| format!("{rate}/s for {secs} s"))
                .collect();
            out.push_str(&format!(
                "burst {}; paced {}; reverse {} addresses at {} Hz for {} s{}\n",
                settings.burst,
                paced.join(", "),
                settings.reverse_addresses,
                settings.reverse_hz,
                settings.reverse_secs,
                if settings.reverse_frames { ", frame by frame" } else { ", evenly paced" },
            ));
        }
    }
    let phases: Vec<&str> = if settings.soak.is_some() {
        vec!["soak"]
    } else {
        let mut phases = vec!["burst"];
        phases.extend(settings.paced.iter().map(|(name, _, _)| *name));
        phases
    };
    out.push_str(&format!(
        "\n{:<10} {:<7} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}\n",
        "phase", "output", "sent", "received", "lost", "msg/s", "p50 µs", "p99 µs", "max µs"
    ));
    let mut row = |phase: &str, output: &str, prefix: &str, sent_key: &str| {
        let get = |name: &str| median.get(&format!("{prefix}.{name}"));
        out.push_str(&format!(
            "{:<10} {:<7} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}\n",
            phase,
            output,
            fmt(median.get(sent_key), 0),
            fmt(get("received"), 0),
            fmt(get("lost"), 0),
            fmt(get("rate_msg_s"), 0),
            fmt(get("p50_us"), 0),
            fmt(get("p99_us"), 0),
            fmt(get("max_us"), 0),
        ));
    };
    for phase in &phases {
        for output in ["plain", "osc", "mqtt", "broker"] {
            if output == "broker" && !median.contains_key(&format!("{phase}.broker.received")) {
                continue;
            }
            row(phase, output, &format!("{phase}.{output}"), &format!("{phase}.sent"));
        }
    }
    if settings.soak.is_none() {
        row("reverse", "osc→sc", "reverse_osc", "reverse_osc.sent");
        row("reverse", "mqtt→sc", "reverse_mqtt", "reverse_mqtt.sent");
    }

    let mut lines: Vec<(String, String)> = Vec::new();
    let one = |key: &str, decimals: usize| {
        let per_run: Vec<String> = runs.iter().map(|run| fmt(run.get(key), decimals)).collect();
        (fmt(median.get(key), decimals), per_run.join(" "))
    };
    let mut add = |label: &str, key: &str, decimals: usize| {
        let (value, per_run) = one(key, decimals);
        lines.push((format!("{label:<52} {value:>10}"), per_run));
    };
    if settings.soak.is_none() {
        add("burst: OSC rate / plain rate", "burst.osc_over_plain_rate", 3);
        add("burst: MQTT rate / plain rate", "burst.mqtt_over_plain_rate", 3);
        add("paced 1k/s: OSC added p50 µs (bridge − plain)", "paced_1k.osc_added_p50_us", 0);
        add("paced 1k/s: OSC added p99 µs", "paced_1k.osc_added_p99_us", 0);
        add("paced 1k/s: MQTT added p50 µs", "paced_1k.mqtt_added_p50_us", 0);
        add("paced 1k/s: MQTT added p99 µs", "paced_1k.mqtt_added_p99_us", 0);
        add("paced 1k/s: broker alone p50 µs (publish → subscriber)", "paced_1k.broker.p50_us", 0);
        add("paced 1k/s: broker alone p99 µs", "paced_1k.broker.p99_us", 0);
        add(
            "paced 1k/s: MQTT added p50 µs beyond the broker hop",
            "paced_1k.mqtt_added_beyond_broker_p50_us",
            0,
        );
        add(
            "paced 1k/s: MQTT added p99 µs beyond the broker hop",
            "paced_1k.mqtt_added_beyond_broker_p99_us",
            0,
        );
        for (phase, label) in [("paced_1k", "paced 1k/s"), ("paced_10k", "paced 10k/s")] {
            for output in ["osc", "mqtt"] {
                for p in ["p50", "p99"] {
                    add(
                        &format!(
                            "{label}: {} behind plain, per message, {p} µs",
                            output.to_uppercase()
                        ),
                        &format!("{phase}.{output}_behind_plain_{p}_us"),
                        0,
                    );
                }
            }
        }
        add("paced 10k/s: OSC p99 − plain p99 µs", "paced_10k.osc_added_p99_us", 0);
        add("paced 10k/s: MQTT p99 − plain p99 µs", "paced_10k.mqtt_added_p99_us", 0);
        add(
            "paced 10k/s: MQTT p99 − plain p99 beyond the broker hop",
            "paced_10k.mqtt_added_beyond_broker_p99_us",
            0,
        );
        for (name, _, _) in &settings.paced {
            add(
                &format!("{name}: plain / offered rate (1: server keeps up)"),
                &format!("{name}.plain_over_offered_rate"),
                3,
            );
        }
        for phase in &phases {
            add(
                &format!("{phase}: scbridge CPU µs per forwarded msg"),
                &format!("{phase}.bridge_cpu_us_per_msg"),
                1,
            );
            add(
                &format!("{phase}: scbridge CPU s per 100k msgs"),
                &format!("{phase}.bridge_cpu_s_per_100k"),
                2,
            );
            add(
                &format!("{phase}: messages per scbridge wake-up"),
                &format!("{phase}.bridge_msgs_per_wakeup"),
                2,
            );
            add(
                &format!("{phase}: kernel floor CPU µs per msg (bare forwarder)"),
                &format!("{phase}.floor_cpu_us_per_msg"),
                1,
            );
            add(
                &format!("{phase}: messages per floor wake-up"),
                &format!("{phase}.floor_msgs_per_wakeup"),
                2,
            );
            add(
                &format!("{phase}: scbridge CPU / kernel floor"),
                &format!("{phase}.bridge_cpu_over_floor"),
                2,
            );
        }
        add(
            "burst: floor fed at the server's pace, CPU µs per msg",
            "burst.paced_floor_cpu_us_per_msg",
            1,
        );
        add("burst: messages per wake-up of that floor", "burst.paced_floor_msgs_per_wakeup", 2);
        add(
            "burst: scbridge CPU / floor at the server's pace",
            "burst.bridge_cpu_over_paced_floor",
            2,
        );
        for (phase, label) in
            [("reverse_osc", "reverse OSC→SC"), ("reverse_mqtt", "reverse MQTT→SC")]
        {
            add(&format!("{label}: p50 µs"), &format!("{phase}.p50_us"), 0);
            add(&format!("{label}: p99 µs"), &format!("{phase}.p99_us"), 0);
            add(
                &format!("{label}: added p50 µs (vs plain at the same rate)"),
                &format!("{phase}.added_p50_us"),
                0,
            );
            add(&format!("{label}: added p99 µs"), &format!("{phase}.added_p99_us"), 0);
            add(&format!("{label}: lost"), &format!("{phase}.lost"), 0);
            add(
                &format!("{label}: scbridge CPU µs per msg"),
                &format!("{phase}.bridge_cpu_us_per_msg"),
                1,
            );
        }
        for phase in &phases {
            add(
                &format!("{phase}: drops at this bench's OSC socket"),
                &format!("{phase}.rx_socket_drops"),
                0,
            );
        }
        add(
            "reverse OSC→SC: drops at scbridge's OSC listen socket",
            "reverse_osc.bridge_socket_drops",
            0,
        );
    } else {
        add("soak: scbridge CPU µs per forwarded msg", "soak.bridge_cpu_us_per_msg", 1);
        add("soak: messages per scbridge wake-up", "soak.bridge_msgs_per_wakeup", 2);
        add("soak: RSS at the reference sample KiB", "soak.rss_reference_kib", 0);
        add("soak: reference sample taken at s", "soak.rss_reference_at_s", 0);
        add("soak: RSS at the end KiB", "soak.rss_end_kib", 0);
        add("soak: RSS end / reference", "soak.rss_end_over_reference", 3);
        add("soak: drops at this bench's OSC socket", "soak.rx_socket_drops", 0);
    }
    add("scbridge RSS idle KiB (after warm-up)", "rss.idle_kib", 0);
    add("scbridge RSS peak KiB (VmHWM)", "rss.peak_kib", 0);
    add("scbridge warnings logged", "bridge.log_warnings", 0);
    add("host load average (1 min) at the start of the run", "host.loadavg_1m_at_start", 2);
    out.push_str(&format!("\n{:<52} {:>10}   per run\n", "figure", "median"));
    for (line, per_run) in lines {
        out.push_str(&format!("{line}   {per_run}\n"));
    }
    out.push_str(&format!(
        "\nCPU from /proc/<pid>/stat at CLK_TCK {} ({} ms resolution); latencies in µs from the \
         send time in each message.\n",
        settings.clk_tck,
        1000.0 / settings.clk_tck
    ));
    let _ = std::io::stdout().write_all(out.as_bytes());
}

// ---------------------------------------------------------------------------
// The kernel floor
// ---------------------------------------------------------------------------

/// The least a forwarder can cost on this machine: a thread that blocks on
/// a TCP read (as scbridge reads its WebSocket) and, for every
/// newline-ended message, sends one UDP datagram (as to OSC) and writes it
/// to a second TCP connection (as to the MQTT broker), with no parsing, no
/// routing and no runtime. It is fed the same number of messages of the
/// same size at the same rate as the phase it stands beside; its thread's
/// CPU per message (`getrusage(RUSAGE_THREAD)`, kernel time included) is
/// what the socket work alone costs here. Returns µs per message.
fn kernel_floor(count: u64, feed: Feed, message_bytes: usize) -> Result<FloorCost> {
    use std::io::Read as _;
    let input = TcpListener::bind("127.0.0.1:0")?;
    let input_addr = input.local_addr()?;
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    let datagrams = StdUdpSocket::bind("127.0.0.1:0")?;
    datagrams.set_read_timeout(Some(Duration::from_millis(200)))?;
    let datagram_addr = datagrams.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));

    let udp_done = done.clone();
    let udp_reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !udp_done.load(Ordering::Relaxed) {
            let _ = datagrams.recv(&mut buf);
        }
    });
    let tcp_reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = sink.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        while stream.read(&mut buf)? > 0 {}
        Ok(())
    });
    let forwarder = std::thread::spawn(move || -> std::io::Result<FloorCost> {
        let (mut from, _) = input.accept()?;
        let mut to = std::net::TcpStream::connect(sink_addr)?;
        to.set_nodelay(true)?;
        let udp = StdUdpSocket::bind("127.0.0.1:0")?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut pending = Vec::new();
        let mut forwarded = 0u64;
        let mut reads = 0u64;
        let before = thread_cpu_us();
        while forwarded < count {
            let read = from.read(&mut buf)?;
            if read == 0 {
                break;
            }
            reads += 1;
            pending.extend_from_slice(&buf[..read]);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                let message = &pending[start..start + end];
                udp.send_to(message, datagram_addr)?;
                to.write_all(message)?;
                forwarded += 1;
                start += end + 1;
            }
            pending.drain(..start);
        }
        let cpu_us = thread_cpu_us() - before;
        Ok(FloorCost {
            cpu_us_per_msg: cpu_us / forwarded.max(1) as f64,
            msgs_per_wakeup: forwarded as f64 / reads.max(1) as f64,
        })
    });

    let mut feeder = std::net::TcpStream::connect(input_addr)?;
    feeder.set_nodelay(true)?;
    let mut line = vec![b'x'; message_bytes.max(2) - 1];
    line.push(b'\n');
    let batch = feed.batch.max(1);
    let lines = line.repeat(batch);
    let start = std::time::Instant::now();
    let mut k = 0;
    while k < count {
        if let Some(rate) = feed.rate {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let n = (count - k).min(batch as u64) as usize;
        feeder.write_all(&lines[..n * line.len()])?;
        k += n as u64;
    }
    let cost = forwarder.join().map_err(|_| anyhow!("the floor forwarder panicked"))??;
    drop(feeder);
    done.store(true, Ordering::Relaxed);
    let _ = udp_reader.join();
    let _ = tcp_reader.join();
    Ok(cost)
}

/// How the floor forwarder is fed: flat out (`rate: None`) or at `rate`
/// messages/s, `batch` messages per write.
#[derive(Clone, Copy)]
struct Feed {
    rate: Option<f64>,
    batch: usize,
}

/// What the floor forwarder cost.
struct FloorCost {
    cpu_us_per_msg: f64,
    /// Messages per read that returned data: each is one wake-up.
    msgs_per_wakeup: f64,
}

async fn run_floor(count: u64, feed: Feed, message_bytes: usize) -> Result<FloorCost> {
    let floor = tokio::task::spawn_blocking(move || kernel_floor(count, feed, message_bytes));
    floor.await.map_err(|err| anyhow!("the floor forwarder: {err}"))?
}

/// This thread's user plus system CPU time, µs.
fn thread_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}
