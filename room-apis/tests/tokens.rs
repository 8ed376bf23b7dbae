//! The token matrix: `verify`, then `authorize_room` and `doc_access`, over tokens good and bad.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use roomd_room_apis::token::{KeyLookup, Signer};
use roomd_room_apis::{
    mint, verify, ApiScope, Claims, DocAccess, ExternalIssuer, Forbidden, Grant, KeyId, ProjectId,
    Role, SyncGrant, SyncPathGrant, Unauthenticated,
};
use serde_json::{json, Value};

use common::{raw_token, sign, Store};

const NOW: i64 = 1_700_000_000;

const PROJECT_A: &str = "a0000000-0000-4000-8000-00000000000a";
const PROJECT_B: &str = "b0000000-0000-4000-8000-00000000000b";
const PROJECT_C: &str = "c0000000-0000-4000-8000-00000000000c";
const KEY_A: &str = "1a000000-0000-4000-8000-0000000000a1";
const KEY_B: &str = "1b000000-0000-4000-8000-0000000000b1";
const KEY_C: &str = "1c000000-0000-4000-8000-0000000000c1";
const KEY_REVOKED: &str = "1d000000-0000-4000-8000-0000000000d1";
const KEY_UNKNOWN: &str = "1e000000-0000-4000-8000-0000000000e1";
const PROJECT_UNKNOWN: &str = "f0000000-0000-4000-8000-00000000000f";
const SECRET_A: &str = "secret-a-0123456789";

// Keys made for these tests alone (`openssl genpkey`), standing in for an external issuer's.
const ED_PRIVATE: &[u8] = include_bytes!("fixtures/ed25519_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("fixtures/ed25519_public.pem");
const ED_OTHER_PRIVATE: &[u8] = include_bytes!("fixtures/ed25519_other_private.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");

fn project(id: &str) -> ProjectId {
    id.parse().unwrap()
}

fn key(id: &str) -> KeyId {
    id.parse().unwrap()
}

/// Projects A and B with a key each, a revoked key of A, and project C, whose tokens need not
/// expire.
fn store() -> Store {
    Store::default()
        .with_key(key(KEY_A), project(PROJECT_A), SECRET_A, false)
        .with_key(key(KEY_B), project(PROJECT_B), "secret-b", false)
        .with_key(key(KEY_C), project(PROJECT_C), "secret-c", false)
        .with_key(key(KEY_REVOKED), project(PROJECT_A), "secret-revoked", true)
        .allowing_no_expiry(project(PROJECT_C))
}

/// A valid payload, signed by key A: room `team-*`, role agent, the agent default scope with
/// two sync paths.
fn payload() -> Value {
    let mut scope = ApiScope::agent_default();
    scope.sync = Some(SyncGrant {
        paths: Some(vec![
            SyncPathGrant::new("notes/readme", true),
            SyncPathGrant::new("shared/*", false),
        ]),
    });
    let mut claims = Claims::new("alice");
    claims.grants = vec![
        Grant::Room("team-*".into()),
        Grant::Role(Role::Agent),
        Grant::Api(scope),
    ];
    claims.project = Some(project(PROJECT_A));
    claims.key = Some(key(KEY_A));
    claims.exp = Some(NOW + 3600);
    claims.version = Some("0.56.0".into());
    serde_json::to_value(&claims).unwrap()
}

/// The valid payload with some claims replaced (`null` removes a claim).
fn with(changes: Value) -> Value {
    let mut payload = payload();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            payload.as_object_mut().unwrap().remove(name);
        } else {
            payload[name] = value.clone();
        }
    }
    payload
}

