"""The worker of clients/rust/examples/worker.rs, written with the stock MeshAgent Python SDK
(meshagent-api 0.56): it takes jobs from a queue, posts each result to a thread, and loses
nothing when it is killed in the middle of a job.

    MESHAGENT_ROOM_URL=ws://127.0.0.1:8787 MESHAGENT_ROOM=demo MESHAGENT_TOKEN=... \\
        python queue_worker.py jobs results.thread [--lease-ms 30000]

It calls roomd's queue and thread tools through the SDK's `room.invoke`: a `receive` with
`lease_ms` (roomd's lease extension; the SDK's `QueuesClient.receive` takes an item for good)
answers the job with a receipt, the result is posted under the job's id (`job-<queue>-<seq>`,
so a job redone after a crash is posted once), and `ack` completes the job. A job that is not
acknowledged before its lease ends is given out again.
"""

import argparse
import asyncio
import json

from meshagent.api import ErrorCode, JsonContent, RoomClient, RoomException


def result_of(message) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return f"not a job: {json.dumps(message)}"
    text = message["text"]
    return f"{len(text.split())} words, {len(text)} characters"


async def work(message) -> str:
    if isinstance(message, dict) and isinstance(message.get("work_ms"), int):
        # The job's own work: it takes this long.
        await asyncio.sleep(min(message["work_ms"], 600_000) / 1000)
    return result_of(message)


async def call(room: RoomClient, toolkit: str, tool: str, **arguments):
    return await room.invoke(toolkit=toolkit, tool=tool, input=arguments)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("queue")
    parser.add_argument("thread")
    parser.add_argument("--lease-ms", type=int, default=30_000)
    args = parser.parse_args()

    async with RoomClient() as room:
        try:
            await call(room, "threads", "create", path=args.thread)
        except RoomException as e:
            if e.code != ErrorCode.ALREADY_EXISTS:
                raise
        print(f"ready: {args.queue} -> {args.thread}", flush=True)
        while True:
            job = await call(
                room,
                "queues",
                "receive",
                name=args.queue,
                create=True,
                wait=True,
                lease_ms=args.lease_ms,
            )
            if not isinstance(job, JsonContent):
                continue  # the wait ended with the queue empty
            job = job.json
            label = f"{job['queue']}#{job['seq']}"
            print(f"working {label} attempt {job['attempts']}", flush=True)
            result = await work(job["message"])
            try:
                await call(
                    room,
                    "threads",
                    "post",
                    path=args.thread,
                    id=f"job-{job['queue']}-{job['seq']}",
                    text=result,
                )
                done = f"done {label}"
            except RoomException as e:
                if e.code != ErrorCode.ALREADY_EXISTS:
                    raise
                done = f"done {label} (its result was posted before)"
            await call(room, "queues", "ack", receipt=job["receipt"])
            print(done, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
