//! `scbridge check` and `scbridge explain`: the resolved config and a dry run
//! of one message through the routing table. No network; secrets (tokens,
//! passwords, header values, cables extra values) are never printed.

use std::fmt::Write;

use serde_json::Value;

use crate::cables::Cables;
use crate::config::Config;
use crate::message::{Body, Message, SourceKind};
use crate::mqtt::MqttProtocol;
use crate::osc::mapping::{OscOutOptions, to_osc};
use crate::route::{Outbound, RoutingTable, Skip, Target};
use crate::sc::AuthToken;

/// The kind names `explain` takes, as in a route's `from`.
pub fn source_kind(name: &str) -> Option<SourceKind> {
    [
        SourceKind::CablesObject,
        SourceKind::CablesTrigger,
        SourceKind::ScChannel,
        SourceKind::ScEvent,
        SourceKind::Osc,
        SourceKind::Mqtt,
    ]
    .into_iter()
    .find(|kind| kind.key() == name)
}

fn describe_target(config: &Config, target: &Target) -> String {
    match target {
        Target::Osc { target, options } => {
            let name = config.osc.as_ref().and_then(|o| o.targets.get(*target));
            let place =
                name.map_or_else(|| "?".to_owned(), |t| format!("{} ({})", t.name, t.describe()));
            format!("osc to {place}{}", describe_osc_options(options))
        }
        Target::Mqtt { qos, retain, format } => {
            format!("mqtt qos {} retain {retain} payload {format:?}", qos.level())
        }
        Target::CablesObject => "cables object".to_owned(),
        Target::CablesTrigger { topic } => match topic {
            Some(topic) => format!("cables trigger (topic {topic:?})"),
            None => "cables trigger".to_owned(),
        },
        Target::ScChannel => "SocketCluster channel".to_owned(),
        Target::ScEvent { invoke } => {
            if *invoke {
                "SocketCluster event (invoke)".into()
            } else {
                "SocketCluster event".into()
            }
        }
    }
}

fn describe_osc_options(options: &OscOutOptions) -> String {
    if *options == OscOutOptions::default() {
        return String::new();
    }
    let mut text = format!(
        " [numbers {:?}, bools {:?}, null {:?}, objects {:?}, trigger {:?}",
        options.numbers, options.bools, options.null, options.objects, options.trigger
    );
    if let Some(types) = &options.types {
        let tags: String = types.iter().map(|t| t.as_char()).collect();
        let _ = write!(text, ", types {tags}");
    }
    text.push(']');
    text
}

