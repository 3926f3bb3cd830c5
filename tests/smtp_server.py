"""A real SMTP server on loopback for the tests (aiosmtpd), with scriptable replies.

    def test_x(smtp_server):
        smtp_server.fail_next("451 4.3.0 Try again later")       # at RCPT TO by default
        smtp_server.fail_next("554 5.6.0 Message refused", at="data")
        smtp_server.disconnect_after_data_next()                   # read the data, then hang up
        smtp_server.drop_connections()                             # close every open session now
        ... smtp_server.messages, smtp_server.connections, smtp_server.noops

Scripted replies are used up in order, one per transaction that reaches the
command they are for.  No sleeps: the server thread is ready when ``start()``
returns, and ``drop_connections()`` returns once the sessions are closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
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
        self._server.messages.append(ReceivedMessage(envelope.mail_from or "", tuple(envelope.rcpt_tos), content))
        return "250 OK: queued"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        self._server.noops += 1
        return "250 OK"


_DISCONNECT = "<disconnect>"


class _LoopbackController(Controller):
    """A Controller that binds a free port (port 0) and counts the sessions it serves."""

    def __init__(self, server: LoopbackSMTPServer, **kwargs: Any):
        super().__init__(_Handler(server), hostname="127.0.0.1", port=0, **kwargs)
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

    def __init__(self, **smtp_options: Any) -> None:
        """``smtp_options`` go to aiosmtpd's SMTP class (such as ``authenticator``)."""
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        self.noops = 0
        self._sessions: list[SMTP] = []
        self._script: deque[tuple[Command, str]] = deque()
        self._lock = threading.Lock()
        self._controller = _LoopbackController(self, **smtp_options)

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> None:
        self._controller.start()
        # The controller's own start-up probe was one session: count only the clients'.
        self.connections = 0
        self._sessions.clear()

    def stop(self) -> None:
        self._controller.stop()

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


@pytest.fixture
def smtp_server():
    server = LoopbackSMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
