"""One stock MeshAgent SDK client hosts a toolkit; another calls it, plainly and streamed both
ways, through roomd; a call pending when its host leaves fails at once.

    python room_tools.py BASE_URL ROOM TOKEN_HOST TOKEN_CALLER

Prints "ok".
"""

import asyncio
import sys
import time
from typing import AsyncIterable

from meshagent.api import RoomException
from meshagent.api.messaging import JsonContent, TextContent
from meshagent.api.room_server_client import ToolContentSpec
from meshagent.tools import ContentTool, Toolkit
from meshagent.tools.hosting import start_hosted_toolkit
from meshagent.tools.tool import tool

from roomlib import TIMEOUT, client


@tool(name="add", description="adds two numbers")
async def add(a: int, b: int) -> dict:
    return {"sum": a + b}


class Shout(ContentTool):
    """Streams each text chunk of its input back in capitals, then a count."""

    def __init__(self) -> None:
        super().__init__(
            name="shout",
            input_spec=ToolContentSpec(types=["text"], stream=True),
            output_spec=ToolContentSpec(types=["text", "json"], stream=True),
        )

    async def execute(self, *, context, input):
        async def out() -> AsyncIterable:
            n = 0
            async for chunk in input:
                n += 1
                yield TextContent(text=chunk.text.upper())
            yield JsonContent(json={"count": n})

        return out()


class Hang(ContentTool):
    """Never answers, until its host goes."""

    def __init__(self, started: asyncio.Event) -> None:
        super().__init__(
            name="hang",
            input_spec=ToolContentSpec(types=["json"]),
            output_spec=ToolContentSpec(types=["json"]),
        )
        self.started = started

    async def execute(self, *, context, input):
        self.started.set()
        await asyncio.Event().wait()


async def main() -> None:
    base, room, token_host, token_caller = sys.argv[1:5]
    started = asyncio.Event()
    async with client(base, room, token_caller) as caller:
        host = client(base, room, token_host)
        await host.__aenter__()
        kit = Toolkit(name="calc", tools=[add, Shout(), Hang(started)], public=True)
        hosted = await start_hosted_toolkit(room=host, toolkit=kit)
        del hosted

        listed = await caller.agents.list_toolkits()
        calc = next(t for t in listed if t.name == "calc")
        assert calc.participant_id == host.local_participant.id, calc.participant_id
        assert sorted(t.name for t in calc.tools) == ["add", "hang", "shout"]

        result = await caller.agents.invoke_tool(toolkit="calc", tool="add", input={"a": 2, "b": 40})
        assert isinstance(result, JsonContent) and result.json == {"sum": 42}, result

        async def words():
            for w in ["one", "two", "three"]:
                yield TextContent(text=w)

        stream = await caller.agents.invoke_tool(toolkit="calc", tool="shout", input=words())
        got = []
        async for chunk in stream:
            got.append(chunk)
        texts = [c.text for c in got if isinstance(c, TextContent)]
        assert texts == ["ONE", "TWO", "THREE"], got
        assert any(isinstance(c, JsonContent) and c.json == {"count": 3} for c in got), got

        try:
            await caller.agents.invoke_tool(toolkit="nope", tool="x", input={})
            raise SystemExit("a call to no toolkit succeeded")
        except RoomException as e:
            assert e.code == 1003, e.code

        pending = asyncio.create_task(
            caller.agents.invoke_tool(toolkit="calc", tool="hang", input={})
        )
        await asyncio.wait_for(started.wait(), TIMEOUT)
        left = time.monotonic()
        await host.__aexit__(None, None, None)
        try:
            await asyncio.wait_for(pending, TIMEOUT)
            raise SystemExit("a call to a host that left succeeded")
        except RoomException as e:
            elapsed = time.monotonic() - left
            assert elapsed < 5, f"the pending call failed only after {elapsed:.1f} s"
            assert "left" in str(e), str(e)
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
