"""`sync.create`, `sync.open` with `initial_json`, and `sync.describe` from a stock MeshAgent SDK
client through roomd.

    python room_create.py BASE_URL ROOM TOKEN

Prints "ok".
"""

import asyncio
import sys

from meshagent.api import RoomException

from roomlib import client, until


async def main() -> None:
    base, room, token = sys.argv[1:4]
    async with client(base, room, token) as a:
        made = {"document": {"children": [{"paragraph": {"text": "one"}}]}}
        await a.sync.create(path="made.doc", json=made)
        try:
            await a.sync.create(path="made.doc", json=made)
            raise SystemExit("creating an existing document succeeded")
        except RoomException as e:
            assert e.code == 1004, e.code
        doc = await a.sync.open(path="made.doc")
        await until(lambda: len(doc.root.get_children()) == 1, "the created paragraph")
        assert doc.root.get_children()[0].get_attribute("text") == "one"
        assert await a.sync.describe(path="made.doc") == made

        initial = {"document": {"children": [{"heading": {"text": "title", "level": 1}}]}}
        init = await a.sync.open(path="init.doc", initial_json=initial)
        await until(lambda: len(init.root.get_children()) == 1, "the initial heading")
        heading = init.root.get_children()[0]
        assert heading.tag_name == "heading" and heading.get_attribute("level") == 1
        assert await a.sync.describe(path="init.doc") == initial
        # A document that holds something already ignores initial_json.
        await a.sync.close(path="init.doc")
        again = await a.sync.open(path="init.doc", initial_json={"document": {"children": []}})
        assert len(again.root.get_children()) == 1
        try:
            await a.sync.describe(path="nothing.doc")
            raise SystemExit("describing no document succeeded")
        except RoomException as e:
            assert e.code == 1003, e.code

        # A path ending in `.thread` gets the builtin thread schema, which the SDK reads
        # (its ordered children included) and builds a conversation with; a message names its
        # author, the token's participant.
        thread = await a.sync.open(path="chats/team.thread")
        assert thread.schema.root.tag_name == "thread"
        members = thread.root.append_child("members", {})
        members.append_child("member", {"name": "a"})
        messages = thread.root.append_child("messages", {})
        messages.append_child("message", {"id": "m1", "text": "hello", "author_name": "author"})
        await a.sync.close(path="chats/team.thread")
        described = await a.sync.describe(path="chats/team.thread")
        assert described == {
            "thread": {
                "properties": [
                    {"members": {"items": [{"member": {"name": "a"}}]}},
                    {"messages": {"items": [
                        {"message": {"id": "m1", "text": "hello", "author_name": "author", "attachments": []}}
                    ]}},
                ]
            }
        }, described

        # A message that names another author is refused by the server, and the SDK says so.
        forged = await a.sync.open(path="chats/forged.thread")
        members = forged.root.append_child("members", {})
        messages = forged.root.append_child("messages", {})
        messages.append_child("message", {"id": "f1", "text": "as someone else", "author_name": "someone-else"})
        try:
            await a.sync.close(path="chats/forged.thread")
            raise SystemExit("a forged message was accepted")
        except RoomException as e:
            assert "must name its author, author" in str(e), str(e)
        described = await a.sync.describe(path="chats/forged.thread")
        items = described["thread"]["properties"][1]["messages"]["items"]
        assert all(m["message"].get("author_name") != "someone-else" for m in items), described
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
