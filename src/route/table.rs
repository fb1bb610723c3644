//! [`RoutingTable`]: routes indexed by source kind in a segment trie, so the
//! cost of matching a name grows with the name's depth and the wildcards on
//! its path, not with the number of routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::pattern::{Pattern, Segment, Template};
use crate::message::{Body, Message, SourceKind};
use crate::mqtt::{PayloadFormat, QoS};
use crate::osc::mapping::OscOutOptions;

/// A route's position in the table (and in the config's `[[route]]` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub usize);

/// What a route listens to.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub kind: SourceKind,
    pub pattern: Pattern,
    /// For an `sc_channel` source: subscribe only once authenticated.
    pub wait_for_auth: bool,
    /// For an `mqtt` source: the subscription QoS.
    pub qos: QoS,
}

/// Where a destination sends, with its per-destination options.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Osc {
        target: usize,
        options: Arc<OscOutOptions>,
    },
    Mqtt {
        qos: QoS,
        retain: bool,
        format: PayloadFormat,
    },
    CablesObject,
    /// `topic` is the envelope's topic (what a cables ReceiveTrigger op
    /// filters on); without one, the trigger's name.
    CablesTrigger {
        topic: Option<String>,
    },
    ScChannel,
    ScEvent {
        invoke: bool,
    },
}

/// Characters OSC reserves for address patterns; a name must not carry them.
pub const OSC_RESERVED: &[char] = &[' ', '#', '*', ',', '?', '[', ']', '{', '}'];
/// An empty capture leaves an empty level (`/td//b`, `/td/`); OSC 1.1 reads
/// `//` as a wildcard across levels, so an empty level becomes `_` too. An
/// MQTT topic may have empty levels and keeps them.
fn fill_empty_osc_levels(name: String) -> String {
    let body = name.strip_prefix('/').unwrap_or(&name);
    if !body.contains("//") && !body.starts_with('/') && !(body.ends_with('/')) {
        return name;
    }
    let levels: Vec<&str> =
        body.split('/').map(|level| if level.is_empty() { "_" } else { level }).collect();
    format!("/{}", levels.join("/"))
}

/// Characters an MQTT topic name must not carry: the filter wildcards and NUL.
const MQTT_RESERVED: &[char] = &['+', '#', '\0'];

impl Target {
    /// Makes a filled-in name valid on its side: captures may bring in
    /// characters the destination does not allow. They become `_`.
    pub fn sanitize(&self, name: String) -> String {
        let forbidden: &[char] = match self {
            Target::Osc { .. } => OSC_RESERVED,
            Target::Mqtt { .. } => MQTT_RESERVED,
            _ => return name,
        };
        // Every forbidden character is ASCII, and no byte of a multi-byte
        // UTF-8 character is, so a byte scan finds them. It runs on every
        // message; `str::contains` with a char slice costs several times more.
        let found = name.bytes().any(|b| forbidden.iter().any(|&c| c as u32 == u32::from(b)));
        let name = if found { name.replace(forbidden, "_") } else { name };
        match self {
            Target::Osc { .. } => fill_empty_osc_levels(name),
            _ => name,
        }
    }

    /// The source kind a message sent here would come back as, if the
    /// other side echoed it; used to refuse sending a name back where it came from.
    fn echo_kind(&self) -> SourceKind {
        match self {
            Target::Osc { .. } => SourceKind::Osc,
            Target::Mqtt { .. } => SourceKind::Mqtt,
            Target::CablesObject => SourceKind::CablesObject,
            Target::CablesTrigger { .. } => SourceKind::CablesTrigger,
            Target::ScChannel => SourceKind::ScChannel,
            Target::ScEvent { .. } => SourceKind::ScEvent,
        }
    }

    /// Whether this destination carries triggers rather than values.
    pub fn is_trigger(&self) -> bool {
        matches!(self, Target::CablesTrigger { .. })
    }
}

