"""The stock MeshAgent SDK's `QueuesClient` (send, receive, list, open, drain, close) through
roomd: a producer and a consumer, a long poll woken by a send, and the errors the SDK raises.

    python room_queues.py BASE_URL ROOM PRODUCER_TOKEN CONSUMER_TOKEN

Prints "ok".
"""

import asyncio
import sys

from meshagent.api import RoomException

from roomlib import TIMEOUT, client


async def main() -> None:
    base, room, producer_token, consumer_token = sys.argv[1:5]
    async with client(base, room, producer_token) as p, client(base, room, consumer_token) as c:
        await p.queues.open(name="jobs")
        assert [(q.name, q.size) for q in await p.queues.list()] == [("jobs", 0)]
        for n in range(5):
            await p.queues.send(name="jobs", message={"n": n, "text": f"job {n}"})
        assert [(q.name, q.size) for q in await c.queues.list()] == [("jobs", 5)]
        # Received in the order sent, each completed by its receive.
        for n in range(5):
            got = await c.queues.receive(name="jobs", wait=False)
            assert got == {"n": n, "text": f"job {n}"}, got
        assert await c.queues.receive(name="jobs", wait=False) is None
        assert [(q.name, q.size) for q in await c.queues.list()] == [("jobs", 0)]

        # A waiting receive is woken by a send made after it started.
        waiting = asyncio.create_task(c.queues.receive(name="jobs", wait=True))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the receive did not wait"
        await p.queues.send(name="jobs", message={"late": True})
        assert await asyncio.wait_for(waiting, TIMEOUT) == {"late": True}

        # `create` (the SDK's default) makes a queue; without it a missing queue is an error.
        await p.queues.send(name="other", message={"x": 1})
        try:
            await p.queues.send(name="missing", message={}, create=False)
            raise SystemExit("sending to a missing queue without create succeeded")
        except RoomException as e:
            assert e.code == 1003, e.code
        try:
            await c.queues.receive(name="missing", create=False, wait=False)
            raise SystemExit("receiving from a missing queue without create succeeded")
        except RoomException as e:
            assert e.code == 1003, e.code

        # drain empties a queue and keeps it; close removes it.
        for n in range(3):
            await p.queues.send(name="other", message={"n": n})
        await p.queues.drain(name="other")
        sizes = {q.name: q.size for q in await p.queues.list()}
        assert sizes == {"jobs": 0, "other": 0}, sizes
        await p.queues.close(name="other")
        await p.queues.close(name="jobs")
        assert await p.queues.list() == []
        try:
            await p.queues.drain(name="jobs")
            raise SystemExit("draining a closed queue succeeded")
        except RoomException as e:
            assert e.code == 1003, e.code
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
