//! Source patterns and destination templates: names split on `/`, with
//! wildcards that capture and placeholders that put captures back.
//!
//! - `*` or `+` matches exactly one segment and captures it.
//! - `**` or `#`, only as the last segment, matches the rest (zero or more
//!   segments) and captures it joined with `/`.
//! - A template fills its wildcards from the captures in order, or names one
//!   with `{1}` … `{9}`; everything else is copied as written.

use std::fmt;

/// One segment of a source pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `*` / `+`
    One,
    /// `**` / `#` (last only)
    Rest,
}

/// A parsed source pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub segments: Vec<Segment>,
    /// For an MQTT source written `$share/GROUP/filter`: GROUP. The segments
    /// are the filter's alone, because the topics that arrive never carry
    /// the prefix; only the subscription does (see [`Self::to_mqtt_filter`]).
    pub share_group: Option<String>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("the pattern is empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "*" | "+" => Segment::One,
                "**" | "#" if index + 1 == parts.len() => Segment::Rest,
                "**" | "#" => return Err(format!("`{part}` may only be the last segment")),
                other if other.contains(['*', '+', '#']) && other.len() > 1 => {
                    return Err(format!(
                        "`{other}`: a wildcard must be a whole segment (`a/*/b`, not `a*`)"
                    ));
                }
                other => Segment::Literal(other.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Pattern { text: text.to_owned(), segments, share_group: None })
    }

    /// An MQTT source: a topic filter, or `$share/GROUP/filter` for an MQTT
    /// shared subscription, where the broker gives each message to one
    /// member of GROUP. Other names starting with `$` are the broker's own.
    pub fn parse_mqtt_source(text: &str) -> Result<Pattern, String> {
        let Some(shared) = text.strip_prefix("$share/") else {
            if text.starts_with('$') {
                return Err("topics starting with '$' are the broker's own \
                            (a shared subscription is `$share/GROUP/filter`)"
                    .into());
            }
            return Pattern::parse(text);
        };
        let Some((group, filter)) = shared.split_once('/') else {
            return Err("a shared subscription is `$share/GROUP/filter`".into());
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(format!(
                "`{group}`: the share group is a plain name, not empty, without '+' or '#'"
            ));
        }
        if filter.starts_with('$') {
            return Err("the shared filter may not start with '$'".into());
        }
        let mut pattern = Pattern::parse(filter)?;
        pattern.text = text.to_owned();
        pattern.share_group = Some(group.to_owned());
        Ok(pattern)
    }

    /// How many captures a match yields.
    pub fn captures(&self) -> usize {
        self.segments.iter().filter(|s| !matches!(s, Segment::Literal(_))).count()
    }

    pub fn is_literal(&self) -> bool {
        self.captures() == 0
    }

    /// The pattern as an MQTT subscription filter (`+` and `#`), with its
    /// `$share/GROUP/` prefix when it has one.
    pub fn to_mqtt_filter(&self) -> String {
        let filter = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.as_str(),
                Segment::One => "+",
                Segment::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        match &self.share_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter,
        }
    }

    /// Whether some name matches both patterns (wildcards included).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        fn overlap(a: &[Segment], b: &[Segment]) -> bool {
            match (a.split_first(), b.split_first()) {
                (Some((Segment::Rest, _)), _) | (_, Some((Segment::Rest, _))) => true,
                (None, None) => true,
                (Some((x, a)), Some((y, b))) => match (x, y) {
                    (Segment::Literal(x), Segment::Literal(y)) if x != y => false,
                    _ => overlap(a, b),
                },
                _ => false,
            }
        }
        overlap(&self.segments, &other.segments)
    }

    /// Matches a name directly (the table uses its index instead; this is
    /// the reference the index is tested against).
    pub fn matches(&self, name: &str) -> Option<Vec<String>> {
        let parts: Vec<&str> = name.split('/').collect();
        let mut captures = Vec::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(text) => {
                    if parts.get(index) != Some(&text.as_str()) {
                        return None;
                    }
                }
                Segment::One => captures.push((*parts.get(index)?).to_owned()),
                Segment::Rest => {
                    captures
                        .push(parts.get(index..).map(|rest| rest.join("/")).unwrap_or_default());
                    return Some(captures);
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(captures)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A piece of a destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Capture(usize),
}

/// A destination name with holes for the source's captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: String,
    pieces: Vec<Piece>,
    /// The highest capture number used (1-based), 0 for a literal.
    pub uses: usize,
    /// The last segment is `**` or `#`, which may have matched no level.
    ends_with_rest: bool,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("the name is empty".into());
        }
        let mut pieces = Vec::new();
        let mut next_positional = 0;
        let mut uses = 0;
        let segments: Vec<&str> = text.split('/').collect();
        for (index, segment) in segments.iter().enumerate() {
            if index > 0 {
                push_text(&mut pieces, "/");
            }
            match *segment {
                "*" | "+" | "**" | "#" => {
                    if matches!(*segment, "**" | "#") && index + 1 != segments.len() {
                        return Err(format!("`{segment}` may only be the last segment"));
                    }
                    next_positional += 1;
                    uses = uses.max(next_positional);
                    pieces.push(Piece::Capture(next_positional - 1));
                }
                other => parse_braces(other, &mut pieces, &mut uses)?,
            }
        }
        let ends_with_rest = matches!(segments.last(), Some(&"**" | &"#"));
        Ok(Template { text: text.to_owned(), pieces, uses, ends_with_rest })
    }

    /// Fills the template; `None` when a capture is missing.
    pub fn fill(&self, captures: &[String]) -> Option<String> {
        if self.uses == 0 {
            return Some(self.text.clone());
        }
        let mut out = String::with_capacity(self.text.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Capture(index) => out.push_str(captures.get(*index)?),
            }
        }
        // A rest wildcard that matched no level (`home/#` on `home`) leaves
        // no dangling separator: `/td/#` fills as `/td`, not `/td/`.
        let ends_empty = match self.pieces.last() {
            Some(Piece::Capture(index)) => captures.get(*index).is_some_and(String::is_empty),
            _ => false,
        };
        if self.ends_with_rest && ends_empty && out.len() > 1 && out.ends_with('/') {
            out.pop();
        }
        Some(out)
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: &str) {
    if let Some(Piece::Text(last)) = pieces.last_mut() {
        last.push_str(text);
    } else {
        pieces.push(Piece::Text(text.to_owned()));
    }
}

