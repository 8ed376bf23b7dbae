"""What the room-protocol interop scripts share: a stock SDK client for a room, and waiting for a
condition with a time limit."""

import asyncio

from meshagent.api import RoomClient, WebSocketClientProtocol
from meshagent.api.urls import websocket_room_url

TIMEOUT = 30.0


def client(base: str, room: str, token: str) -> RoomClient:
    """A stock RoomClient for `room` at `base` (what MESHAGENT_ROOM_URL would hold)."""
    url = websocket_room_url(room_name=room, base_url=base)
    return RoomClient(
        protocol_factory=lambda: WebSocketClientProtocol(url=url, token=token)
    )


async def until(cond, what: str) -> None:
    """Waits until `cond()` holds; exits naming `what` after TIMEOUT seconds."""

    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(wait(), TIMEOUT)
    except asyncio.TimeoutError:
        raise SystemExit(f"timed out waiting for {what}")