/// One destination of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub target: Target,
    pub template: Template,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub source: Source,
    pub destinations: Vec<Destination>,
    pub enabled: bool,
    /// Hold each output this long before sending (cables' "Delay send").
    pub delay: Duration,
    /// At most one output per destination name per this interval; the
    /// latest value wins (`max_rate` per second). Never set on trigger routes.
    pub min_interval: Option<Duration>,
    /// Which values become a trigger at a trigger destination.
    pub trigger_on: TriggerOn,
}

/// Which values a route turns into a trigger (`trigger_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerOn {
    /// Every value but a button's release (0, false, off): a button sends
    /// 1 and then 0 for one press.
    #[default]
    Press,
    /// Every message, a 0 included.
    Any,
}

impl Route {
    /// A trigger route: its source or one of its destinations is a trigger.
    pub fn carries_triggers(&self) -> bool {
        self.source.kind == SourceKind::CablesTrigger
            || self.destinations.iter().any(|d| d.target.is_trigger())
    }
}

/// One message to send, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub route: RouteId,
    /// The index of the destination within its route.
    pub destination: usize,
    pub target: Target,
    pub name: String,
    pub body: Body,
}

impl Outbound {
    /// About how much memory the output holds while it waits (its delay,
    /// its `max_rate` turn, or in the resend memory).
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.name.len() + self.body.held_bytes()
    }
}

/// Why a matched route sent nothing to one of its destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The route is switched off.
    Disabled,
    /// The destination name equals the source name on the same side.
    Loop,
    /// The destination name could not be made from the captures, or came
    /// out empty.
    BadName,
    /// A button's release, which is no trigger (`trigger_on = "press"`).
    Release,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    one: Option<Box<Node>>,
    /// Routes whose pattern ends with a rest wildcard here.
    rest: Vec<usize>,
    /// Routes whose pattern ends exactly here.
    end: Vec<usize>,
}

impl Node {
    fn insert(&mut self, segments: &[Segment], route: usize) {
        match segments.split_first() {
            None => self.end.push(route),
            Some((Segment::Rest, _)) => self.rest.push(route),
            Some((Segment::One, rest)) => {
                self.one.get_or_insert_with(Box::default).insert(rest, route)
            }
            Some((Segment::Literal(text), rest)) => {
                self.literal.entry(text.clone()).or_default().insert(rest, route)
            }
        }
    }

    fn collect(
        &self,
        parts: &[&str],
        captures: &mut Vec<String>,
        out: &mut Vec<(usize, Vec<String>)>,
    ) {
        for &route in &self.rest {
            let mut with_rest = captures.clone();
            with_rest.push(parts.join("/"));
            out.push((route, with_rest));
        }
        let Some((first, rest)) = parts.split_first() else {
            out.extend(self.end.iter().map(|&route| (route, captures.clone())));
            return;
        };
        if let Some(child) = self.literal.get(*first) {
            child.collect(rest, captures, out);
        }
        if let Some(child) = &self.one {
            captures.push((*first).to_owned());
            child.collect(rest, captures, out);
            captures.pop();
        }
    }
}

/// The validated routes, indexed for matching.
#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: Vec<Route>,
    index: HashMap<SourceKind, Node>,
}

