//! Where log lines go and how they look: stderr, as text or JSON lines, and,
//! when stderr is systemd's journal stream, with each line's syslog priority
//! in front (`<4>` for a warning) so that `journalctl -p warning` and the
//! journal's colours work, and without a timestamp, which the journal adds.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The shape of each log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `LEVEL target: message field=value ...`
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the global subscriber. `level` is used unless `RUST_LOG` is set.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let journal = stderr_is_journal();
    // No colour codes unless a person watches: journald stores them verbatim.
    let colour = std::io::stderr().is_terminal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour && !journal);
    match (format, journal) {
        // A person watching: colours, and lines that are not kept.
        (LogFormat::Text, false) if colour => logs.init(),
        (LogFormat::Text, false) => {
            let format = tracing_subscriber::fmt::format();
            logs.event_format(KeptLine { format, priority: false }).init()
        }
        (LogFormat::Json, false) => logs.json().init(),
        (LogFormat::Text, true) => {
            let format = tracing_subscriber::fmt::format().without_time();
            logs.event_format(KeptLine { format, priority: true }).init()
        }
        (LogFormat::Json, true) => {
            let format = tracing_subscriber::fmt::format().json().without_time();
            logs.event_format(KeptLine { format, priority: true }).init()
        }
    }
}

/// Whether stderr is the stream systemd connected to the journal: the
/// `JOURNAL_STREAM` variable names its device and inode. Comparing them,
/// rather than trusting the variable alone, keeps the prefixes off a
/// terminal or pipe that a child of the service inherited the variable with.
fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
        let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
        names_stream(&stream, meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    false
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`, decimal) names this
/// device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((device, inode)) = value.split_once(':') else { return false };
    device.parse() == Ok(dev) && inode.parse() == Ok(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon.h).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A log line that is kept (the journal, a file, a pipe): on one line, and
/// for the journal with its syslog priority in front (`<4>`).
///
/// A line break inside a field (an OSC address, an MQTT topic, a server's
/// close reason) is written as `\n`, a NUL as `\u{0}`, so that input
/// cannot forge log lines of its own, with a priority of its choosing in
/// the journal. JSON lines escape them already.
struct KeptLine<F> {
    format: F,
    priority: bool,
}

impl<S, N, F> FormatEvent<S, N> for KeptLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.priority {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        let mut line = String::new();
        self.format.format_event(ctx, Writer::new(&mut line), event)?;
        for c in line.strip_suffix('\n').unwrap_or(&line).chars() {
            match c {
                '\n' => writer.write_str("\\n")?,
                '\r' => writer.write_str("\\r")?,
                // journald ends a line at a NUL too; no control character
                // belongs in a kept line.
                c if c.is_control() && c != '\t' => write!(writer, "\\u{{{:x}}}", u32::from(c))?,
                c => writer.write_char(c)?,
            }
        }
        writer.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("not poisoned").clone();
            String::from_utf8(bytes).expect("utf-8").lines().map(str::to_owned).collect()
        }
    }

    fn journal_lines(json: bool, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone());
        if json {
            let format = tracing_subscriber::fmt::format().json().without_time();
            tracing::subscriber::with_default(
                builder.event_format(KeptLine { format, priority: true }).finish(),
                emit,
            );
        } else {
            let format = tracing_subscriber::fmt::format().without_time();
            tracing::subscriber::with_default(
                builder.event_format(KeptLine { format, priority: true }).finish(),
                emit,
            );
        }
        captured.lines()
    }

    #[test]
    fn each_journal_line_starts_with_its_syslog_priority_and_has_no_timestamp() {
        let lines = journal_lines(false, || {
            tracing::error!("link lost");
            tracing::warn!(count = 3, "dropped");
            tracing::info!("connected");
            tracing::debug!("subscribed");
        });
        let prefixes: Vec<&str> = lines.iter().map(|l| &l[..3]).collect();
        assert_eq!(prefixes, ["<3>", "<4>", "<6>", "<7>"], "{lines:#?}");
        assert!(lines[1].starts_with("<4> WARN"), "{}", lines[1]);
        assert!(lines[1].ends_with("dropped count=3"), "{}", lines[1]);
        assert!(lines.iter().all(|l| !l.contains("Z ")), "no timestamps: {lines:#?}");
    }

    #[test]
    fn a_line_break_in_a_field_cannot_forge_a_line_of_its_own() {
        let forged = "/x\n<0>scbridge: forged\r\0<0>again";
        let lines = journal_lines(false, || tracing::info!(name = %forged, "no route"));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].starts_with("<6>"), "{}", lines[0]);
        assert!(
            lines[0].ends_with("name=/x\\n<0>scbridge: forged\\r\\u{0}<0>again"),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains('\0'));
    }

    #[test]
    fn json_lines_for_the_journal_are_one_object_after_the_prefix() {
        let lines = journal_lines(true, || tracing::warn!(count = 3, "dropped"));
        assert_eq!(lines.len(), 1);
        let object = lines[0].strip_prefix("<4>").expect("warning prefix");
        let value: serde_json::Value = serde_json::from_str(object).expect("one JSON object");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["fields"]["message"], "dropped");
        assert_eq!(value["fields"]["count"], 3);
        assert!(value.get("timestamp").is_none(), "{value}");
    }

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(names_stream("8:123456", 8, 123456));
        assert!(!names_stream("8:123456", 8, 123457));
        assert!(!names_stream("9:123456", 8, 123456));
        assert!(!names_stream("8-123456", 8, 123456));
        assert!(!names_stream("", 8, 123456));
        assert!(!names_stream("x:y", 8, 123456));
    }
}
