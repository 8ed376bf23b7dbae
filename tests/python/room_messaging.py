"""Messaging, presence and developer logs between two stock MeshAgent SDK clients through roomd.

    python room_messaging.py BASE_URL ROOM TOKEN_A TOKEN_B

Alice and Bob enable messaging and see each other; Alice sends Bob a message with an attachment
and broadcasts one; Bob changes an attribute and Alice sees it; Bob follows the developer log
while Alice writes to it; a message to a participant that is not there fails with NOT_FOUND;
Bob leaves and Alice sees him go. Prints "ok".
"""

import asyncio
import sys

from meshagent.api import RoomException
from meshagent.api.error_codes import ErrorCode
from meshagent.api.room_server_client import RemoteParticipant

from roomlib import TIMEOUT, client, until


async def main() -> None:
    base, room, token_a, token_b = sys.argv[1:5]
    async with client(base, room, token_a) as a:
        gone = asyncio.Event()
        a.messaging.on("participant_removed", lambda participant: gone.set())
        async with client(base, room, token_b) as b:
            received: list = []
            b.messaging.on("message", lambda message: received.append(message))
            a.messaging.enable()
            b.messaging.enable()
            await until(lambda: a.messaging.get_participant_by_name("bob") is not None, "alice to see bob")
            await until(lambda: b.messaging.get_participant_by_name("alice") is not None, "bob to see alice")
            to_bob = a.messaging.get_participant_by_name("bob")
            assert to_bob.id == b.local_participant.id, (to_bob.id, b.local_participant.id)

            await a.messaging.send_message(to=to_bob, type="greeting", message={"hello": "bob"}, attachment=b"\x00\x01bin")
            await until(lambda: len(received) == 1, "bob to receive the message")
            m = received[0]
            assert m.type == "greeting" and m.message == {"hello": "bob"}, (m.type, m.message)
            assert m.from_participant_id == a.local_participant.id
            assert m.attachment == b"\x00\x01bin", m.attachment

            await a.messaging.broadcast_message(type="news", message={"n": 1})
            await until(lambda: len(received) == 2, "bob to receive the broadcast")
            assert received[1].type == "news" and received[1].message == {"n": 1}

            b.local_participant.set_attribute("status", "busy")
            await until(
                lambda: a.messaging.get_participant_by_name("bob").get_attribute("status") == "busy",
                "alice to see bob's attribute",
            )

            logs: list = []

            async def follow() -> None:
                async for event in b.developer.logs():
                    logs.append(event)
                    if any(e.type == "deploy" for e in logs):
                        return

            follower = asyncio.create_task(follow())
            # The stream starts from the moment of the call: write until it is seen.
            async def write() -> None:
                while not follower.done():
                    await a.developer.log(type="deploy", data={"version": 3})
                    await asyncio.sleep(0.05)

            writer = asyncio.create_task(write())
            await asyncio.wait_for(follower, TIMEOUT)
            writer.cancel()
            deploy = next(e for e in logs if e.type == "deploy")
            assert deploy.data == {"version": 3}, deploy.data

            ghost = RemoteParticipant(id="no-such-participant")
            try:
                await a.messaging.send_message(to=ghost, type="x", message={})
                raise SystemExit("a message to no one succeeded")
            except RoomException as e:
                assert e.code == ErrorCode.NOT_FOUND, e.code
        await asyncio.wait_for(gone.wait(), TIMEOUT)
        assert a.messaging.get_participant_by_name("bob") is None
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
