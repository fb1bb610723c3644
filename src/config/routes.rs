//! `[[route]]` entries and `[cables]`: raw → validated [`Route`]s. Every
//! rule about names across namespaces lives here, checked once at load.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Problem;
use super::raw::{RawCables, RawEnd, RawRoute};
use crate::cables::CablesConfig;
use crate::message::SourceKind;
use crate::mqtt::{PayloadFormat, QoS};
use crate::osc::OscConfig;
use crate::osc::mapping::OscOutOptions;
use crate::route::{Destination, Pattern, Route, Source, Target, Template};

/// What the rest of the config offers the routes.
pub(super) struct Links<'a> {
    pub cables: bool,
    pub osc: Option<&'a OscConfig>,
    pub mqtt: bool,
}

pub(super) fn validate_cables(raw: &RawCables) -> Result<CablesConfig, Problem> {
    let channel =
        raw.channel.clone().filter(|c| !c.is_empty()).ok_or_else(|| {
            Problem::new("cables.channel", "required: the cables.gl Channel name")
        })?;
    if channel.contains('/') {
        return Err(Problem::new("cables.channel", "a cables channel name has no '/'"));
    }
    let client_id = match &raw.client_id {
        Some(id) if id.is_empty() => {
            return Err(Problem::new("cables.client_id", "must not be empty"));
        }
        Some(id) => id.clone(),
        None => crate::mqtt::config::default_client_id(),
    };
    for key in ["topic", "clientId", "payload"] {
        if raw.extra.contains_key(key) {
            return Err(Problem::new(
                format!("cables.extra.{key}"),
                "is always set by scbridge; choose another key",
            ));
        }
    }
    Ok(CablesConfig {
        channel,
        client_id,
        receive_own: raw.receive_own.unwrap_or(false),
        allow_send: raw.allow_send.unwrap_or(true),
        allow_multiple_senders: raw.allow_multiple_senders.unwrap_or(true),
        extra: raw.extra.clone(),
    })
}

/// The one kind key set on a route end, and its value.
fn kind_of(end: &RawEnd, key: &str) -> Result<(SourceKind, String), Problem> {
    let set: Vec<(SourceKind, &String)> = [
        (SourceKind::CablesObject, &end.cables_object),
        (SourceKind::CablesTrigger, &end.cables_trigger),
        (SourceKind::ScChannel, &end.sc_channel),
        (SourceKind::ScEvent, &end.sc_event),
        (SourceKind::Osc, &end.osc),
        (SourceKind::Mqtt, &end.mqtt),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.as_ref().map(|v| (kind, v)))
    .collect();
    match set.as_slice() {
        [(kind, value)] => Ok((*kind, (*value).clone())),
        [] => Err(Problem::new(
            key,
            "needs one of cables_object, cables_trigger, sc_channel, sc_event, osc, mqtt",
        )),
        _ => Err(Problem::new(
            key,
            format!(
                "has {}; give exactly one",
                set.iter().map(|(k, _)| k.key()).collect::<Vec<_>>().join(" and ")
            ),
        )),
    }
}

/// Refuses an option that does not belong to this kind of end.
fn only_for(key: &str, option: &str, set: bool, allowed: bool, kinds: &str) -> Result<(), Problem> {
    if set && !allowed {
        return Err(Problem::new(format!("{key}.{option}"), format!("only applies to {kinds}")));
    }
    Ok(())
}

fn link_is_configured(kind: SourceKind, links: &Links<'_>, key: &str) -> Result<(), Problem> {
    let (ok, table) = match kind {
        SourceKind::CablesObject | SourceKind::CablesTrigger => (links.cables, "[cables]"),
        SourceKind::Osc => (links.osc.is_some(), "[osc]"),
        SourceKind::Mqtt => (links.mqtt, "[mqtt]"),
        SourceKind::ScChannel | SourceKind::ScEvent => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::new(key, format!("needs a {table} table, which is missing")))
    }
}

