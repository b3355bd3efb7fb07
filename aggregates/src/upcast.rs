//! Event shape changes. A change of an event's shape bumps its version and adds a [`Step`] here
//! that turns the older stored shape into the newer one. Every reader of stored events (the event
//! store loading an aggregate, the projectors, the relay) upcasts before decoding, so old events
//! are never rewritten and never fail to load.

use serde_json::{json, Value};

/// One shape change: events of `event_type` older than `to_version` go through `apply`.
pub struct Step {
    pub aggregate_type: &'static str,
    pub event_type: &'static str,
    pub to_version: &'static str,
    pub apply: fn(Value) -> Value,
}

/// Every shape change so far, oldest first.
pub const STEPS: &[Step] = &[Step {
    aggregate_type: "Session",
    event_type: "Started",
    to_version: "2.0",
    apply: session_started_v2,
}];

/// `Session/Started` 2.0 names how the user proved who they are (`method`); every 1.0 login was
/// a password login.
fn session_started_v2(mut payload: Value) -> Value {
    if let Some(body) = payload.get_mut("Started").and_then(Value::as_object_mut) {
        body.entry("method").or_insert(json!("password"));
    }
    payload
}

fn parse(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The payload in the current shape, and its version.
pub fn upcast(
    aggregate_type: &str,
    event_type: &str,
    version: &str,
    mut payload: Value,
) -> (String, Value) {
    let mut version = version.to_owned();
    for step in STEPS {
        if step.aggregate_type == aggregate_type
            && step.event_type == event_type
            && parse(step.to_version) > parse(&version)
        {
            payload = (step.apply)(payload);
            version = step.to_version.to_owned();
        }
    }
    (version, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{LoginMethod, SessionEvent};

    #[test]
    fn a_stored_1_0_login_reads_as_a_2_0_password_login() -> Result<(), serde_json::Error> {
        let old = json!({"Started": {
            "session_id": "00000000-0000-0000-0000-000000000007",
            "user_id": "00000000-0000-0000-0000-000000000001",
            "token_epoch": 0,
            "expires_at": "2026-03-08T12:00:00Z",
            "started_at": "2026-03-01T12:00:00Z"
        }});
        let (version, payload) = upcast("Session", "Started", "1.0", old);
        assert_eq!(version, "2.0");
        let event: SessionEvent = serde_json::from_value(payload)?;
        match event {
            SessionEvent::Started { method, .. } => assert_eq!(method, LoginMethod::Password),
            other => panic!("{other:?}"),
        }
        // Current events and other types pass unchanged.
        let (version, _) = upcast("Session", "Started", "2.0", json!({}));
        assert_eq!(version, "2.0");
        let (version, _) = upcast("User", "Registered", "1.0", json!({}));
        assert_eq!(version, "1.0");
        Ok(())
    }
}
