"""Mail delivery adapters behind one Protocol: SMTP, a Maildir, the console.

Every failure is a ``DeliveryError`` that says whether retrying can help:

* transient (``permanent=False``): 4xx replies, timeouts, refused or reset
  connections, a disconnect at any point (also after DATA: the message may or
  may not have arrived; the stable Message-ID lets the receiver drop a copy),
  and problems on our side that are not the recipient's fault (a 5xx reply to
  our MAIL FROM, to EHLO, to AUTH);
* permanent (``permanent=True``): a 5xx reply to the recipient (RCPT TO) or
  to the message (DATA).  The relay marks the address bounced.

Nothing here logs a message body or a link token: only hosts, codes and the
server's reply text.
"""

from __future__ import annotations

import logging
import mailbox
import re
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

#: A connection unused for longer than this is checked with NOOP before reuse.
IDLE_CHECK_AFTER_SECONDS = 30.0


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool, smtp_code: int | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.smtp_code = smtp_code

    def __repr__(self) -> str:
        return f"DeliveryError({str(self)!r}, permanent={self.permanent}, smtp_code={self.smtp_code})"


class Mailer(Protocol):
    def send(self, sender: str, recipient: str, message: bytes) -> None: ...

    def close(self) -> None: ...


def _refuse_line_breaks(**values: str) -> None:
    for name, value in values.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"{name} holds a line break")


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:300]