fn qos(key: &str, level: Option<u8>) -> Result<QoS, Problem> {
    match level {
        None => Ok(QoS::AtMostOnce),
        Some(level) => QoS::from_level(level)
            .ok_or_else(|| Problem::new(format!("{key}.qos"), "must be 0, 1 or 2")),
    }
}

use crate::route::table::OSC_RESERVED as OSC_FORBIDDEN;

/// The OSC destination options, and whether each is set.
fn osc_options_set(raw: &RawEnd) -> [(&'static str, bool); 7] {
    [
        ("target", raw.target.is_some()),
        ("numbers", raw.numbers.is_some()),
        ("bools", raw.bools.is_some()),
        ("null", raw.null.is_some()),
        ("objects", raw.objects.is_some()),
        ("trigger", raw.trigger.is_some()),
        ("types", raw.types.is_some()),
    ]
}

fn validate_source(raw: &RawEnd, key: &str, links: &Links<'_>) -> Result<Source, Problem> {
    let (kind, text) = kind_of(raw, key)?;
    let kind_key = format!("{key}.{}", kind.key());
    link_is_configured(kind, links, &kind_key)?;
    let pattern = match kind {
        SourceKind::Mqtt => Pattern::parse_mqtt_source(&text),
        _ => Pattern::parse(&text),
    }
    .map_err(|e| Problem::new(&kind_key, e))?;
    match kind {
        SourceKind::ScChannel | SourceKind::ScEvent if !pattern.is_literal() => {
            return Err(Problem::new(
                &kind_key,
                "SocketCluster has no wildcard subscriptions; name the channel or event exactly",
            ));
        }
        SourceKind::Mqtt if text.contains('\0') || text.len() > usize::from(u16::MAX) => {
            return Err(Problem::new(
                &kind_key,
                "an MQTT topic filter has no NUL and at most 65535 bytes",
            ));
        }
        SourceKind::Osc => {
            if !text.starts_with('/') {
                return Err(Problem::new(&kind_key, "an OSC address starts with '/'"));
            }
            if links.osc.is_some_and(|osc| osc.listen.is_empty()) {
                return Err(Problem::new(&kind_key, "osc.listen is empty, so no OSC can arrive"));
            }
        }
        _ => {}
    }
    only_for(
        key,
        "wait_for_auth",
        raw.wait_for_auth.is_some(),
        kind == SourceKind::ScChannel,
        "sc_channel sources",
    )?;
    only_for(key, "qos", raw.qos.is_some(), kind == SourceKind::Mqtt, "mqtt ends")?;
    let destination_only = [
        ("invoke", raw.invoke.is_some()),
        ("topic", raw.topic.is_some()),
        ("retain", raw.retain.is_some()),
        ("payload", raw.payload.is_some()),
    ];
    for (option, set) in destination_only.into_iter().chain(osc_options_set(raw)) {
        only_for(key, option, set, false, "destinations (`to`)")?;
    }
    Ok(Source {
        kind,
        pattern,
        wait_for_auth: raw.wait_for_auth.unwrap_or(false),
        qos: qos(key, raw.qos)?,
    })
}

fn validate_destination(
    raw: &RawEnd,
    key: &str,
    source: &Source,
    trigger_route: bool,
    links: &Links<'_>,
) -> Result<Destination, Problem> {
    let (kind, text) = kind_of(raw, key)?;
    let kind_key = format!("{key}.{}", kind.key());
    link_is_configured(kind, links, &kind_key)?;
    let template = Template::parse(&text).map_err(|e| Problem::new(&kind_key, e))?;
    if template.uses > source.pattern.captures() {
        return Err(Problem::new(
            &kind_key,
            format!(
                "uses capture {} but the source `{}` has {}",
                template.uses,
                source.pattern,
                source.pattern.captures()
            ),
        ));
    }
    let is = |k: SourceKind| kind == k;
    only_for(key, "wait_for_auth", raw.wait_for_auth.is_some(), false, "sc_channel sources")?;
    only_for(
        key,
        "invoke",
        raw.invoke.is_some(),
        is(SourceKind::ScEvent),
        "sc_event destinations",
    )?;
    only_for(
        key,
        "topic",
        raw.topic.is_some(),
        is(SourceKind::CablesTrigger),
        "cables_trigger destinations",
    )?;
    only_for(key, "qos", raw.qos.is_some(), is(SourceKind::Mqtt), "mqtt ends")?;
    only_for(key, "retain", raw.retain.is_some(), is(SourceKind::Mqtt), "mqtt destinations")?;
    only_for(key, "payload", raw.payload.is_some(), is(SourceKind::Mqtt), "mqtt destinations")?;
    for (option, set) in osc_options_set(raw) {
        only_for(key, option, set, is(SourceKind::Osc), "osc destinations")?;
    }
    let target = match kind {
        SourceKind::Mqtt if text.contains('\0') || text.len() > usize::from(u16::MAX) => {
            return Err(Problem::new(
                &kind_key,
                "an MQTT topic filter has no NUL and at most 65535 bytes",
            ));
        }
        SourceKind::Osc => {
            if !text.starts_with('/') {
                return Err(Problem::new(&kind_key, "an OSC address starts with '/'"));
            }
            if literal_text(&text).contains(OSC_FORBIDDEN) {
                return Err(Problem::new(
                    &kind_key,
                    "OSC addresses may not contain spaces or any of # * , ? [ ] { }",
                ));
            }
            let osc = links.osc.ok_or_else(|| Problem::new(&kind_key, "needs an [osc] table"))?;
            let target = match &raw.target {
                Some(name) => osc.target_index(name).ok_or_else(|| {
                    Problem::new(
                        format!("{key}.target"),
                        format!("no OSC target named `{name}` in [osc.targets]"),
                    )
                })?,
                None if osc.targets.len() == 1 => 0,
                None => {
                    return Err(Problem::new(
                        format!("{key}.target"),
                        format!("required: [osc.targets] has {} targets", osc.targets.len()),
                    ));
                }
            };
            let types = match &raw.types {
                Some(text) => Some(
                    OscOutOptions::parse_types(text)
                        .map_err(|e| Problem::new(format!("{key}.types"), e))?,
                ),
                None => None,
            };
            let options = OscOutOptions {
                numbers: raw.numbers.unwrap_or_default(),
                bools: raw.bools.unwrap_or_default(),
                null: raw.null.unwrap_or_default(),
                objects: raw.objects.unwrap_or_default(),
                trigger: raw.trigger.unwrap_or_default(),
                types,
            };
            Target::Osc { target, options: Arc::new(options) }
        }
        SourceKind::Mqtt => {
            if text.starts_with('$') {
                return Err(Problem::new(
                    &kind_key,
                    "topics starting with '$' are the broker's own",
                ));
            }
            let retain = raw.retain.unwrap_or(false);
            if retain && trigger_route {
                return Err(Problem::new(
                    format!("{key}.retain"),
                    "trigger routes are never retained: a retained trigger would fire again for every new subscriber",
                ));
            }
            let format = match raw.payload.as_deref() {
                None | Some("auto") => PayloadFormat::Auto,
                Some("json") => PayloadFormat::Json,
                Some("text") => PayloadFormat::Text,
                Some(other) => {
                    return Err(Problem::new(
                        format!("{key}.payload"),
                        format!("`{other}`: expected auto, json or text"),
                    ));
                }
            };
            Target::Mqtt { qos: qos(key, raw.qos)?, retain, format }
        }
        SourceKind::CablesObject => Target::CablesObject,
        SourceKind::CablesTrigger => Target::CablesTrigger { topic: raw.topic.clone() },
        SourceKind::ScChannel => Target::ScChannel,
        SourceKind::ScEvent => Target::ScEvent { invoke: raw.invoke.unwrap_or(false) },
    };
    Ok(Destination { target, template })
}

/// The template's text without its `{N}` placeholders.
fn literal_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_braces = false;
    for c in text.chars() {
        match c {
            '{' => in_braces = true,
            '}' if in_braces => in_braces = false,
            _ if in_braces => {}
            '*' | '+' | '#' => {}
            _ => out.push(c),
        }
    }
    out
}

