"""A stock MeshAgent SDK client across a server restart: it opens a document and edits it; the
server goes down; it edits offline; when the server is back it reconnects by itself, sends what
it changed and receives what others changed meanwhile.

    python room_reconnect.py BASE_URL ROOM TOKEN PATH

Steps are driven over stdin and stdout: prints "ready" (its first edit is made), reads "down"
(the server is gone), waits until it sees the connection lost, edits, prints "edited", reads "up" (the server is back, and an editor
has added "from the editor"), waits for that paragraph and prints "ok".
"""

import asyncio
import sys

from roomlib import client, until


def texts(doc) -> list:
    return [c.get_attribute("text") for c in doc.root.get_children()]


async def line() -> str:
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


async def main() -> None:
    base, room, token, path = sys.argv[1:5]
    room_client = client(base, room, token)
    disconnected = asyncio.Event()
    room_client.on("disconnected", lambda **_: disconnected.set())
    async with room_client as a:
        doc = await a.sync.open(path=path)
        doc.root.append_child("paragraph", {"text": "online"})
        print("ready", flush=True)
        assert await line() == "down"
        # The SDK counts what it changed before it saw the connection go as sent: the edit is
        # made once it has.
        await asyncio.wait_for(disconnected.wait(), 30)
        doc.root.append_child("paragraph", {"text": "offline"})
        print("edited", flush=True)
        assert await line() == "up"
        await until(lambda: "from the editor" in texts(doc), "the editor's paragraph after reconnecting")
        print("ok", flush=True)
        assert await line() == "done"


if __name__ == "__main__":
    asyncio.run(main())
