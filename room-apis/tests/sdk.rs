//! Tokens minted by the MeshAgent Python SDK verify here, and tokens minted here carry the same
//! payload. `fixtures/mint.py` made the fixture; its header says how to make it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use roomd_room_apis::token::Signer;
use roomd_room_apis::{
    mint, verify, ApiKey, ApiScope, Claims, DocAccess, Forbidden, Role, SyncGrant, SyncPathGrant,
    Unauthenticated,
};
use serde_json::{json, Value};

use common::Store;

/// Well before the fixture's expiry (2100-01-01).
const NOW: i64 = 1_700_000_000;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/sdk_tokens.json")).unwrap()
}

fn fixture_str<'a>(fixture: &'a Value, name: &str) -> &'a str {
    fixture[name].as_str().unwrap()
}

fn store_for(key: &ApiKey) -> Store {
    Store::default().with_key(key.id, key.project, &key.secret, false)
}

fn payload(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn an_sdk_token_verifies_with_its_grants() {
    let fixture = fixture();
    let key = ApiKey::parse(fixture_str(&fixture, "api_key")).unwrap();
    let store = store_for(&key);
    let verified = verify(fixture_str(&fixture, "token"), NOW, &store, None).unwrap();

    assert_eq!(verified.project, key.project);
    assert_eq!(verified.signer, Signer::Key(key.id));
    let claims = &verified.claims;
    assert_eq!(claims.name, "sdk-agent");
    assert_eq!(claims.role(), Role::Agent);
    assert_eq!(claims.exp, fixture["exp"].as_i64());
    assert_eq!(claims.version.as_deref(), Some("0.56.0"));
    assert!(claims.extra.is_empty(), "{:?}", claims.extra);
    assert!(claims.room_matches("team-blue"));
    assert!(!claims.room_matches("other"));

    let mut expected = ApiScope::agent_default();
    expected.sync = Some(SyncGrant {
        paths: Some(vec![
            SyncPathGrant::new("notes/readme", true),
            SyncPathGrant::new("shared/*", false),
        ]),
    });
    let scope = claims.authorize_room("team-blue").unwrap();
    assert_eq!(scope, &expected);
    assert_eq!(
        scope.doc_access("notes/readme"),
        Ok(DocAccess { read_only: true })
    );
    assert_eq!(
        scope.doc_access("/shared/a"),
        Ok(DocAccess { read_only: false })
    );
    assert_eq!(scope.doc_access("other"), Err(Forbidden::PathNotGranted));
    assert!(scope.require_developer().is_ok());
    assert_eq!(scope.require_admin().err(), Some(Forbidden::NoAdminGrant));
    assert_eq!(
        claims.authorize_room("other").err(),
        Some(Forbidden::WrongRoom)
    );

    // The token expires in 2100, and not a second later.
    let exp = fixture["exp"].as_i64().unwrap();
    assert_eq!(
        verify(fixture_str(&fixture, "token"), exp, &store, None).err(),
        Some(Unauthenticated::Expired)
    );
}

#[test]
fn an_sdk_token_without_expiry_needs_the_projects_consent() {
    let fixture = fixture();
    let key = ApiKey::parse(fixture_str(&fixture, "api_key")).unwrap();
    let token = fixture_str(&fixture, "token_no_exp");
    assert_eq!(
        verify(token, NOW, &store_for(&key), None).err(),
        Some(Unauthenticated::NoExpiry)
    );
    let store = store_for(&key).allowing_no_expiry(key.project);
    let verified = verify(token, NOW, &store, None).unwrap();
    assert_eq!(verified.claims.exp, None);
    assert_eq!(verified.claims.name, "sdk-agent");
}

#[test]
fn an_sdk_token_fails_with_another_secret() {
    let fixture = fixture();
    let mut key = ApiKey::parse(fixture_str(&fixture, "api_key")).unwrap();
    key.secret.push('x');
    assert_eq!(
        verify(fixture_str(&fixture, "token"), NOW, &store_for(&key), None).err(),
        Some(Unauthenticated::BadSignature)
    );
}

/// Claims read from the SDK's token and minted again carry the very same payload.
#[test]
fn minting_again_gives_the_sdks_payload() {
    let fixture = fixture();
    let key = ApiKey::parse(fixture_str(&fixture, "api_key")).unwrap();
    for name in ["token", "token_no_exp"] {
        let sdk = fixture_str(&fixture, name);
        let claims = Claims::from_value(payload(sdk)).unwrap();
        let ours = mint(&claims, &key.secret).unwrap();
        assert_eq!(payload(&ours), payload(sdk), "{name}");
        // JSON keys come out in another order, so the signatures differ; both verify.
        let store = store_for(&key).allowing_no_expiry(key.project);
        assert_eq!(verify(&ours, NOW, &store, None).unwrap().claims, claims);
    }
}

#[test]
fn presets_serialise_as_the_sdks() {
    let fixture = fixture();
    let scopes = &fixture["scopes"];
    assert_eq!(
        serde_json::to_value(ApiScope::user_default()).unwrap(),
        scopes["user_default"]
    );
    assert_eq!(
        serde_json::to_value(ApiScope::agent_default()).unwrap(),
        scopes["agent_default"]
    );
    assert_eq!(
        serde_json::to_value(ApiScope::full()).unwrap(),
        scopes["full"]
    );
    for name in ["user_default", "agent_default", "full"] {
        let parsed: ApiScope = serde_json::from_value(scopes[name].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            scopes[name],
            "{name}"
        );
    }
}

/// A token minted here, committed so that it can be handed to the SDK:
/// `python room-apis/tests/fixtures/mint.py verify "$(cat room-apis/tests/fixtures/roomd_token.txt)"`.
/// HS256 and the claims' JSON are both deterministic, so minting again gives the same text.
#[test]
fn the_token_for_the_sdk_is_what_mint_makes() {
    let fixture = fixture();
    let key = ApiKey::parse(fixture_str(&fixture, "api_key")).unwrap();
    let mut scope = ApiScope::user_default();
    scope.sync = Some(SyncGrant {
        paths: Some(vec![
            SyncPathGrant::new("notes/readme", true),
            SyncPathGrant::new("shared/*", false),
        ]),
    });
    scope.messaging.as_mut().unwrap().broadcast = false;
    let mut claims = Claims::new("roomd-user");
    claims.grants = vec![
        roomd_room_apis::Grant::Room("team-*".into()),
        roomd_room_apis::Grant::Role(Role::Tool),
        roomd_room_apis::Grant::Api(scope),
    ];
    claims.project = Some(key.project);
    claims.key = Some(key.id);
    claims.exp = fixture["exp"].as_i64();
    claims.version = Some("0.56.0".into());
    claims.extra.insert("color".into(), json!("teal"));
    let token = mint(&claims, &key.secret).unwrap();
    assert_eq!(
        token,
        include_str!("fixtures/roomd_token.txt").trim(),
        "{token}"
    );
}
