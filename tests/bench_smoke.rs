//! The benchmark binary, run as a user runs it (`scbridge-bench --quick`)
//! against the real peers, so that it cannot rot between measurements. It
//! asserts on what arrived, never on how fast: every phase delivers every
//! message to every output (but for datagrams the kernel counts as dropped
//! at a full UDP socket), and the references the summary divides by are
//! there where they belong.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_quick_benchmark_run_delivers_every_message_to_every_output() {
    let dir = std::env::temp_dir().join(format!("scbridge-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let summary_path: PathBuf = dir.join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_scbridge-bench"))
        .args(["--quick", "--scbridge", env!("CARGO_BIN_EXE_scbridge"), "--json"])
        .arg(&summary_path)
        .output()
        .expect("the bench binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scbridge-bench failed:\n{stderr}");
    let text = std::fs::read_to_string(&summary_path).expect("the summary JSON was written");
    let _ = std::fs::remove_dir_all(&dir);
    let summary: Value = serde_json::from_str(&text).expect("the summary is JSON");
    let figures = &summary["median"];
    let figure = |key: &str| {
        figures[key].as_f64().unwrap_or_else(|| panic!("no figure {key} in {figures:#}"))
    };

    for phase in ["burst", "paced_1k", "paced_10k"] {
        let sent = figure(&format!("{phase}.sent"));
        assert!(sent > 0.0, "{phase} sent nothing");
        for output in ["plain", "osc", "mqtt"] {
            // UDP may be dropped by the kernel when the bench's receive
            // buffer is full (a busy machine); that loss is the bench's,
            // counted apart, and scbridge must account for the rest.
            let kernel_drops =
                if output == "osc" { figure(&format!("{phase}.rx_socket_drops")) } else { 0.0 };
            assert_eq!(
                figure(&format!("{phase}.{output}.received")) + kernel_drops,
                sent,
                "{phase} {output}: received plus {kernel_drops} dropped by the kernel"
            );
            assert_eq!(figure(&format!("{phase}.{output}.duplicates")), 0.0, "{phase} {output}");
        }
        assert!(figure(&format!("{phase}.floor_cpu_us_per_msg")) > 0.0, "{phase} has no floor");
    }
    // The broker is timed alone up to 2,000/s only.
    let sent = figure("paced_1k.sent");
    assert_eq!(figure("paced_1k.broker.received"), sent, "paced_1k broker reference");
    assert!(figures.get("paced_10k.broker.received").is_none(), "the broker timed at 10,000/s");
    // Datagrams the kernel dropped at scbridge's full OSC socket never
    // reached it; everything it did get arrives.
    let kernel_drops = figure("reverse_osc.bridge_socket_drops");
    assert_eq!(
        figure("reverse_osc.received") + kernel_drops,
        figure("reverse_osc.sent"),
        "reverse_osc: received plus {kernel_drops} dropped by the kernel"
    );
    assert_eq!(figure("reverse_mqtt.received"), figure("reverse_mqtt.sent"), "reverse_mqtt");
    assert!(figure("rss.peak_kib") > 0.0);
    assert_eq!(figure("bridge.log_warnings"), 0.0, "scbridge logged warnings:\n{stderr}");
}
