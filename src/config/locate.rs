//! Finds where a key sits in the TOML source, so every config error can name
//! the key and its line, and names the key a byte offset falls in.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Line and column (both from 1) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// One step of a key path: a table key or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `route[3].source` into `route`, `3`, `source`.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        for index in rest.split('[') {
            if let Ok(n) = index.trim_end_matches(']').parse() {
                out.push(Step::Index(n));
            }
        }
    }
    out
}

/// The span of the key (or array element) at `path`, or of its nearest
/// ancestor that exists.
pub fn locate(source: &str, path: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(source).ok()?;
    let mut best: Option<Range<usize>> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for step in steps(path) {
        match step {
            Step::Key(name) => {
                let current = table.take().or_else(|| match value.map(Spanned::get_ref) {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                });
                // A missing key (e.g. a required one) points at its parent.
                let Some((key, found)) = current.and_then(|t| t.get_key_value(name)) else {
                    return best;
                };
                best = Some(key.span());
                value = Some(found);
            }
            Step::Index(n) => {
                let Some(DeValue::Array(items)) = value.map(Spanned::get_ref) else { return best };
                let Some(item) = items.get(n) else { return best };
                best = Some(item.span());
                value = Some(item);
                table = None;
            }
        }
        if let Some(DeValue::Table(t)) = value.map(Spanned::get_ref) {
            table = Some(t);
        }
    }
    best
}

/// The dotted path of the innermost key whose key or value covers `offset`.
///
/// Table values span only their `[header]`, so every table is searched, not
/// just the ones whose span covers the offset.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    // Recovering: a file with a syntax error (a duplicate key, say) still
    // has its keys found up to and around the error.
    let (root, _) = DeTable::parse_recoverable(source);
    search_table(root.get_ref(), offset)
        .filter(|key| !key.is_empty())
        .or_else(|| key_written_at(source, offset))
}

/// The key as written at `offset`, under the `[table]` header above it: for
/// errors about a key the parser could not keep (a duplicate, say).
fn key_written_at(source: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let is_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let key: String = source[offset..].chars().take_while(|c| is_key(*c)).collect();
    if key.is_empty() {
        return None;
    }
    let header = source[..offset]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|line| line.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match header {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key,
    })
}

fn search_table(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (key, value) in table {
        let name: &str = key.get_ref();
        if let Some(inner) = search_value(value, offset) {
            return Some(format!("{name}{inner}"));
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(name.to_owned());
        }
    }
    None
}

/// The rest of the path below `value` (starting with `.` or `[`), if the
/// offset lies inside something nested in it.
fn search_value(value: &Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, offset).map(|inner| format!(".{inner}")),
        DeValue::Array(items) => {
            items.iter().enumerate().find_map(|(index, item)| match search_value(item, offset) {
                Some(inner) => Some(format!("[{index}]{inner}")),
                None => item.span().contains(&offset).then(|| format!("[{index}]")),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
[socketcluster]
url = \"ws://x/socketcluster/\"
queue_size = 5

[[route]]
source = \"a\"

[[route]]
source = \"b\"
";

    #[test]
    fn locates_nested_keys_and_array_elements() {
        let at = |path| locate(SOURCE, path).map(|span| line_col(SOURCE, span.start).0);
        assert_eq!(at("socketcluster.queue_size"), Some(3));
        assert_eq!(at("route[1].source"), Some(9));
        assert_eq!(at("route[0]"), Some(5));
    }

    #[test]
    fn names_the_key_an_offset_falls_in() {
        let offset = SOURCE.find("5").expect("digit present");
        assert_eq!(key_at(SOURCE, offset).as_deref(), Some("socketcluster.queue_size"));
        let offset = SOURCE.find("\"b\"").expect("b present");
        assert_eq!(key_at(SOURCE, offset).as_deref(), Some("route[1].source"));
    }

    #[test]
    fn a_keyless_line_names_no_empty_key() {
        let source = " = ]\n";
        assert_ne!(key_at(source, 1).as_deref(), Some(""));
    }

    #[test]
    fn a_duplicate_key_is_named_under_its_table() {
        let source = "[socketcluster]\nurl = \"a\"\nurl = \"b\"\n";
        let offset = source.rfind("url").expect("second url");
        assert_eq!(key_at(source, offset).as_deref(), Some("socketcluster.url"));
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