/// The resolved config, as `scbridge check` prints it.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let sc = &config.socketcluster;
    let auth = match &sc.auth {
        AuthToken::None => "none".to_owned(),
        AuthToken::Inline(_) => "token (inline, hidden)".to_owned(),
        AuthToken::File(path) => format!("token file {}", path.display()),
    };
    let _ = writeln!(
        out,
        "socketcluster: {} (protocol {}, {}, reconnect {} ms, queue {}, tls verify {}, auth {auth})",
        sc.display_url(),
        sc.protocol.number(),
        if sc.active { "active" } else { "inactive" },
        sc.reconnect.delay.as_millis(),
        sc.queue_size,
        sc.verify_tls,
    );
    if !sc.headers.is_empty() {
        let names: Vec<&str> = sc.headers.iter().map(|(name, _)| name.as_str()).collect();
        let _ = writeln!(out, "  extra headers (values hidden): {}", names.join(", "));
    }
    if let Some(cables) = &config.cables {
        let extra: Vec<&str> = cables.extra.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "cables: channel {:?}, client id {:?}, allow_send {}, allow_multiple_senders {}, receive_own {}, extra keys (values hidden): [{}]",
            cables.channel,
            cables.client_id,
            cables.allow_send,
            cables.allow_multiple_senders,
            cables.receive_own,
            extra.join(", ")
        );
    }
    if let Some(osc) = &config.osc {
        let listen: Vec<String> = osc.listen.iter().map(ToString::to_string).collect();
        let targets: Vec<String> =
            osc.targets.iter().map(|t| format!("{}={}", t.name, t.describe())).collect();
        let _ =
            writeln!(out, "osc: listen [{}], targets [{}]", listen.join(", "), targets.join(", "));
    }
    if let Some(mqtt) = &config.mqtt {
        let protocol = match mqtt.protocol {
            MqttProtocol::V311 => "3.1.1",
            MqttProtocol::V5 => "5",
        };
        let _ = writeln!(
            out,
            "mqtt: {}:{} (MQTT {protocol}{}), client id {:?}, user {}, availability {}",
            mqtt.host,
            mqtt.port,
            if mqtt.tls { ", TLS" } else { "" },
            mqtt.client_id,
            mqtt.username
                .as_deref()
                .map_or("none".to_owned(), |u| format!("{u:?} (password hidden)")),
            mqtt.availability_topic.as_deref().unwrap_or("off"),
        );
    }
    if let Some(http) = &config.http {
        let _ = writeln!(out, "http: {} (recent {} lines)", http.listen, http.max_lines);
    }
    let _ = writeln!(out, "routes: {}", config.routes.len());
    for (index, route) in config.routes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  [{index}] {:?}{}{}{}{}: {} {:?}",
            route.name,
            if route.enabled { "" } else { " (disabled)" },
            if route.delay.is_zero() {
                String::new()
            } else {
                format!(" (delay {} ms)", route.delay.as_millis())
            },
            route
                .min_interval
                .map(|interval| {
                    // The interval was rounded to whole nanoseconds.
                    let rate = format!("{:.2}", 1.0 / interval.as_secs_f64());
                    format!(" (max {}/s)", rate.trim_end_matches('0').trim_end_matches('.'))
                })
                .unwrap_or_default(),
            if route.trigger_on == crate::route::TriggerOn::Any {
                " (every value a trigger)"
            } else {
                ""
            },
            route.source.kind.key(),
            route.source.pattern.text,
        );
        for destination in &route.destinations {
            let _ = writeln!(
                out,
                "      -> {:?} via {}",
                destination.template.text,
                describe_target(config, &destination.target)
            );
        }
    }
    out
}

/// A dry run: which routes match a sample message and exactly what would go
/// out where, or why nothing would.
pub fn explain(config: &Config, source: SourceKind, name: &str, value: Option<Value>) -> String {
    let mut out = String::new();
    let message = match (source, value) {
        (SourceKind::CablesTrigger, _) => Message::trigger(source, name),
        (_, value) => Message::value(source, name, value.unwrap_or(Value::Null)),
    };
    let shown = match &message.body {
        Body::Value(value) => value.to_string(),
        Body::Trigger => "(trigger)".to_owned(),
    };
    let _ = writeln!(out, "message: {} {:?} = {shown}", source.key(), name);
    let table = RoutingTable::new(config.routes.clone());
    let (mut outputs, mut skipped) = (Vec::new(), Vec::new());
    table.route(&message, |id| table.routes()[id.0].enabled, &mut outputs, &mut skipped);
    let matches = table.matches(&message);
    if matches.is_empty() {
        let _ = writeln!(out, "no route matches: dropped (counted as `unrouted`)");
        return out;
    }
    for (id, captures) in matches {
        let route = &table.routes()[id.0];
        let _ = writeln!(out, "route [{}] {:?} matches, captures {captures:?}", id.0, route.name);
        for (skip_id, skip) in skipped.iter().filter(|(r, _)| *r == id) {
            let why = match skip {
                Skip::Disabled => "the route is disabled: nothing sent (counted as `disabled`)",
                Skip::Loop => "one destination is the source itself: skipped (counted as `loops`)",
                Skip::BadName => {
                    "a destination name could not be made, or came out empty: skipped (counted as `bad_names`)"
                }
                Skip::Release => {
                    "a button's release (0, false, off) is no trigger: skipped (counted as `releases`; `trigger_on = \"any\"` sends it)"
                }
            };
            let _ = writeln!(out, "  route [{}]: {why}", skip_id.0);
        }
        for output in outputs.iter().filter(|o| o.route == id) {
            let _ = writeln!(out, "  -> {}", describe_output(config, output));
        }
    }
    out
}

