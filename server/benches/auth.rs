//! What authentication costs a WebSocket connection before its upgrade is answered: reading the
//! token from the request, verifying it (HS256) against the store's keys, and the document
//! access and participant it grants. A refused token is measured too, counted against its
//! address as the endpoint counts it, because that is what an attacker makes the server pay.
//!
//! `cargo bench -p roomd --bench auth`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomd::auth::{mint_token, presented, preset, Refusal, TokenRequest};
use roomd::{Config, Server};
use roomd_room_apis::{ApiKey, KeyId, KeyLookup, KeyRecord, ProjectId, Role, Unauthenticated};

/// Keys in the store: a project rarely holds more than a few (one per service that mints).
const KEYS: usize = 3;

/// The room and document the connection opens.
const ROOM: &str = "bench";
const DOC: &str = "notes/today";

/// A participant token as `roomd token --preset user --ttl 1h` mints it.
fn user_token(key: &ApiKey) -> String {
    let request = TokenRequest {
        room: ROOM.into(),
        name: "bench participant".into(),
        role: Role::User,
        api: preset("user").unwrap(),
        ttl: Some(Duration::from_secs(3600)),
    };
    mint_token(key, &request).unwrap().0
}

/// The same claims signed with a secret the store does not hold: a forged token whose key id
/// is real, so the server goes as far as checking the signature.
fn forged_token(key: &ApiKey) -> String {
    let forged = ApiKey {
        secret: "not-the-secret-of-this-key-0123456789abcdef".into(),
        ..key.clone()
    };
    user_token(&forged)
}

/// The headers of a browser's WebSocket upgrade, with the token as a bearer header.
fn upgrade_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8787"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// Keys held in a map, as the server's identity holds them, for verifying outside the server.
struct Keys(HashMap<KeyId, (ProjectId, String)>);

impl KeyLookup for Keys {
    fn key(&self, id: KeyId) -> Option<KeyRecord<'_>> {
        self.0.get(&id).map(|(project, secret)| KeyRecord {
            project: *project,
            secret,
            revoked: false,
        })
    }

    fn allows_no_expiry(&self, _: ProjectId) -> bool {
        false
    }

    fn project_exists(&self, project: ProjectId) -> bool {
        self.0.values().any(|(p, _)| *p == project)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// `roomd_room_apis::verify` alone, against a map of a few keys.
fn verify(c: &mut Criterion) {
    let project = ProjectId::from_random([7; 16]);
    let keys: Vec<ApiKey> = (0..KEYS)
        .map(|i| {
            ApiKey::generate(
                KeyId::from_random([i as u8; 16]),
                project,
                [i as u8 + 1; 32],
            )
        })
        .collect();
    let lookup = Keys(
        keys.iter()
            .map(|k| (k.id, (k.project, k.secret.clone())))
            .collect(),
    );
    let valid = user_token(&keys[1]);
    let forged = forged_token(&keys[1]);
    let now = now_secs();
    assert!(roomd_room_apis::verify(&valid, now, &lookup, None).is_ok());
    assert_eq!(
        roomd_room_apis::verify(&forged, now, &lookup, None).err(),
        Some(Unauthenticated::BadSignature)
    );

    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify a valid token (3 keys)", |b| {
        b.iter(|| roomd_room_apis::verify(black_box(&valid), now, &lookup, None).unwrap())
    });
    g.bench_function("verify a forged token (bad signature)", |b| {
        b.iter(|| roomd_room_apis::verify(black_box(&forged), now, &lookup, None).unwrap_err())
    });
    let headers = upgrade_headers(&valid);
    g.bench_function("read the token from the Authorization header", |b| {
        b.iter(|| presented(black_box(&headers), None))
    });
    let query = format!("token={valid}");
    let bare = upgrade_headers("x");
    g.bench_function("read the token from ?token=", |b| {
        b.iter(|| presented(black_box(&bare), Some(black_box(&query))))
    });
    g.finish();
}

/// The server's own path, on a real store holding a few keys: what the y-websocket endpoint
/// runs for every connection before it answers the upgrade.
fn admit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = ([127, 0, 0, 1], 0).into();
    let server = runtime.block_on(Server::start(config)).unwrap();
    let auth = &server.ctx().auth;
    let keys: Vec<ApiKey> = (0..KEYS)
        .map(|_| auth.identity.create_key("default").unwrap().1)
        .collect();
    let valid = upgrade_headers(&user_token(&keys[1]));
    let forged = upgrade_headers(&forged_token(&keys[1]));
    let attacker: IpAddr = [127, 0, 0, 2].into();
    assert!(auth
        .authenticate(presented(&valid, None).token.as_deref())
        .is_ok());
    assert_eq!(
        auth.authenticate(presented(&forged, None).token.as_deref())
            .err(),
        Some(Refusal::Unauthenticated(Unauthenticated::BadSignature))
    );

    let mut g = c.benchmark_group("connection");
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        "admit: token from the header, verified against 3 keys, document access, participant",
        |b| {
            b.iter(|| {
                let token = presented(black_box(&valid), None).token;
                let caller = auth.authenticate(token.as_deref()).unwrap();
                let access = caller.doc_access(ROOM, DOC).unwrap();
                (access, caller.project(), caller.who())
            })
        },
    );
    // Past the address's limit of failed attempts the answer becomes 429, at the same cost:
    // the limiter counts every attempt either way.
    g.bench_function(
        "refuse: forged token from the header (bad signature), counted against its address",
        |b| {
            b.iter(|| {
                let token = presented(black_box(&forged), None).token;
                let refusal = auth.authenticate(token.as_deref()).unwrap_err();
                auth.failed(attacker, refusal)
            })
        },
    );
    g.finish();
    runtime.block_on(server.shutdown()).unwrap();
}

criterion_group!(benches, verify, admit);
criterion_main!(benches);
