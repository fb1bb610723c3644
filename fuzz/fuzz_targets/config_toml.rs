//! The config file. Any text is a config or an error that names a key and
//! a line and column that exist in the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scbridge::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Err(err) = Config::from_toml(source, "fuzz") else { return };
    let shown = err.to_string();
    let ConfigError::Invalid { key, line, column, .. } = err else {
        panic!("not an Invalid error: {shown}");
    };
    let lines: Vec<&str> = source.split('\n').collect();
    assert!(!key.is_empty(), "{shown}");
    assert!((1..=lines.len()).contains(&line), "line {line} of {}: {shown}", lines.len());
    let width = lines[line - 1].chars().count();
    assert!((1..=width + 1).contains(&column), "column {column} of {width}: {shown}");
    assert!(shown.starts_with(&format!("fuzz:{line}:{column}: ")), "{shown}");
});
