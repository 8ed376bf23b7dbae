//! API keys and compact ids against the SDK's own encodings, and their round trips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use roomd_room_apis::ids::{compact, from_compact};
use roomd_room_apis::{ApiKey, KeyId, ProjectId};
use serde_json::Value;
use uuid::Uuid;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/sdk_tokens.json")).unwrap()
}

#[test]
fn a_key_encoded_by_the_sdk_parses() {
    let fixture = fixture();
    let text = fixture["api_key"].as_str().unwrap();
    let key = ApiKey::parse(text).unwrap();
    assert_eq!(key.id.to_string(), fixture["key_id"].as_str().unwrap());
    assert_eq!(
        key.project.to_string(),
        fixture["project_id"].as_str().unwrap()
    );
    assert_eq!(key.secret, fixture["secret"].as_str().unwrap());
    // The secret holds `-`, which only the first two separators split on.
    assert!(key.secret.contains('-'));
    assert_eq!(key.to_string(), text);
}

#[test]
fn compact_ids_match_the_sdk() {
    let fixture = fixture();
    for (standard, compacted) in fixture["compact_uuids"].as_object().unwrap() {
        let id = Uuid::parse_str(standard).unwrap();
        let compacted = compacted.as_str().unwrap();
        assert_eq!(compact(&id), compacted, "{standard}");
        assert_eq!(from_compact(compacted).unwrap(), id, "{standard}");
    }
}

proptest! {
    #[test]
    fn generated_keys_round_trip(
        id in any::<[u8; 16]>(),
        project in any::<[u8; 16]>(),
        secret in any::<[u8; 32]>(),
    ) {
        let key = ApiKey::generate(KeyId::from_random(id), ProjectId::from_random(project), secret);
        let text = key.to_string();
        prop_assert_eq!(text.matches('-').count() >= 3, true);
        prop_assert_eq!(ApiKey::parse(&text).unwrap(), key);
    }

    #[test]
    fn any_key_with_a_dashed_secret_round_trips(
        id in any::<[u8; 16]>(),
        project in any::<[u8; 16]>(),
        secret in "[-A-Za-z0-9_]{1,64}",
    ) {
        let key = ApiKey {
            id: Uuid::from_bytes(id).into(),
            project: Uuid::from_bytes(project).into(),
            secret,
        };
        prop_assert_eq!(ApiKey::parse(&key.to_string()).unwrap(), key);
    }

    #[test]
    fn compact_round_trips(bytes in any::<[u8; 16]>()) {
        let id = Uuid::from_bytes(bytes);
        let text = compact(&id);
        prop_assert_eq!(text.len(), 22);
        prop_assert!(!text.contains('-'));
        prop_assert_eq!(from_compact(&text).unwrap(), id);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,120}") {
        let _ = ApiKey::parse(&text);
        let _ = from_compact(&text);
        let _ = text.parse::<ProjectId>();
    }
}
