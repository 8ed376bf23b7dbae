"""A stock MeshAgent SDK client lists the room's toolkits and calls a tool another participant
hosts (here, one the Rust client hosts), printing the answer's JSON.

    python room_call.py BASE_URL ROOM TOKEN TOOLKIT TOOL INPUT_JSON

Prints the toolkit's listed tool names, then the answer, each as a JSON line.
"""

import asyncio
import json
import sys

from meshagent.api.messaging import JsonContent

from roomlib import client


async def main() -> None:
    base, room, token, toolkit, tool, arguments = sys.argv[1:7]
    async with client(base, room, token) as caller:
        listed = await caller.agents.list_toolkits()
        kit = next(t for t in listed if t.name == toolkit)
        print(json.dumps(sorted(t.name for t in kit.tools)))
        result = await caller.agents.invoke_tool(toolkit=toolkit, tool=tool, input=json.loads(arguments))
        assert isinstance(result, JsonContent), result
        print(json.dumps(result.json))


if __name__ == "__main__":
    asyncio.run(main())
