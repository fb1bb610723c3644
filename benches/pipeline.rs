//! What one message costs inside scbridge, stage by stage, with no socket
//! in the way: the same `#publish` frame the end-to-end benchmark sends
//! (a cables envelope on `bench/objects`), through the same two routes (OSC
//! with `objects = "json"` and MQTT), measured in one run:
//!
//! 1. `decode`: the WebSocket text to a packet (JSON parse included);
//! 2. `cables`: the `#publish` data to a routed message (envelope checks);
//! 3. `route`: the routing table, fan-out to both destinations;
//! 4. `osc`: mapping to OSC and encoding the datagram;
//! 5. `mqtt`: encoding the MQTT payload.
//!
//! The sum is the user-space work per forwarded message; set against the
//! end-to-end `bridge_cpu_us_per_msg` of `scbridge-bench` it shows how much
//! of the bridge's CPU is its own code and how much is the kernel's
//! (sockets, wake-ups).
//!
//! `cargo bench --bench pipeline` measures; under `cargo test` it only runs
//! a few iterations to prove it still works. Timings move with the load on
//! the machine; for comparing two builds, count instructions instead:
//! `valgrind --tool=callgrind target/release/deps/pipeline-* --rounds 20000`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use scbridge::cables::{Cables, Received};
use scbridge::config::Config;
use scbridge::message::Message;
use scbridge::mqtt::payload;
use scbridge::osc::to_osc;
use scbridge::route::{Outbound, RoutingTable, Target};
use scbridge::sc::codec::{self, Frame, Packet};
use serde_json::Value;

const CONFIG: &str = r#"
[socketcluster]
url = "ws://127.0.0.1:8000/socketcluster/"

[cables]
channel = "bench"
client_id = "scbridge-bench"

[osc.targets]
rx = "127.0.0.1:9000"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[route]]
name = "load"
from = { cables_object = "load/*" }
to = [{ osc = "/load/*", objects = "json" }, { mqtt = "bench/load/+" }]
"#;

fn frame(seq: u64) -> String {
    format!(
        r##"{{"event":"#publish","data":{{"channel":"bench/objects","data":{{"topic":"load/x","clientId":"gen","payload":{{"seq":{seq},"t":1763900000123456,"v":0.5}}}}}}}}"##
    )
}

/// The stages, each a function of the previous stage's output.
fn decode(text: &str) -> (String, Value) {
    let Frame::Packets(mut packets) = codec::decode(text) else { panic!("not a ping") };
    let Some(Ok(Packet::Event { data: Some(Value::Object(mut data)), .. })) = packets.pop() else {
        panic!("a publish")
    };
    let Some(Value::String(channel)) = data.remove("channel") else { panic!("a channel") };
    (channel, data.remove("data").unwrap_or(Value::Null))
}

fn cables(cables: &mut Cables, channel: &str, data: Value) -> Message {
    match cables.receive(channel, data) {
        Received::Message(message) => message,
        _ => panic!("a cables object"),
    }
}

fn route(table: &RoutingTable, message: &Message, out: &mut Vec<Outbound>) {
    out.clear();
    let mut skipped = Vec::new();
    table.route(message, |_| true, out, &mut skipped);
    assert_eq!(out.len(), 2);
}

fn encode_osc(out: &Outbound, buffer: &mut Vec<u8>) -> usize {
    let Target::Osc { options, .. } = &out.target else { panic!("OSC first") };
    let messages = to_osc(&out.name, &out.body, options).expect("maps");
    buffer.clear();
    for message in messages {
        let _ = rosc::encoder::encode_into(&rosc::OscPacket::Message(message), buffer);
    }
    buffer.len()
}

fn encode_mqtt(out: &Outbound) -> Vec<u8> {
    let Target::Mqtt { format, .. } = &out.target else { panic!("MQTT second") };
    payload::encode(&out.body, *format)
}

/// Nanoseconds per message of each stage, measured on `rounds` messages.
fn measure(rounds: u64) -> [f64; 5] {
    let config = Config::from_toml(CONFIG, "pipeline bench").expect("the config is valid");
    let table = RoutingTable::new(config.routes.clone());
    let mut cables_state = Cables::new(config.cables.clone().expect("a cables table"));
    let frames: Vec<String> = (0..rounds).map(frame).collect();
    let mut spent = [Duration::ZERO; 5];
    let mut outputs = Vec::new();
    let mut buffer = Vec::new();
    for text in &frames {
        let t0 = Instant::now();
        let (channel, data) = black_box(decode(black_box(text)));
        let t1 = Instant::now();
        let message = black_box(cables(&mut cables_state, &channel, data));
        let t2 = Instant::now();
        route(&table, &message, &mut outputs);
        let t3 = Instant::now();
        black_box(encode_osc(&outputs[0], &mut buffer));
        let t4 = Instant::now();
        black_box(encode_mqtt(&outputs[1]));
        let t5 = Instant::now();
        // What the stages made is dropped at the end of the iteration,
        // outside the clock (but for the outputs, which `route` clears), so
        // the figures are a floor.
        for (slot, (from, to)) in
            spent.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)])
        {
            *slot += to - from;
        }
    }
    spent.map(|d| d.as_nanos() as f64 / rounds as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    // `--rounds N` sets the count, e.g. for a run under callgrind, whose
    // instruction counts do not depend on what else the machine does.
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if measuring { 200_000 } else { 10 });
    measure(rounds / 10 + 1);
    let stages = measure(rounds);
    let total: f64 = stages.iter().sum();
    let names = ["decode", "cables", "route", "osc", "mqtt"];
    println!("pipeline: ns per message, one cables object to OSC (json) and MQTT, no sockets");
    for (name, ns) in names.iter().zip(&stages) {
        println!("  {name:<8} {ns:>8.0} ns   ({:>4.1}% of the total)", ns / total * 100.0);
    }
    println!("  {:<8} {total:>8.0} ns", "total");
    let fields: Vec<String> =
        names.iter().zip(&stages).map(|(name, ns)| format!("\"{name}\":{ns:.0}")).collect();
    println!(
        "{{\"bench\":\"pipeline\",\"ns_per_message\":{{{},\"total\":{total:.0}}}}}",
        fields.join(",")
    );
}