class SMTPMailer:
    """One persistent SMTP connection, reused across sends and reopened lazily.

    After a failed transaction smtplib has already sent RSET (or closed the
    connection on 421), so the connection stays usable; to be safe it is
    checked with NOOP before its next use, as is one left idle for longer than
    ``idle_check_after`` seconds.  Not thread-safe: one per worker process.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: str = "none",
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        idle_check_after: float = IDLE_CHECK_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"tls must be none, starttls or ssl, not {tls!r}")
        self.host = host
        self.port = port
        self.tls = tls
        self._user = user
        self._password = password
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._idle_check_after = idle_check_after
        self._clock = clock
        self._connection: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._check_before_use = False
        #: How many connections this mailer has opened (for metrics and tests).
        self.connections_opened = 0

    # -- public ---------------------------------------------------------------------------

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        _refuse_line_breaks(sender=sender, recipient=recipient)
        connection = self._usable_connection()
        try:
            if connection.has_extn("pipelining"):
                _send_pipelined(connection, sender, recipient, message)
            else:
                connection.sendmail(sender, [recipient], message)
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = error.recipients.get(recipient, (None, b""))
            self._after_failure(code)
            raise DeliveryError(
                f"recipient refused: {code} {_reply_text(reply)}", permanent=_is_5xx(code), smtp_code=code
            ) from None
        except smtplib.SMTPDataError as error:
            self._after_failure(error.smtp_code)
            raise DeliveryError(
                f"message refused: {error.smtp_code} {_reply_text(error.smtp_error)}",
                permanent=_is_5xx(error.smtp_code),
                smtp_code=error.smtp_code,
            ) from None
        except smtplib.SMTPSenderRefused as error:
            # Our own MAIL FROM was refused: not the recipient's fault, so not a bounce.
            self._after_failure(error.smtp_code)
            raise DeliveryError(
                f"sender refused: {error.smtp_code} {_reply_text(error.smtp_error)}",
                permanent=False,
                smtp_code=error.smtp_code,
            ) from None
        except smtplib.SMTPResponseException as error:
            self._after_failure(error.smtp_code)
            raise DeliveryError(
                f"SMTP error: {error.smtp_code} {_reply_text(error.smtp_error)}",
                permanent=False,
                smtp_code=error.smtp_code,
            ) from None
        except (smtplib.SMTPException, OSError) as error:
            # Disconnects (also during or after DATA), timeouts, resets.
            self._drop_connection()
            raise DeliveryError(f"SMTP connection failed: {_describe(error)}", permanent=False) from None
        self._last_used = self._clock()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            connection.close()

    # -- the connection -------------------------------------------------------------------

    def _usable_connection(self) -> smtplib.SMTP:
        connection = self._connection
        if connection is not None and (
            self._check_before_use or self._clock() - self._last_used > self._idle_check_after
        ):
            if not self._answers_noop(connection):
                log.info("SMTP connection to %s:%s went stale; reconnecting", self.host, self.port)
                self._drop_connection()
                connection = None
        if connection is None:
            connection = self._connect()
            self._connection = connection
            self._last_used = self._clock()
        self._check_before_use = False
        return connection

    @staticmethod
    def _answers_noop(connection: smtplib.SMTP) -> bool:
        try:
            code, _ = connection.noop()
        except (smtplib.SMTPException, OSError):
            return False
        return code == 250

    def _connect(self) -> smtplib.SMTP:
        connection: smtplib.SMTP | None = None
        try:
            if self.tls == "ssl":
                connection = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self._local_hostname,
                    timeout=self._timeout,
                    context=ssl.create_default_context(),
                )
            else:
                connection = smtplib.SMTP(
                    self.host, self.port, local_hostname=self._local_hostname, timeout=self._timeout
                )
            connection.ehlo()
            if self.tls == "starttls":
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if self._user:
                connection.login(self._user, self._password or "")
        except smtplib.SMTPResponseException as error:
            _close_quietly(connection)
            raise DeliveryError(
                f"SMTP server {self.host}:{self.port} refused the session: {error.smtp_code} "
                f"{_reply_text(error.smtp_error)}",
                permanent=False,
                smtp_code=error.smtp_code,
            ) from None
        except (smtplib.SMTPException, OSError) as error:
            _close_quietly(connection)
            raise DeliveryError(
                f"cannot connect to SMTP server {self.host}:{self.port}: {_describe(error)}", permanent=False
            ) from None
        self.connections_opened += 1
        log.info("SMTP connection to %s:%s opened (tls=%s)", self.host, self.port, self.tls)
        return connection

    def _after_failure(self, code: int | None) -> None:
        """A failed transaction: smtplib sent RSET, or closed the connection on 421."""
        if self._connection is None or self._connection.sock is None or code == 421:
            self._drop_connection()
        else:
            self._check_before_use = True

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        _close_quietly(connection)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _send_pipelined(connection: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
    """One transaction with PIPELINING (RFC 2920): two round trips instead of smtplib's four.

    MAIL, RCPT and DATA go in one write and their three replies are read
    together; then the message.  A failure raises what ``sendmail`` raises,
    after the same clean-up (RSET, or closing on 421), so the caller tells
    them apart as before.
    """
    connection.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n")
    (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = (
        connection.getreply(),
        connection.getreply(),
        connection.getreply(),
    )
    refused = mail_code != 250 or rcpt_code not in (250, 251)
    if refused and data_code == 354:
        # A server that opened DATA without a recipient: end the empty message, then RSET.
        connection.send(b".\r\n")
        connection.getreply()
    if refused or data_code != 354:
        if 421 in (mail_code, rcpt_code, data_code):
            connection.close()
        else:
            _reset(connection)
        if mail_code != 250:
            raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
        if rcpt_code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
        raise smtplib.SMTPDataError(data_code, data_reply)
    data = _LEADING_DOT.sub(b"..", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    connection.send(data + b".\r\n")
    code, reply = connection.getreply()
    if code != 250:
        if code == 421:
            connection.close()
        else:
            _reset(connection)
        raise smtplib.SMTPDataError(code, reply)


def _reset(connection: smtplib.SMTP) -> None:
    """RSET after a failed transaction; a server that hung up is found out at the next use."""
    try:
        connection.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def _is_5xx(code: int | None) -> bool:
    return code is not None and 500 <= code <= 599


def _describe(error: BaseException) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _close_quietly(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        try:
            connection.close()
        except OSError:
            pass


class MaildirMailer:
    """Writes each message into a standard Maildir, as the embedded default and the demo do."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(self.path, create=True)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        _refuse_line_breaks(sender=sender, recipient=recipient)
        try:
            # Files in a Maildir end their lines with LF.
            self._maildir.add(message.replace(b"\r\n", b"\n"))
        except OSError as error:
            raise DeliveryError(
                f"cannot write to the Maildir {self.path}: {_describe(error)}", permanent=False
            ) from None

    def close(self) -> None:
        self._maildir.close()


class ConsoleMailer:
    """Prints one line per message (recipient and subject), for development."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream if stream is not None else sys.stdout

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        _refuse_line_breaks(sender=sender, recipient=recipient)
        headers = BytesHeaderParser(policy=compat32).parsebytes(message)
        subject = str(make_header(decode_header(headers.get("Subject", ""))))
        kind = headers.get("X-PEC-Renewal-Kind", "-")
        stage = headers.get("X-PEC-Renewal-Stage", "-")
        print(f"mail to {recipient} [{kind} {stage}]: {subject}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


def make_mailer(settings: Settings) -> Mailer:
    if settings.mail_backend == "smtp":
        return SMTPMailer(
            settings.smtp_host,
            settings.smtp_port,
            tls=settings.smtp_tls,
            user=settings.smtp_user,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout,
        )
    if settings.mail_backend == "maildir":
        return MaildirMailer(settings.maildir)
    if settings.mail_backend == "console":
        return ConsoleMailer()
    raise ValueError(f"unknown mail backend {settings.mail_backend!r}")
