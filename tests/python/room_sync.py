"""Two stock MeshAgent SDK clients share a MeshDocument through roomd's room protocol.

    python room_sync.py BASE_URL ROOM PATH TOKEN_A TOKEN_B EDITS EXPECT_EXTRA

BASE_URL is ws://HOST:PORT (what MESHAGENT_ROOM_URL would hold). Each client opens PATH with
`room.sync.open`, appends EDITS paragraphs, and waits until it sees every paragraph of both,
plus EXPECT_EXTRA more that another client (a y-websocket editor) wrote; then both close. Prints
the paragraph texts, in document order, as JSON on one line, then what `sync.describe` says of
the document on another.
"""

import asyncio
import json
import sys

from roomlib import client, until


def texts(doc) -> list[str]:
    return [c.get_attribute("text") for c in doc.root.get_children()]


async def main() -> None:
    base, room, path, token_a, token_b = sys.argv[1:6]
    edits, extra = int(sys.argv[6]), int(sys.argv[7])
    async with client(base, room, token_a) as a, client(base, room, token_b) as b:
        assert a.local_participant.get_attribute("name") == "alice", a.local_participant.attributes
        assert b.local_participant.get_attribute("name") == "bob"
        assert a.local_participant.id != b.local_participant.id
        da = await a.sync.open(path=path)
        db = await b.sync.open(path=path)
        for i in range(edits):
            da.root.append_child("paragraph", {"text": f"alice {i}"})
            db.root.append_child("paragraph", {"text": f"bob {i}"})
        want = 2 * edits + extra
        await until(lambda: len(texts(da)) == want, f"alice to see {want} paragraphs")
        await until(lambda: len(texts(db)) == want, f"bob to see {want} paragraphs")
        await until(lambda: texts(da) == texts(db), "alice and bob to agree")
        final = texts(da)
        await a.sync.close(path=path)
        await b.sync.close(path=path)
        described = await b.sync.describe(path=path)
    print(json.dumps(final))
    print(json.dumps(described))


if __name__ == "__main__":
    asyncio.run(main())
