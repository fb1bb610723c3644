//! How the routing table's matching cost grows with the table: the same
//! lookups against tables of 10, 100 and 1,000 routes, reported as time per
//! message and as a ratio to the smallest table, measured in one run.
//!
//! `cargo bench --bench routing` measures; under `cargo test` it only runs a
//! few iterations to prove it still works.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scbridge::message::{Message, SourceKind};
use scbridge::mqtt::{PayloadFormat, QoS};
use scbridge::osc::mapping::OscOutOptions;
use scbridge::route::{
    Destination, Outbound, Pattern, Route, RoutingTable, Source, Target, Template,
};

/// A realistic table: installation-style names, a quarter with wildcards.
fn table(size: usize) -> RoutingTable {
    let routes = (0..size)
        .map(|i| {
            let pattern = match i % 4 {
                0 => format!("room{}/sensor{}/*", i % 50, i),
                1 => format!("room{}/light{}", i % 50, i),
                2 => format!("room{}/*/level{}", i % 50, i),
                _ => format!("zone{}/{}/value", i % 20, i),
            };
            Route {
                name: format!("route {i}"),
                source: Source {
                    kind: SourceKind::CablesObject,
                    pattern: Pattern::parse(&pattern).expect("pattern"),
                    wait_for_auth: false,
                    qos: QoS::AtMostOnce,
                },
                destinations: vec![
                    Destination {
                        target: Target::Osc {
                            target: 0,
                            options: Arc::new(OscOutOptions::default()),
                        },
                        template: Template::parse(&format!("/td/{pattern}")).expect("template"),
                    },
                    Destination {
                        target: Target::Mqtt {
                            qos: QoS::AtMostOnce,
                            retain: false,
                            format: PayloadFormat::Auto,
                        },
                        template: Template::parse(&format!("home/{pattern}")).expect("template"),
                    },
                ],
                enabled: true,
                delay: Duration::ZERO,
                min_interval: None,
                trigger_on: scbridge::route::TriggerOn::Press,
            }
        })
        .collect();
    RoutingTable::new(routes)
}

/// Names that hit (the first routes, present in every table) and miss.
fn messages() -> Vec<Message> {
    [
        "room0/sensor0/temp",
        "room1/light1",
        "room2/x/level2",
        "zone3/3/value",
        "room7/nothing/here",
        "unrelated/topic",
    ]
    .iter()
    .map(|name| Message::value(SourceKind::CablesObject, *name, serde_json::json!(0.5)))
    .collect()
}

fn nanos_per_message(table: &RoutingTable, messages: &[Message], rounds: usize) -> f64 {
    let mut out: Vec<Outbound> = Vec::new();
    let mut skipped = Vec::new();
    let start = Instant::now();
    for _ in 0..rounds {
        for message in messages {
            out.clear();
            skipped.clear();
            table.route(black_box(message), |_| true, &mut out, &mut skipped);
            black_box(&out);
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * messages.len()) as f64
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rounds = if measuring { 200_000 } else { 10 };
    let messages = messages();
    let sizes = [10, 100, 1000];
    let tables: Vec<RoutingTable> = sizes.iter().map(|&n| table(n)).collect();
    // Warm up caches and the allocator before measuring any of them.
    for table in &tables {
        nanos_per_message(table, &messages, rounds / 10 + 1);
    }
    let results: Vec<f64> =
        tables.iter().map(|t| nanos_per_message(t, &messages, rounds)).collect();
    println!("routing: ns per message (6 names: 4 hits with fan-out to 2 destinations, 2 misses)");
    for (size, ns) in sizes.iter().zip(&results) {
        println!("  {size:>5} routes: {ns:>8.1} ns   ({:.2}x the 10-route table)", ns / results[0]);
    }
    println!(
        "{{\"bench\":\"routing\",\"ns_per_message\":{{\"10\":{:.1},\"100\":{:.1},\"1000\":{:.1}}},\"ratio_1000_to_10\":{:.2}}}",
        results[0],
        results[1],
        results[2],
        results[2] / results[0]
    );
}
