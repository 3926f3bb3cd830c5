"""A real SMTP server on loopback for the tests (aiosmtpd), with scriptable replies.

    def test_x(smtp_server):
        smtp_server.fail_next("451 4.3.0 Try again later")       # at RCPT TO by default
        smtp_server.fail_next("554 5.6.0 Message refused", at="data")
        smtp_server.disconnect_after_data_next()                   # read the data, then hang up
        smtp_server.drop_connections()                             # close every open session now
        smtp_server.after_reply = hook     # hook(index, message), run once the 250 has been written
        ... smtp_server.messages, smtp_server.connections, smtp_server.noops, smtp_server.open_sessions()
        ... smtp_server.message_ids()      # the Message-ID of every message received, in order

``LoopbackSMTPServer(port=...)`` listens on a given port: stop a server and
start another on its port to be "down", then "back".

Scripted replies are used up in order, one per transaction that reaches the
command they are for.  No sleeps: the server thread is ready when ``start()``
returns, and ``drop_connections()`` returns once the sessions are closed.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Command = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMessage:
    sender: str
    recipients: tuple[str, ...]
    data: bytes

    @property
    def message_id(self) -> str:
        """The Message-ID header, without its angle brackets ("" if there is none)."""
        return message_id_of(self.data)


class _Handler:
    def __init__(self, server: LoopbackSMTPServer):
        self._server = server

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._server._take_scripted("mail")
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._server._take_scripted("rcpt")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._server._take_scripted("data")
        if reply == _DISCONNECT:
            assert server.transport is not None
            server.transport.close()  # hang up without a reply: the client cannot know the outcome
            return "421 closing"  # never reaches the client
        if reply is not None:
            return reply
        content = envelope.original_content if envelope.original_content is not None else b""
        message = ReceivedMessage(envelope.mail_from or "", tuple(envelope.rcpt_tos), content)
        with self._server._lock:
            self._server.messages.append(message)
            index = len(self._server.messages) - 1
        hook = self._server.after_reply
        if hook is not None:
            # Runs on the next turn of the loop: smtp_DATA writes the 250 to the
            # socket in this turn, right after this handler returns.
            asyncio.get_running_loop().call_soon(hook, index, message)
        return "250 OK: queued"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        self._server.noops += 1
        return "250 OK"


class _PipeliningHandler(_Handler):
    """The handler of a server announcing PIPELINING (RFC 2920), as Postfix does."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


_DISCONNECT = "<disconnect>"


class _LoopbackController(Controller):
    """A Controller that binds a free port (port 0) and counts the sessions it serves."""

    def __init__(self, server: LoopbackSMTPServer, port: int = 0, **kwargs: Any):
        handler = _PipeliningHandler(server) if server.pipelining else _Handler(server)
        super().__init__(handler, hostname="127.0.0.1", port=port, **kwargs)
        self._owner = server

    def factory(self) -> SMTP:
        session = super().factory()
        self._owner._sessions.append(session)
        self._owner.connections += 1
        return session

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class LoopbackSMTPServer:
    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, pipelining: bool = False, **smtp_options: Any) -> None:
        """``port`` 0 picks a free one; ``pipelining`` announces PIPELINING after EHLO; ``smtp_options``
        go to aiosmtpd's SMTP class (such as ``authenticator``)."""
        self.pipelining = pipelining
        self.messages: list[ReceivedMessage] = []
        #: Called as ``after_reply(index, message)`` on the server's loop once the
        #: 250 for ``messages[index]`` has been written (fault tests kill the client there).
        self.after_reply: Callable[[int, ReceivedMessage], None] | None = None
        self.connections = 0
        self.noops = 0
        self._sessions: list[SMTP] = []
        self._script: deque[tuple[Command, str]] = deque()
        self._lock = threading.Lock()
        self._controller = _LoopbackController(self, port, **smtp_options)

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> None:
        self._controller.start()
        # The controller's own start-up probe was one session: count only the clients'.
        self.connections = 0
        self._sessions.clear()

    def stop(self) -> None:
        """Stop listening (a second call does nothing: a test may stop it to be "down")."""
        if self._controller._thread is not None:
            self._controller.stop()

    def open_sessions(self) -> int:
        """Client sessions still connected (a killed client's is closed once the kernel says so)."""
        return sum(1 for session in list(self._sessions) if session.transport is not None)

    def message_ids(self) -> list[str]:
        """The Message-ID header of every message received, in order of arrival."""
        with self._lock:
            messages = list(self.messages)
        return [message.message_id for message in messages]

    # -- scripting ------------------------------------------------------------------------

    def fail_next(self, reply: str, *, at: Command = "rcpt") -> None:
        """The next transaction gets ``reply`` (such as "451 4.3.0 Try again later") at ``at``."""
        if not reply[:3].isdigit() or reply[0] not in "45":
            raise ValueError(f"{reply!r} is not a 4xx or 5xx reply")
        with self._lock:
            self._script.append((at, reply))

    def disconnect_after_data_next(self) -> None:
        """The next message is read whole, then the connection is closed with no reply."""
        with self._lock:
            self._script.append(("data", _DISCONNECT))

    def drop_connections(self) -> None:
        """Close every open session now, as a server does with idle clients."""

        async def close_all() -> None:
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(timeout=5)

    def _take_scripted(self, command: Command) -> str | None:
        with self._lock:
            if self._script and self._script[0][0] == command:
                return self._script.popleft()[1]
        return None


_MESSAGE_ID_RE = re.compile(rb"^Message-ID:[ \t]*<?([^>\r\n]*)>?", re.IGNORECASE | re.MULTILINE)


def message_id_of(data: bytes) -> str:
    """The Message-ID of a raw message (read from its header block only: fast for thousands)."""
    headers = data.split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID_RE.search(headers)
    return match.group(1).decode("ascii", "replace").strip() if match else ""


@pytest.fixture
def smtp_server():
    server = LoopbackSMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