fn describe_output(config: &Config, output: &Outbound) -> String {
    match &output.target {
        Target::Osc { target, options } => {
            let place = config
                .osc
                .as_ref()
                .and_then(|o| o.targets.get(*target))
                .map_or_else(|| "?".to_owned(), |t| format!("{} ({})", t.name, t.describe()));
            match to_osc(&output.name, &output.body, options) {
                Ok(messages) => {
                    let lines: Vec<String> = messages
                        .iter()
                        .map(|m| {
                            let tags: String = m.args.iter().map(osc_tag).collect();
                            let args: Vec<String> =
                                m.args.iter().map(|a| format!("{a:?}")).collect();
                            format!("{} ,{tags} {}", m.addr, args.join(" "))
                        })
                        .collect();
                    format!("OSC to {place}: {}", lines.join(" | "))
                }
                Err(err) => format!("OSC to {place}: not sent: {err} (counted as `map_errors`)"),
            }
        }
        Target::Mqtt { qos, retain, format } => {
            let payload = crate::mqtt::payload::encode(&output.body, *format);
            format!(
                "MQTT topic {:?} qos {} retain {retain} payload {:?}",
                output.name,
                qos.level(),
                String::from_utf8_lossy(&payload)
            )
        }
        Target::CablesObject | Target::CablesTrigger { .. } => {
            let Some(cables) = &config.cables else { return "cables: not configured".into() };
            let mut hidden = cables.clone();
            for value in hidden.extra.values_mut() {
                *value = Value::String("<hidden>".into());
            }
            let cables_state = Cables::new(hidden);
            let (channel, envelope) = match &output.target {
                Target::CablesTrigger { topic } => (
                    cables_state.triggers_channel().to_owned(),
                    cables_state.envelope(
                        topic.as_deref().unwrap_or(&output.name),
                        Value::String(output.name.clone()),
                    ),
                ),
                _ => (
                    cables_state.objects_channel().to_owned(),
                    cables_state.envelope(&output.name, body_value(&output.body, &output.name)),
                ),
            };
            let allowed = if cables.allow_send {
                ""
            } else {
                " (withheld: allow_send is off, counted as `not_allowed`)"
            };
            format!("SocketCluster publish on {channel:?}: {envelope}{allowed}")
        }
        Target::ScChannel => {
            format!(
                "SocketCluster publish on {:?}: {}",
                output.name,
                body_value(&output.body, &output.name)
            )
        }
        Target::ScEvent { invoke } => format!(
            "SocketCluster {} {:?}: {}",
            if *invoke { "invoke" } else { "transmit" },
            output.name,
            body_value(&output.body, &output.name)
        ),
    }
}

fn body_value(body: &Body, name: &str) -> Value {
    match body {
        Body::Value(value) => value.clone(),
        Body::Trigger => Value::String(name.to_owned()),
    }
}

fn osc_tag(arg: &rosc::OscType) -> char {
    use rosc::OscType::*;
    match arg {
        Int(_) => 'i',
        Float(_) => 'f',
        String(_) => 's',
        Blob(_) => 'b',
        Time(_) => 't',
        Long(_) => 'h',
        Double(_) => 'd',
        Char(_) => 'c',
        Color(_) => 'r',
        Midi(_) => 'm',
        Bool(true) => 'T',
        Bool(false) => 'F',
        Array(_) => '[',
        Nil => 'N',
        Inf => 'I',
    }
}
