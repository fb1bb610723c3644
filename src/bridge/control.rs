//! Control commands as OSC and MQTT senders write them.

use serde_json::Value;

use super::Control;
use crate::message::truthy;

/// `active` 0/1, `reset`, `resend`, `route` [name, 0/1] or {name, enabled}.
///
/// `Ok(None)` is a button's release: `reset` or `resend` with 0, false or
/// off. TouchDesigner's buttons and pulse channels send 1 when pressed and
/// 0 when let go, and a press must act once, not twice.
pub(super) fn parse_control(command: &str, value: &Value) -> Result<Option<Control>, String> {
    let action = |control| Ok(if truthy(value) == Some(false) { None } else { Some(control) });
    match command {
        "active" => truthy(value)
            .map(|active| Some(Control::SetActive(active)))
            .ok_or_else(|| "active needs 0/1".into()),
        "reset" => action(Control::Reset),
        "resend" => action(Control::Resend),
        "route" => {
            let (name, flag) = match value {
                Value::Array(items) if items.len() == 2 => (items[0].as_str(), truthy(&items[1])),
                Value::Object(fields) => (
                    fields.get("name").and_then(Value::as_str),
                    fields.get("enabled").and_then(truthy),
                ),
                _ => (None, None),
            };
            match (name, flag) {
                (Some(name), Some(enabled)) => {
                    Ok(Some(Control::SetRouteEnabled { name: name.to_owned(), enabled }))
                }
                _ => Err("route needs [name, 0/1] or {\"name\": ..., \"enabled\": ...}".into()),
            }
        }
        other => Err(format!("unknown control command `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_commands_read_osc_and_mqtt_shapes() {
        assert!(matches!(
            parse_control("active", &json!(0.0)),
            Ok(Some(Control::SetActive(false)))
        ));
        assert!(matches!(
            parse_control("active", &json!("on")),
            Ok(Some(Control::SetActive(true)))
        ));
        assert!(matches!(parse_control("reset", &Value::Null), Ok(Some(Control::Reset))));
        assert!(matches!(
            parse_control("route", &json!(["lights", 0])),
            Ok(Some(Control::SetRouteEnabled { name, enabled: false })) if name == "lights"
        ));
        assert!(matches!(
            parse_control("route", &json!({"name": "lights", "enabled": true})),
            Ok(Some(Control::SetRouteEnabled { enabled: true, .. }))
        ));
        assert!(parse_control("route", &json!(1)).is_err());
        assert!(parse_control("explode", &json!(1)).is_err());
        assert!(parse_control("active", &json!("maybe")).is_err());
    }

    #[test]
    fn a_reset_or_resend_acts_on_a_press_and_ignores_the_release() {
        for pressed in [json!(1.0), json!(true), json!("on"), json!([1]), Value::Null, json!("")] {
            assert!(
                matches!(parse_control("reset", &pressed), Ok(Some(Control::Reset))),
                "{pressed}"
            );
            assert!(
                matches!(parse_control("resend", &pressed), Ok(Some(Control::Resend))),
                "{pressed}"
            );
        }
        for released in [json!(0.0), json!(0), json!(false), json!("off"), json!([0])] {
            assert!(matches!(parse_control("reset", &released), Ok(None)), "{released}");
            assert!(matches!(parse_control("resend", &released), Ok(None)), "{released}");
        }
    }
}
