//! Route names. Any pattern or template text parses or is refused without
//! a panic; a template fills from as many captures as it uses and from no
//! fewer; the indexed routing table finds exactly what the reference
//! matcher (`Pattern::matches`) finds; and a pattern read as a template
//! puts a matched name back together.
//!
//! Input: lines. The first is the name to match; every other line is both
//! a source pattern and a template.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use scbridge::message::{Message, SourceKind};
use scbridge::mqtt::QoS;
use scbridge::route::pattern::Segment;
use scbridge::route::{Pattern, Route, RouteId, RoutingTable, Source, Template};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let Some(name) = lines.next() else { return };
    let mut routes = Vec::new();
    for line in lines.take(64) {
        if let Ok(template) = Template::parse(line) {
            // The config refuses a template that uses more captures than its
            // source pattern yields, so `uses` captures always fill it, and
            // one fewer never does.
            let captures: Vec<String> = (0..template.uses).map(|n| n.to_string()).collect();
            assert!(template.fill(&captures).is_some(), "{line:?}");
            if let Some((_, fewer)) = captures.split_last() {
                assert!(template.fill(fewer).is_none(), "{line:?}");
            }
        }
        let Ok(pattern) = Pattern::parse(line) else { continue };
        if let Some(captures) = pattern.matches(name) {
            assert_eq!(captures.len(), pattern.captures());
            let empty_rest = matches!(pattern.segments.last(), Some(Segment::Rest))
                && captures.last().is_some_and(String::is_empty);
            // Braces in a literal segment are placeholders in a template; a
            // rest that captured nothing fills back without its `/`, so `a`
            // and `a/` both come back as `a`.
            if !line.contains(['{', '}']) && !empty_rest {
                let template = Template::parse(line).expect("a pattern is a template");
                assert_eq!(template.fill(&captures).as_deref(), Some(name), "{line:?}");
            }
        }
        routes.push(Route {
            name: format!("route {}", routes.len()),
            source: Source {
                kind: SourceKind::Osc,
                pattern,
                wait_for_auth: false,
                qos: QoS::default(),
            },
            destinations: Vec::new(),
            enabled: true,
            delay: Duration::ZERO,
            min_interval: None,
            trigger_on: scbridge::route::TriggerOn::Press,
        });
    }
    let expected: Vec<(RouteId, Vec<String>)> = routes
        .iter()
        .enumerate()
        .filter_map(|(id, route)| Some((RouteId(id), route.source.pattern.matches(name)?)))
        .collect();
    let table = RoutingTable::new(routes);
    assert_eq!(table.matches(&Message::value(SourceKind::Osc, name, Value::Null)), expected);
});