fn hs(algorithm: Algorithm, payload: &Value, secret: &str) -> String {
    sign(
        algorithm,
        payload,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
}

fn hs256(payload: &Value) -> String {
    hs(Algorithm::HS256, payload, SECRET_A)
}

fn eddsa(payload: &Value, private: &[u8]) -> String {
    sign(
        Algorithm::EdDSA,
        payload,
        &EncodingKey::from_ed_pem(private).unwrap(),
    )
}

fn rs256(payload: &Value) -> String {
    sign(
        Algorithm::RS256,
        payload,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
}

/// An issuer's token: no `kid`, a `sub` naming the project.
fn issued(changes: Value) -> Value {
    let mut payload = with(changes);
    payload.as_object_mut().unwrap().remove("kid");
    payload
}

fn replace_signature(token: &str, signature_of: &str) -> String {
    let (message, _) = token.rsplit_once('.').unwrap();
    let (_, signature) = signature_of.rsplit_once('.').unwrap();
    format!("{message}.{signature}")
}

/// Changes the first character of the signature, which changes its first byte.
fn flip_signature(token: &str) -> String {
    let (message, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    format!("{message}.{first}{}", &signature[1..])
}

/// One row of the verify matrix.
struct Case<'a> {
    name: &'static str,
    token: String,
    issuer: Option<&'a ExternalIssuer>,
    expected: Result<(), Unauthenticated>,
}

fn ok(name: &'static str, token: String) -> Case<'static> {
    Case {
        name,
        token,
        issuer: None,
        expected: Ok(()),
    }
}

fn refused(name: &'static str, token: String, reason: Unauthenticated) -> Case<'static> {
    Case {
        name,
        token,
        issuer: None,
        expected: Err(reason),
    }
}

impl<'a> Case<'a> {
    fn issuer(self, issuer: &'a ExternalIssuer) -> Case<'a> {
        Case {
            issuer: Some(issuer),
            ..self
        }
    }
}

#[test]
fn the_verify_matrix() {
    use Unauthenticated::*;

    let ed = ExternalIssuer::from_ed_pem(ED_PUBLIC).unwrap();
    let rsa = ExternalIssuer::from_rsa_pem(RSA_PUBLIC).unwrap();
    let good = hs256(&payload());
    let (good_message, _) = good.rsplit_once('.').unwrap();
    let after_header = &good[good.find('.').unwrap()..];
    let rsa_public_text = std::str::from_utf8(RSA_PUBLIC).unwrap();
    let in_c = |changes: Value| {
        let mut payload = with(changes);
        payload["kid"] = json!(KEY_C);
        payload["sub"] = json!(PROJECT_C);
        hs(Algorithm::HS256, &payload, "secret-c")
    };
    let grants = |grants: Value| hs256(&with(json!({ "grants": grants })));

    let cases = vec![
        ok("valid HS256", good.clone()),
        ok("valid HS256, an issuer configured", good.clone()).issuer(&ed),
        refused("signature flipped", flip_signature(&good), BadSignature),
        refused(
            "payload changed under the signature",
            replace_signature(&hs256(&with(json!({ "name": "mallory" }))), &good),
            BadSignature,
        ),
        refused(
            "another secret",
            hs(Algorithm::HS256, &payload(), "not-the-secret"),
            BadSignature,
        ),
        refused(
            "alg none",
            raw_token(&json!({ "alg": "none", "typ": "JWT" }), &payload(), b""),
            AlgNone,
        ),
        refused(
            "alg None, signed anyway",
            raw_token(&json!({ "alg": "None" }), &payload(), b"sig"),
            AlgNone,
        )
        .issuer(&ed),
        refused(
            "HS384",
            hs(Algorithm::HS384, &payload(), SECRET_A),
            WrongAlgorithm,
        ),
        refused(
            "HS512",
            hs(Algorithm::HS512, &payload(), SECRET_A),
            WrongAlgorithm,
        ),
        refused(
            "unknown alg",
            raw_token(&json!({ "alg": "XS256" }), &payload(), b"sig"),
            WrongAlgorithm,
        ),
        refused(
            "RS256, no issuer",
            rs256(&issued(json!({}))),
            WrongAlgorithm,
        ),
        refused(
            "RS256, EdDSA issuer",
            rs256(&issued(json!({}))),
            WrongAlgorithm,
        )
        .issuer(&ed),
        refused(
            "RS256 header, HMAC-signed with the issuer's public key",
            replace_signature(
                &raw_token(
                    &json!({ "alg": "RS256", "typ": "JWT" }),
                    &issued(json!({})),
                    b"",
                ),
                &hs(Algorithm::HS256, &issued(json!({})), rsa_public_text),
            ),
            BadSignature,
        )
        .issuer(&rsa),
        refused("expired", hs256(&with(json!({ "exp": NOW - 1 }))), Expired),
        refused("expiring now", hs256(&with(json!({ "exp": NOW }))), Expired),
        ok("expiring in 1 s", hs256(&with(json!({ "exp": NOW + 1 })))),
        refused(
            "nbf 2 min ahead",
            hs256(&with(json!({ "nbf": NOW + 120 }))),
            NotYetValid,
        ),
        ok("nbf 30 s ahead", hs256(&with(json!({ "nbf": NOW + 30 })))),
        ok("nbf 60 s ahead", hs256(&with(json!({ "nbf": NOW + 60 })))),
        refused(
            "nbf 61 s ahead",
            hs256(&with(json!({ "nbf": NOW + 61 }))),
            NotYetValid,
        ),
        refused(
            "iat 2 min ahead",
            hs256(&with(json!({ "iat": NOW + 120 }))),
            NotYetValid,
        ),
        ok(
            "iat, nbf past",
            hs256(&with(json!({ "iat": NOW - 9, "nbf": NOW - 9 }))),
        ),
        refused(
            "unknown kid",
            hs256(&with(json!({ "kid": KEY_UNKNOWN }))),
            UnknownKey,
        ),
        refused(
            "revoked kid",
            hs(
                Algorithm::HS256,
                &with(json!({ "kid": KEY_REVOKED })),
                "secret-revoked",
            ),
            RevokedKey,
        ),
        refused(
            "revoked kid, bad signature",
            hs256(&with(json!({ "kid": KEY_REVOKED }))),
            BadSignature,
        ),
        refused(
            "kid of project A, sub B",
            hs256(&with(json!({ "sub": PROJECT_B }))),
            WrongProject,
        ),
        refused("no exp", hs256(&with(json!({ "exp": null }))), NoExpiry),
        ok("no exp, project allows it", in_c(json!({ "exp": null }))),
        refused(
            "expired, project allows no exp",
            in_c(json!({ "exp": NOW - 1 })),
            Expired,
        ),
        refused("empty name", hs256(&with(json!({ "name": "" }))), EmptyName),
        refused(
            "blank name",
            hs256(&with(json!({ "name": " \t" }))),
            EmptyName,
        ),
        refused(
            "129-char name",
            hs256(&with(json!({ "name": "n".repeat(129) }))),
            NameTooLong,
        ),
        ok(
            "128-char name of 2-byte chars",
            hs256(&with(json!({ "name": "é".repeat(128) }))),
        ),
        refused("no kid", hs256(&with(json!({ "kid": null }))), Malformed),
        refused(
            "kid not UUID text",
            hs256(&with(json!({ "kid": "key-1" }))),
            Malformed,
        ),
        refused("no sub", hs256(&with(json!({ "sub": null }))), Malformed),
        refused("sub a number", hs256(&with(json!({ "sub": 7 }))), Malformed),
        refused("no name", hs256(&with(json!({ "name": null }))), Malformed),
        refused(
            "no grants",
            hs256(&with(json!({ "grants": null }))),
            Malformed,
        ),
        refused(
            "unknown role",
            grants(json!([{ "name": "role", "scope": "admin" }])),
            Malformed,
        ),
        refused(
            "api scope with a wrongly typed field",
            grants(json!([{ "name": "api", "scope": { "sync": { "paths": [{ "path": 1 }] } } }])),
            Malformed,
        ),
        refused(
            "exp a string",
            hs256(&with(json!({ "exp": "tomorrow" }))),
            Malformed,
        ),
        refused(
            "an audience",
            hs256(&with(json!({ "aud": "somewhere" }))),
            UnexpectedAudience,
        ),
        refused("payload not an object", hs256(&json!([1, 2])), Malformed),
        refused("malformed base64", "!!!.???.***".into(), Malformed),
        refused("garbage", "garbage".into(), Malformed),
        refused("empty", String::new(), Malformed),
        refused("four segments", format!("{good}.x"), Malformed),
        refused(
            "header not JSON",
            format!("bm90IGpzb24{after_header}"),
            Malformed,
        ),
        refused(
            "header without alg",
            replace_signature(&raw_token(&json!({ "typ": "JWT" }), &payload(), b""), &good),
            Malformed,
        ),
        refused(
            "signature not base64",
            format!("{good_message}.***"),
            Malformed,
        ),
        refused(
            "validly signed, longer than 16 KiB",
            hs256(&with(json!({ "padding": "x".repeat(16 * 1024) }))),
            Malformed,
        ),
        ok("EdDSA, EdDSA issuer", eddsa(&issued(json!({})), ED_PRIVATE)).issuer(&ed),
        refused(
            "EdDSA, no issuer",
            eddsa(&issued(json!({})), ED_PRIVATE),
            WrongAlgorithm,
        ),
        refused(
            "EdDSA, RS256 issuer",
            eddsa(&issued(json!({})), ED_PRIVATE),
            WrongAlgorithm,
        )
        .issuer(&rsa),
        refused(
            "EdDSA signed by another key",
            eddsa(&issued(json!({})), ED_OTHER_PRIVATE),
            BadSignature,
        )
        .issuer(&ed),
        refused(
            "EdDSA for an unknown project",
            eddsa(&issued(json!({ "sub": PROJECT_UNKNOWN })), ED_PRIVATE),
            UnknownProject,
        )
        .issuer(&ed),
        refused(
            "EdDSA without sub",
            eddsa(&issued(json!({ "sub": null })), ED_PRIVATE),
            Malformed,
        )
        .issuer(&ed),
        refused(
            "EdDSA expired",
            eddsa(&issued(json!({ "exp": NOW - 5 })), ED_PRIVATE),
            Expired,
        )
        .issuer(&ed),
        ok("RS256, RS256 issuer", rs256(&issued(json!({})))).issuer(&rsa),
    ];

    let store = store();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = verify(&case.token, NOW, &store, case.issuer).map(|_| ());
            (got != case.expected)
                .then(|| format!("{}: expected {:?}, got {got:?}", case.name, case.expected))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 20);
}

#[test]
fn a_verified_token_says_who_signed_it() {
    let store = store();
    let verified = verify(&hs256(&payload()), NOW, &store, None).unwrap();
    assert_eq!(verified.project, project(PROJECT_A));
    assert_eq!(verified.signer, Signer::Key(key(KEY_A)));
    assert_eq!(verified.claims.name, "alice");
    assert_eq!(verified.claims.role(), Role::Agent);

    // A store behind a trait object serves as well.
    let keys: &dyn KeyLookup = &store;
    let issuer = ExternalIssuer::from_ed_pem(ED_PUBLIC).unwrap();
    let token = eddsa(&issued(json!({ "sub": PROJECT_B })), ED_PRIVATE);
    let verified = verify(&token, NOW, keys, Some(&issuer)).unwrap();
    assert_eq!(verified.project, project(PROJECT_B));
    assert_eq!(verified.signer, Signer::Issuer);
}

/// What a token allows once it verified: the room, then the document.
#[test]
fn the_authorization_matrix() {
    use Forbidden::*;

    let room = |scope: &str| json!({ "name": "room", "scope": scope });
    let sync = |paths: Value| json!({ "name": "api", "scope": { "sync": { "paths": paths } } });
    let any_doc = sync(json!(null));
    let writable = Ok(DocAccess { read_only: false });
    let read_only = Ok(DocAccess { read_only: true });
    let api_without_sync = json!({ "name": "api", "scope": { "messaging": {} } });

    // (case, grants, room, document, expected)
    let cases = [
        (
            "prefix room",
            json!([room("team-*"), any_doc]),
            "team-blue",
            "a",
            writable,
        ),
        (
            "prefix room, other",
            json!([room("team-*"), any_doc]),
            "other",
            "a",
            Err(WrongRoom),
        ),
        (
            "exact room",
            json!([room("lobby"), any_doc]),
            "lobby",
            "a",
            writable,
        ),
        (
            "exact room, longer",
            json!([room("lobby"), any_doc]),
            "lobby-2",
            "a",
            Err(WrongRoom),
        ),
        (
            "no room grant",
            json!([any_doc]),
            "lobby",
            "a",
            Err(WrongRoom),
        ),
        (
            "no api grant",
            json!([room("lobby")]),
            "lobby",
            "a",
            Err(NoApiGrant),
        ),
        (
            "api without sync",
            json!([room("lobby"), api_without_sync]),
            "lobby",
            "a",
            Err(NoSyncGrant),
        ),
        (
            "sync path exact",
            json!([room("lobby"), sync(json!([{ "path": "notes/a" }]))]),
            "lobby",
            "notes/a",
            writable,
        ),
        (
            "sync path exact, leading /",
            json!([room("lobby"), sync(json!([{ "path": "notes/a" }]))]),
            "lobby",
            "/notes/a",
            writable,
        ),
        (
            "sync path exact, another",
            json!([room("lobby"), sync(json!([{ "path": "notes/a" }]))]),
            "lobby",
            "notes/ab",
            Err(PathNotGranted),
        ),
        (
            "sync path prefix",
            json!([room("lobby"), sync(json!([{ "path": "shared/*" }]))]),
            "lobby",
            "shared/x/y",
            writable,
        ),
        (
            "sync path prefix, outside",
            json!([room("lobby"), sync(json!([{ "path": "shared/*" }]))]),
            "lobby",
            "shared",
            Err(PathNotGranted),
        ),
        (
            "read-only entry",
            json!([
                room("lobby"),
                sync(json!([{ "path": "notes/a", "read_only": true }]))
            ]),
            "lobby",
            "notes/a",
            read_only,
        ),
        (
            "first match decides",
            json!([
                room("lobby"),
                sync(json!([{ "path": "a/*", "read_only": true }, { "path": "a/b" }]))
            ]),
            "lobby",
            "a/b",
            read_only,
        ),
        (
            "first match decides, writable first",
            json!([
                room("lobby"),
                sync(json!([{ "path": "a/b" }, { "path": "a/*", "read_only": true }]))
            ]),
            "lobby",
            "a/b",
            writable,
        ),
        (
            "empty path list",
            json!([room("lobby"), sync(json!([]))]),
            "lobby",
            "a",
            Err(PathNotGranted),
        ),
    ];

    let store = store();
    let mut failures = Vec::new();
    for (name, grants, room, path, expected) in cases {
        let token = hs256(&with(json!({ "grants": grants })));
        let verified = verify(&token, NOW, &store, None).unwrap();
        let got = verified
            .claims
            .authorize_room(room)
            .and_then(|scope| scope.doc_access(path));
        if got != expected {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mint_then_verify_round_trips() {
    let mut claims = Claims::from_value(payload()).unwrap();
    claims.nbf = Some(NOW - 10);
    claims.iat = Some(NOW - 10);
    claims.extra.insert("color".into(), json!("teal"));
    let token = mint(&claims, SECRET_A).unwrap();
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header, json!({ "alg": "HS256", "typ": "JWT" }));
    let verified = verify(&token, NOW, &store(), None).unwrap();
    assert_eq!(verified.claims, claims);
    assert_eq!(
        verified.claims.attributes().get("color"),
        Some(&json!("teal"))
    );
    assert!(mint(&claims, "").is_err());
}

#[test]
fn error_reasons_are_distinct_snake_case() {
    let reasons = [
        Unauthenticated::Malformed,
        Unauthenticated::AlgNone,
        Unauthenticated::WrongAlgorithm,
        Unauthenticated::UnknownKey,
        Unauthenticated::RevokedKey,
        Unauthenticated::WrongProject,
        Unauthenticated::UnknownProject,
        Unauthenticated::BadSignature,
        Unauthenticated::UnexpectedAudience,
        Unauthenticated::NoExpiry,
        Unauthenticated::Expired,
        Unauthenticated::NotYetValid,
        Unauthenticated::EmptyName,
        Unauthenticated::NameTooLong,
    ]
    .map(|e| e.reason())
    .into_iter()
    .chain(
        [
            Forbidden::WrongRoom,
            Forbidden::NoApiGrant,
            Forbidden::NoSyncGrant,
            Forbidden::PathNotGranted,
            Forbidden::NoDeveloperGrant,
            Forbidden::NoAdminGrant,
        ]
        .map(|e| e.reason()),
    )
    .collect::<Vec<_>>();
    let mut unique = reasons.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), reasons.len());
    for reason in reasons {
        assert!(
            reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{reason}"
        );
    }
}

#[test]
fn issuers_take_only_eddsa_and_rs256() {
    let key = jsonwebtoken::DecodingKey::from_secret(b"k").unwrap();
    assert!(ExternalIssuer::new(Algorithm::HS256, key).is_err());
    let ed = jsonwebtoken::DecodingKey::from_ed_pem(ED_PUBLIC).unwrap();
    assert!(ExternalIssuer::new(Algorithm::ES256, ed.clone()).is_err());
    assert!(ExternalIssuer::new(Algorithm::RS256, ed.clone()).is_err());
    assert!(ExternalIssuer::new(Algorithm::EdDSA, ed).is_ok());
    assert!(ExternalIssuer::from_ed_pem(RSA_PUBLIC).is_err());
    assert!(ExternalIssuer::from_rsa_pem(b"not a pem").is_err());
}

proptest! {
    #[test]
    fn verify_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = verify(&text, NOW, &store(), None);
    }

    #[test]
    fn verify_never_panics_on_dotted_base64(
        header in "[A-Za-z0-9_-]{0,60}",
        payload in "[A-Za-z0-9_-]{0,200}",
        signature in "[A-Za-z0-9_-]{0,60}",
    ) {
        let _ = verify(&format!("{header}.{payload}.{signature}"), NOW, &store(), None);
    }

    /// Any change to a valid token's text, in any segment, makes it fail.
    #[test]
    fn a_changed_token_never_verifies(index in 0usize..10_000, byte in proptest::char::range('!', '~')) {
        let good = hs256(&payload());
        let mut bytes = good.clone().into_bytes();
        let index = index % bytes.len();
        bytes[index] = byte as u8;
        let changed = String::from_utf8(bytes).unwrap();
        let result = verify(&changed, NOW, &store(), None);
        prop_assert!(changed == good || result.is_err(), "{changed} verified");
    }
}
