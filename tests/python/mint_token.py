"""Mints a participant token with the real MeshAgent Python SDK, as an agent built on it does.

    python mint_token.py API_KEY ROOM NAME

prints the JWT alone.
"""

import sys
from datetime import datetime, timedelta, timezone

from meshagent.api.participant_token import ApiScope, ParticipantToken


def main() -> None:
    api_key, room, name = sys.argv[1:4]
    token = ParticipantToken(name=name)
    token.add_room_grant(room)
    token.add_role_grant("agent")
    token.add_api_grant(ApiScope.agent_default())
    expiration = datetime.now(timezone.utc) + timedelta(hours=1)
    print(token.to_jwt(api_key=api_key, expiration=expiration))


if __name__ == "__main__":
    main()