/// Splits `a{1}b` into text and capture pieces.
fn parse_braces(segment: &str, pieces: &mut Vec<Piece>, uses: &mut usize) -> Result<(), String> {
    let mut rest = segment;
    while let Some(open) = rest.find('{') {
        push_text(pieces, &rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("`{segment}`: `{{` without `}}`"))?;
        let number: usize =
            after[..close].parse().ok().filter(|n| (1..=9).contains(n)).ok_or_else(|| {
                format!("`{{{}}}`: captures are numbered {{1}} to {{9}}", &after[..close])
            })?;
        *uses = (*uses).max(number);
        pieces.push(Piece::Capture(number - 1));
        rest = &after[close + 1..];
    }
    if rest.contains(['*', '#']) || (rest.contains('+') && rest.len() == 1) {
        return Err(format!("`{segment}`: a wildcard must be a whole segment"));
    }
    push_text(pieces, rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captures(pattern: &str, name: &str) -> Option<Vec<String>> {
        Pattern::parse(pattern).expect("valid pattern").matches(name)
    }

    #[test]
    fn one_segment_wildcards_capture_their_segment() {
        assert_eq!(captures("sensors/*", "sensors/temp"), Some(vec!["temp".into()]));
        assert_eq!(captures("a/+/c/*", "a/b/c/d"), Some(vec!["b".into(), "d".into()]));
        assert_eq!(captures("sensors/*", "sensors/temp/x"), None);
        assert_eq!(captures("sensors/*", "sensors"), None);
    }

    #[test]
    fn rest_wildcards_capture_everything_left_even_nothing() {
        assert_eq!(captures("/td/**", "/td/a/b"), Some(vec!["a/b".into()]));
        assert_eq!(captures("home/#", "home"), Some(vec!["".into()]));
        assert_eq!(captures("/td/**", "/other/a"), None);
    }

    #[test]
    fn osc_addresses_keep_their_leading_empty_segment() {
        assert_eq!(captures("/td/*", "/td/x"), Some(vec!["x".into()]));
        assert_eq!(captures("/td/*", "td/x"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(Pattern::parse("a/#/b").unwrap_err().contains("last segment"));
        assert!(Pattern::parse("a*").unwrap_err().contains("whole segment"));
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn templates_fill_wildcards_in_order_and_numbered_captures_anywhere() {
        let caps = vec!["temp".to_string(), "kitchen".to_string()];
        let fill = |t: &str| Template::parse(t).expect("valid template").fill(&caps);
        assert_eq!(fill("/td/sensors/*").as_deref(), Some("/td/sensors/temp"));
        assert_eq!(fill("home/+/+").as_deref(), Some("home/temp/kitchen"));
        assert_eq!(fill("room_{2}/v{1}").as_deref(), Some("room_kitchen/vtemp"));
        assert_eq!(fill("literal/name").as_deref(), Some("literal/name"));
        assert_eq!(Template::parse("x/{3}").expect("valid").fill(&caps), None);
        assert_eq!(Template::parse("a/{2}/*").expect("valid").uses, 2);
        let empty_rest = vec![String::new()];
        assert_eq!(
            Template::parse("/td/#").expect("valid").fill(&empty_rest).as_deref(),
            Some("/td")
        );
    }

    #[test]
    fn mqtt_filters_use_plus_and_hash() {
        assert_eq!(Pattern::parse("home/*/**").expect("valid").to_mqtt_filter(), "home/+/#");
    }

    #[test]
    fn shared_mqtt_sources_match_without_the_prefix_and_subscribe_with_it() {
        let shared = Pattern::parse_mqtt_source("$share/bridges/sensors/+").expect("valid");
        assert_eq!(shared.share_group.as_deref(), Some("bridges"));
        assert_eq!(shared.matches("sensors/temp"), Some(vec!["temp".into()]));
        assert_eq!(shared.matches("$share/bridges/sensors/temp"), None);
        assert_eq!(shared.captures(), 1);
        assert_eq!(shared.to_mqtt_filter(), "$share/bridges/sensors/+");
        assert_eq!(shared.to_string(), "$share/bridges/sensors/+");
        let plain = Pattern::parse_mqtt_source("sensors/#").expect("valid");
        assert_eq!(
            (plain.share_group.as_deref(), plain.to_mqtt_filter().as_str()),
            (None, "sensors/#")
        );
        for bad in ["$SYS/#", "$share/bridges", "$share//a", "$share/a+/b", "$share/g/$SYS/x"] {
            assert!(Pattern::parse_mqtt_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlapping_patterns_are_recognised() {
        let overlap = |a: &str, b: &str| {
            Pattern::parse(a).expect("valid").overlaps(&Pattern::parse(b).expect("valid"))
        };
        assert!(overlap("sensors/+", "sensors/#"));
        assert!(overlap("sensors/+", "+/temp"));
        assert!(overlap("a/#", "a"));
        assert!(!overlap("sensors/+", "sensors/+/x"));
        assert!(!overlap("a/+", "b/+"));
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("a/{0}").is_err());
        assert!(Template::parse("a/{x").is_err());
        assert!(Template::parse("a/#/b").is_err());
        assert!(Template::parse("a/b*").is_err());
    }
}
