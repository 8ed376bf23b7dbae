//! The room protocol's endpoint (`/v1/rooms/{room}` and `/rooms/{room}` with a WebSocket
//! upgrade): the token is checked before the upgrade, then the connection runs the shared
//! connection loop of [`crate::ws`], assembling the SDK's packets into messages for the room
//! task (which answers them, see `room/proto.rs`) and cutting the room's messages into packets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use roomd_sync::room_protocol::{queued_packets, Assembler, WireLimits};
use roomd_sync::{CloseCode, ConnId};

use crate::auth::{presented, Refusal};
use crate::http::{authenticate_request, check_room, refused, ApiError};
use crate::room::RoomCmd;
use crate::store::RoomKey;
use crate::ws::{Joining, Wire};
use crate::App;

/// The packet limits of a room-protocol connection under the server's limits: a message may
/// carry the largest update in base64 (a third larger) beside a header.
pub fn wire_limits(l: &crate::config::Limits) -> WireLimits {
    let header_bytes_max = 1 << 20;
    WireLimits {
        message_bytes_max: l.message_bytes_max / 3 * 4 + 4 + header_bytes_max,
        header_bytes_max,
        assembling_bytes_max: 2 * (l.message_bytes_max / 3 * 4 + 4 + header_bytes_max),
        ..WireLimits::default()
    }
}

/// The room protocol over one connection.
pub struct RoomWire {
    assembler: Assembler,
}

impl Wire for RoomWire {
    fn frame(
        &mut self,
        conn: ConnId,
        frame: Bytes,
    ) -> Result<Option<RoomCmd>, (CloseCode, String)> {
        match self.assembler.push(&frame) {
            Ok(Some(message)) => Ok(Some(RoomCmd::Message {
                conn,
                message: Box::new(message),
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::debug!(conn = conn.0, error = %e, "invalid room-protocol packet");
                Err((e.close_code(), e.to_string()))
            }
        }
    }

    fn leave(&self, conn: ConnId, closed: Option<(CloseCode, String)>) -> RoomCmd {
        RoomCmd::Leave {
            doc: Arc::from(""),
            conn,
            closed,
        }
    }

    fn outgoing(&mut self, batch: &mut VecDeque<Bytes>) {
        // The room queues each message with its packets cut already: they are sliced apart
        // here, not copied.
        let messages = std::mem::replace(batch, VecDeque::with_capacity(2 * batch.len()));
        for m in messages {
            batch.extend(queued_packets(&m));
        }
    }

    fn keepalive(&self) -> Option<Bytes> {
        // The SDK reads every binary frame as a packet: WebSocket pings alone keep it alive.
        None
    }
}

/// True when the request asks for a WebSocket.
pub fn is_upgrade(request: &Request) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Upgrades a request for room `room` to the room protocol, or refuses it with 401 or 403 and
/// the JSON error body before the upgrade: a stock SDK client retries on 401 and on any close
/// before `room_ready`, and gives up on 403.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let accept = crate::http::upgrade_accept(&request)?;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let uri = request.uri().clone();
    let caller = authenticate_request(&app, request.headers(), &uri, peer)?;
    let scope = caller.scope_in(&room).map_err(|f| {
        ApiError::from_refusal(refused(
            &app,
            Refusal::Forbidden(f),
            &uri,
            peer,
            Some((&caller, &room)),
        ))
    })?;
    let offered = presented(request.headers(), uri.query());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let joining = Arc::new(Joining {
        room: RoomKey::new(caller.project(), &room),
        doc: Arc::from(""),
        who: caller.who(),
        read_only: false,
        principal: Arc::new(caller.principal()),
        scope: Some(Box::new(scope)),
        url: format!("ws://{host}{}", uri.path()),
    });
    let upgraded = hyper::upgrade::on(&mut request);
    let wire = RoomWire {
        assembler: Assembler::new(wire_limits(&app.ctx.config.limits)),
    };
    let tracker = app.ctx.tracker.clone();
    tokio::spawn(tracker.track_future(crate::ws::serve(upgraded, app, joining, wire)));
    Ok(crate::http::switching_protocols(
        accept,
        offered.subprotocol,
    ))
}