/// A message that arrives through one subscription fires every route whose
/// pattern matches its topic, and the router cannot tell which subscription
/// brought it. So a shared source may not overlap an MQTT source that
/// subscribes differently (plain, another group, another filter): each such
/// message would fire both routes, or arrive twice.
fn check_shared_overlap(earlier: &[Route], source: &Source, key: &str) -> Result<(), Problem> {
    let filter = source.pattern.to_mqtt_filter();
    for route in earlier.iter().filter(|r| r.source.kind == SourceKind::Mqtt) {
        let other = &route.source.pattern;
        let shared = source.pattern.share_group.is_some() || other.share_group.is_some();
        if shared && other.to_mqtt_filter() != filter && other.overlaps(&source.pattern) {
            return Err(Problem::new(
                key,
                format!(
                    "`{}` overlaps `{other}` of route `{}`; a shared subscription needs a filter \
                     no other MQTT source matches",
                    source.pattern, route.name
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_routes(raw: &[RawRoute], links: &Links<'_>) -> Result<Vec<Route>, Problem> {
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (index, raw_route) in raw.iter().enumerate() {
        let key = format!("route[{index}]");
        let name = raw_route.name.clone().unwrap_or_else(|| format!("route {}", index + 1));
        if !names.insert(name.clone()) {
            return Err(Problem::new(
                format!("{key}.name"),
                format!("`{name}` is used by another route"),
            ));
        }
        let from = raw_route
            .from
            .as_ref()
            .ok_or_else(|| Problem::new(&key, "needs `from`, e.g. from = { osc = \"/td/x\" }"))?;
        let source = validate_source(from, &format!("{key}.from"), links)?;
        if raw_route.to.is_empty() {
            return Err(Problem::new(&key, "needs at least one destination in `to`"));
        }
        let trigger_route = source.kind == SourceKind::CablesTrigger
            || raw_route.to.iter().any(|to| to.cables_trigger.is_some());
        let destinations = raw_route
            .to
            .iter()
            .enumerate()
            .map(|(d, to)| {
                validate_destination(to, &format!("{key}.to[{d}]"), &source, trigger_route, links)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if source.kind == SourceKind::Mqtt {
            check_shared_overlap(&routes, &source, &format!("{key}.from.mqtt"))?;
        }
        if raw_route.trigger_on.is_some()
            && !raw_route.to.iter().any(|to| to.cables_trigger.is_some())
        {
            return Err(Problem::new(
                format!("{key}.trigger_on"),
                "only a route with a cables_trigger destination makes triggers from values",
            ));
        }
        routes.push(Route {
            name,
            source,
            destinations,
            trigger_on: raw_route.trigger_on.unwrap_or_default(),
            enabled: raw_route.enabled.unwrap_or(true),
            delay: Duration::from_millis(raw_route.delay_ms.unwrap_or(0)),
            min_interval: match raw_route.max_rate {
                None => None,
                Some(_) if trigger_route => {
                    return Err(Problem::new(
                        format!("{key}.max_rate"),
                        "triggers are never coalesced: every trigger is an event",
                    ));
                }
                Some(rate) if rate.is_finite() && (0.01..=100_000.0).contains(&rate) => {
                    Some(Duration::from_secs_f64(1.0 / rate))
                }
                Some(_) => {
                    return Err(Problem::new(
                        format!("{key}.max_rate"),
                        "messages per second, from 0.01 to 100000",
                    ));
                }
            },
        });
    }
    Ok(routes)
}