impl RoutingTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut index: HashMap<SourceKind, Node> = HashMap::new();
        for (position, route) in routes.iter().enumerate() {
            index
                .entry(route.source.kind)
                .or_default()
                .insert(&route.source.pattern.segments, position);
        }
        RoutingTable { routes, index }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether any route, enabled or not, has a cables destination.
    pub fn sends_to_cables(&self) -> bool {
        self.routes
            .iter()
            .flat_map(|r| &r.destinations)
            .any(|d| matches!(d.target, Target::CablesObject | Target::CablesTrigger { .. }))
    }

    pub fn route_by_id(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id.0)
    }

    pub fn find(&self, name: &str) -> Option<RouteId> {
        self.routes.iter().position(|r| r.name == name).map(RouteId)
    }

    /// The routes that match a message, in table order, with their captures.
    pub fn matches(&self, message: &Message) -> Vec<(RouteId, Vec<String>)> {
        let Some(root) = self.index.get(&message.source) else { return Vec::new() };
        let parts: Vec<&str> = message.name.split('/').collect();
        let mut found = Vec::new();
        root.collect(&parts, &mut Vec::new(), &mut found);
        found.sort_by_key(|(route, _)| *route);
        found.into_iter().map(|(route, captures)| (RouteId(route), captures)).collect()
    }

    /// Routes one message: what to send, and what was skipped and why.
    /// `enabled` overrides a route's own switch (runtime control).
    pub fn route(
        &self,
        message: &Message,
        enabled: impl Fn(RouteId) -> bool,
        out: &mut Vec<Outbound>,
        skipped: &mut Vec<(RouteId, Skip)>,
    ) {
        for (id, captures) in self.matches(message) {
            let route = &self.routes[id.0];
            if !enabled(id) {
                skipped.push((id, Skip::Disabled));
                continue;
            }
            let mut released = false;
            for (position, destination) in route.destinations.iter().enumerate() {
                if destination.target.is_trigger()
                    && route.trigger_on == TriggerOn::Press
                    && message.body.is_release()
                {
                    // Once per route: `releases` counts button releases.
                    if !released {
                        skipped.push((id, Skip::Release));
                        released = true;
                    }
                    continue;
                }
                let Some(name) = destination.template.fill(&captures) else {
                    skipped.push((id, Skip::BadName));
                    continue;
                };
                let name = destination.target.sanitize(name);
                if name.is_empty() {
                    skipped.push((id, Skip::BadName));
                    continue;
                }
                if destination.target.echo_kind() == message.source && name == message.name {
                    skipped.push((id, Skip::Loop));
                    continue;
                }
                out.push(Outbound {
                    route: id,
                    destination: position,
                    target: destination.target.clone(),
                    body: convert_body(message, &destination.target),
                    name,
                });
            }
        }
    }
}

