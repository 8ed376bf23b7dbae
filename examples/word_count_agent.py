"""The word-count agent of clients/rust/examples/agent.rs, written with the stock MeshAgent
Python SDK (meshagent-api and meshagent-tools 0.56): it follows a document, keeps the
`word-count` block of `<path>.stats` up to date, and hosts the `words` toolkit.

    MESHAGENT_ROOM_URL=ws://127.0.0.1:8787 MESHAGENT_ROOM=demo MESHAGENT_TOKEN=... \\
        python word_count_agent.py notes/plan.doc
"""

import asyncio
import json
import sys

from meshagent.api import RoomClient
from meshagent.api.schema_document import Element
from meshagent.tools import Toolkit
from meshagent.tools.hosting import start_hosted_toolkit
from meshagent.tools.tool import tool


def measure(doc, path: str) -> dict:
    texts, blocks = [], 0

    def walk(element) -> None:
        nonlocal blocks
        for child in element.get_children():
            if isinstance(child, Element):
                blocks += 1
                text = child.get_attribute("text")
                if isinstance(text, str):
                    texts.append(text)
                walk(child)

    walk(doc.root)
    return {
        "path": path,
        "words": sum(len(t.split()) for t in texts),
        "characters": sum(len(t) for t in texts),
        "blocks": blocks,
    }


def publish(derived, stats: dict) -> None:
    text = f"{stats['words']} words in {stats['blocks']} blocks"
    block = next(
        (c for c in derived.root.get_children()
         if isinstance(c, Element) and c.tag_name == "block" and c.get_attribute("kind") == "word-count"),
        None,
    )
    if block is None:
        derived.root.append_child("block", {"kind": "word-count", "text": text, "data": json.dumps(stats)})
    else:
        block.set_attribute("text", text)
        block.set_attribute("data", json.dumps(stats))


async def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "notes/plan.doc"
    async with RoomClient() as room:
        source = await room.sync.open(path=path)
        derived = await room.sync.open(path=path + ".stats")
        latest = measure(source, path)

        @tool(name="count", description="counts the words and characters of a text")
        async def count(text: str) -> dict:
            return {"words": len(text.split()), "characters": len(text)}

        @tool(name="stats", description="the figures of the document the agent follows")
        async def stats() -> dict:
            return latest

        await start_hosted_toolkit(room=room, toolkit=Toolkit(name="words", tools=[count, stats]))

        changed = asyncio.Event()
        for event in ("inserted", "deleted", "updated"):
            source.on(event)(lambda *_: changed.set())
        publish(derived, latest)
        print(f"following {path}: {latest['words']} words", flush=True)
        while True:
            await changed.wait()
            changed.clear()
            now = measure(source, path)
            if now != latest:
                latest = now
                publish(derived, latest)
                print(f"{path}: {latest['words']} words in {latest['blocks']} blocks", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