/// Values and triggers meet here: a trigger sent to a value destination
/// carries its name; a value sent to a trigger destination is just a trigger
/// (the destination name is the trigger's name); OSC maps triggers itself.
fn convert_body(message: &Message, target: &Target) -> Body {
    match (&message.body, target) {
        (_, Target::CablesTrigger { .. }) => Body::Trigger,
        (Body::Trigger, Target::Osc { .. }) => Body::Trigger,
        (Body::Trigger, _) => Body::Value(Value::String(message.name.clone())),
        (body, _) => body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(kind: SourceKind, pattern: &str) -> Source {
        Source {
            kind,
            pattern: Pattern::parse(pattern).expect("pattern"),
            wait_for_auth: false,
            qos: QoS::AtMostOnce,
        }
    }

    fn dest(target: Target, template: &str) -> Destination {
        Destination { target, template: Template::parse(template).expect("template") }
    }

    fn osc() -> Target {
        Target::Osc { target: 0, options: Arc::new(OscOutOptions::default()) }
    }

    fn mqtt(retain: bool) -> Target {
        Target::Mqtt { qos: QoS::AtMostOnce, retain, format: PayloadFormat::Auto }
    }

    fn route(name: &str, source: Source, destinations: Vec<Destination>) -> Route {
        Route {
            name: name.into(),
            source,
            destinations,
            enabled: true,
            delay: Duration::ZERO,
            min_interval: None,
            trigger_on: TriggerOn::Press,
        }
    }

    fn routed(table: &RoutingTable, message: &Message) -> (Vec<Outbound>, Vec<(RouteId, Skip)>) {
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        table.route(message, |id| table.routes[id.0].enabled, &mut out, &mut skipped);
        (out, skipped)
    }

    #[test]
    fn a_cables_topic_fans_out_to_osc_and_mqtt_with_captures() {
        let table = RoutingTable::new(vec![route(
            "sensors",
            source(SourceKind::CablesObject, "sensors/*"),
            vec![dest(osc(), "/td/sensors/*"), dest(mqtt(true), "home/sensors/+")],
        )]);
        let (out, skipped) =
            routed(&table, &Message::value(SourceKind::CablesObject, "sensors/temp", json!(21.5)));
        assert!(skipped.is_empty());
        let names: Vec<_> = out.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, vec!["/td/sensors/temp", "home/sensors/temp"]);
        assert!(out.iter().all(|o| o.body == Body::Value(json!(21.5))));
    }

    #[test]
    fn many_routes_may_feed_one_destination_and_all_match_in_table_order() {
        let table = RoutingTable::new(vec![
            route("exact", source(SourceKind::Osc, "/a/b"), vec![dest(mqtt(false), "x")]),
            route("wild", source(SourceKind::Osc, "/a/*"), vec![dest(mqtt(false), "x")]),
            route("rest", source(SourceKind::Osc, "/**"), vec![dest(mqtt(false), "y/{1}")]),
        ]);
        let (out, _) = routed(&table, &Message::value(SourceKind::Osc, "/a/b", json!(1)));
        let got: Vec<_> = out.iter().map(|o| (o.route.0, o.name.as_str())).collect();
        assert_eq!(got, vec![(0, "x"), (1, "x"), (2, "y/a/b")]);
    }

    #[test]
    fn other_source_kinds_do_not_match() {
        let table = RoutingTable::new(vec![route(
            "r",
            source(SourceKind::Mqtt, "a/b"),
            vec![dest(osc(), "/a/b")],
        )]);
        let (out, _) = routed(&table, &Message::value(SourceKind::Osc, "a/b", json!(1)));
        assert!(out.is_empty());
    }

    #[test]
    fn a_name_is_never_sent_back_where_it_came_from() {
        let table = RoutingTable::new(vec![route(
            "echo",
            source(SourceKind::Mqtt, "a/+"),
            vec![dest(mqtt(false), "a/+"), dest(osc(), "/a/+")],
        )]);
        let (out, skipped) = routed(&table, &Message::value(SourceKind::Mqtt, "a/x", json!(1)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "/a/x");
        assert_eq!(skipped, vec![(RouteId(0), Skip::Loop)]);
    }

    #[test]
    fn disabled_routes_send_nothing_and_say_so() {
        let mut r = route("off", source(SourceKind::Osc, "/x"), vec![dest(mqtt(false), "x")]);
        r.enabled = false;
        let table = RoutingTable::new(vec![r]);
        let (out, skipped) = routed(&table, &Message::value(SourceKind::Osc, "/x", json!(1)));
        assert!(out.is_empty());
        assert_eq!(skipped, vec![(RouteId(0), Skip::Disabled)]);
    }

    #[test]
    fn triggers_and_values_convert_at_the_boundary() {
        let table = RoutingTable::new(vec![
            route(
                "bang",
                source(SourceKind::CablesTrigger, "bang"),
                vec![dest(osc(), "/td/bang"), dest(mqtt(false), "events/bang")],
            ),
            route(
                "go",
                source(SourceKind::Osc, "/td/go"),
                vec![dest(Target::CablesTrigger { topic: None }, "go")],
            ),
        ]);
        let (out, _) = routed(&table, &Message::trigger(SourceKind::CablesTrigger, "bang"));
        assert_eq!(out[0].body, Body::Trigger);
        assert_eq!(out[1].body, Body::Value(json!("bang")));
        let (out, _) = routed(&table, &Message::value(SourceKind::Osc, "/td/go", json!([1, 2])));
        assert_eq!(out[0].body, Body::Trigger);
        assert_eq!(out[0].name, "go");
    }

    #[test]
    fn a_release_makes_no_trigger_unless_the_route_takes_any_value() {
        let go = |trigger_on| Route {
            trigger_on,
            ..route(
                "go",
                source(SourceKind::Osc, "/td/go"),
                vec![
                    dest(Target::CablesTrigger { topic: None }, "go"),
                    dest(osc(), "/echo"),
                    dest(Target::CablesTrigger { topic: None }, "go again"),
                ],
            )
        };
        let press_only = RoutingTable::new(vec![go(TriggerOn::Press)]);
        let any = RoutingTable::new(vec![go(TriggerOn::Any)]);
        let release = Message::value(SourceKind::Osc, "/td/go", json!(0.0));
        let press = Message::value(SourceKind::Osc, "/td/go", json!(1.0));

        let (out, skipped) = routed(&press_only, &release);
        assert_eq!(skipped, vec![(RouteId(0), Skip::Release)], "one release, two destinations");
        assert_eq!(out.len(), 1, "the value destination still gets the 0");
        assert_eq!((out[0].name.as_str(), &out[0].body), ("/echo", &Body::Value(json!(0.0))));

        let (out, skipped) = routed(&press_only, &press);
        assert!(skipped.is_empty());
        assert_eq!(out[0].body, Body::Trigger);

        let (out, skipped) = routed(&any, &release);
        assert!(skipped.is_empty());
        assert_eq!(out[0].body, Body::Trigger);
    }

    #[test]
    fn captured_characters_a_side_forbids_become_underscores() {
        let table = RoutingTable::new(vec![route(
            "names",
            source(SourceKind::CablesObject, "room/*"),
            vec![dest(osc(), "/td/*"), dest(mqtt(false), "home/*")],
        )]);
        let (out, _) = routed(
            &table,
            &Message::value(SourceKind::CablesObject, "room/living room #1+", json!(1)),
        );
        assert_eq!(out[0].name, "/td/living_room__1+");
        assert_eq!(out[1].name, "home/living room _1_");
    }

    #[test]
    fn sanitizing_keeps_non_ascii_names_whole_and_replaces_only_reserved_characters() {
        assert!(
            OSC_RESERVED.iter().chain(MQTT_RESERVED).all(char::is_ascii),
            "the byte scan relies on it"
        );
        assert_eq!(osc().sanitize("/salle/été/«1»".into()), "/salle/été/«1»");
        assert_eq!(osc().sanitize("/salle/été #2".into()), "/salle/été__2");
        assert_eq!(mqtt(false).sanitize("maison/pièce+#".into()), "maison/pièce__");
        assert_eq!(mqtt(false).sanitize("a\0b".into()), "a_b");
    }

    #[test]
    fn an_empty_capture_leaves_no_empty_osc_level_and_no_empty_name() {
        let table = RoutingTable::new(vec![route(
            "levels",
            source(SourceKind::Mqtt, "a/+/b/#"),
            vec![dest(osc(), "/td/+/b"), dest(osc(), "/td/{2}"), dest(mqtt(false), "{1}")],
        )]);
        let (out, skipped) =
            routed(&table, &Message::value(SourceKind::Mqtt, "a//b/x//y", json!(1)));
        let names: Vec<&str> = out.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["/td/_/b", "/td/x/_/y"]);
        assert_eq!(skipped, [(RouteId(0), Skip::BadName)], "an empty MQTT topic is not sent");
        assert_eq!(osc().sanitize("/".into()), "/");
        assert_eq!(osc().sanitize("/td/".into()), "/td/_");
        assert_eq!(osc().sanitize("/td/a".into()), "/td/a");
        assert_eq!(mqtt(false).sanitize("a//b".into()), "a//b");
    }

    #[test]
    fn the_index_agrees_with_direct_matching_on_a_large_table() {
        let patterns = ["a/*", "a/b", "a/**", "*/b", "*/*", "**", "a/b/c", "x/*/z", "x/**"];
        let routes: Vec<Route> = (0..1000)
            .map(|i| {
                let pattern = format!("{}/{}", patterns[i % patterns.len()], i % 7);
                let pattern = pattern.trim_end_matches(&format!("/{}", i % 7)).to_owned();
                let pattern = if i % 2 == 0 { format!("p{}/{pattern}", i % 13) } else { pattern };
                route(&format!("r{i}"), source(SourceKind::Osc, &pattern), vec![dest(osc(), "/o")])
            })
            .collect();
        let table = RoutingTable::new(routes.clone());
        for name in ["a/b", "a/b/c", "x/y/z", "p3/a/b", "p0/x/1/z", "q", "a"] {
            let message = Message::value(SourceKind::Osc, name, json!(null));
            let expected: Vec<(RouteId, Vec<String>)> = routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.source.pattern.matches(name).map(|c| (RouteId(i), c)))
                .collect();
            assert_eq!(table.matches(&message), expected, "for {name}");
        }
    }
}
