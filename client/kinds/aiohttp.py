"""aiohttp: a `ClientSession` with a `TCPConnector` per session, on an event loop that
runs all the time, as in an async program (its idle timer fires while the session
sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from client.kinds._shared import REQUEST_TIMEOUT, root_cause
from kalab.kinds import ClientKind, CloseRecord, Driver, RequestRecord, seconds

if TYPE_CHECKING:
    from kalab.certs import ClientTls
    from kalab.scenario import Request, Session

T = TypeVar("T")


class Aiohttp(ClientKind):
    name = "aiohttp"
    order = 30
    summary = "an aiohttp.ClientSession and TCPConnector, on a running event loop"
    advertises = ("closes a pooled connection idle past keepalive_timeout (default 15 s) on "
                  "its own timer (its FIN, while the program sleeps); no retries")
    options = {
        "keepalive_timeout": seconds("aiohttp TCPConnector(keepalive_timeout=...): seconds a "
                                     "pooled connection may stay idle before the client "
                                     "closes it", 15.0, minimum=0.001),
    }
    # Its trace says when it opens a connection or reuses one; nothing says that a pooled
    # connection went away (the server's FIN, its own timer) before a request.
    tells_replaced_dropped = False

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        return _AiohttpDriver(session, base_url, tls)

    @classmethod
    def versions(cls) -> dict[str, str]:
        import aiohttp

        return {"aiohttp": aiohttp.__version__}


class _AiohttpDriver(Driver):
    def __init__(self, session: Session, base_url: str, tls: ClientTls | None) -> None:
        super().__init__()
        import asyncio  # here: the other kinds' sessions do without its import

        self.session, self.base_url, self.tls = session, base_url, tls
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=f"aiohttp-{session.name}")
        self.thread.start()
        self.events: list[str] = []
        self.ports: list[int | None] = []
        self.last_port: int | None = None
        self.client = self._call(self._client())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _client(self) -> Any:
        import aiohttp

        trace = aiohttp.TraceConfig()
        for name in ("connection_create_start", "connection_create_end",
                     "connection_reuseconn", "connection_queued_start", "request_start",
                     "request_end", "request_exception"):
            getattr(trace, f"on_{name}").append(self._note(name))
        ports = self.ports

        class Connector(aiohttp.TCPConnector):
            async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
                # aiohttp's trace gives no socket: the new connection's port, from here
                protocol = await super()._create_connection(*args, **kwargs)
                transport = getattr(protocol, "transport", None)
                name = transport.get_extra_info("sockname") if transport else None
                ports.append(name[1] if name else None)
                return protocol

        # ssl: the run's CA alone, through a context that writes the key log
        connector = Connector(keepalive_timeout=self.session.keepalive_timeout,
                              ssl=self.tls.context() if self.tls is not None else True)
        return aiohttp.ClientSession(
            connector=connector, trace_configs=[trace], auto_decompress=False,
            timeout=aiohttp.ClientTimeout(connect=REQUEST_TIMEOUT[0],
                                          sock_read=REQUEST_TIMEOUT[1]))

    def _note(self, name: str) -> Callable[..., Coroutine[Any, Any, None]]:
        async def note(session: Any, context: Any, params: Any) -> None:
            self.events.append(name)
        return note

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        self.events = []
        self.ports.clear()
        sent = time.time()
        record = RequestRecord(request.ref, self.session.name, request.method, request.path,
                               planned_at=planned_at, sent_at=sent, finished_at=sent,
                               client=Aiohttp.name)
        try:
            self._call(self._send(request, record))
        except Exception as exc:  # noqa: BLE001 - whatever aiohttp raised is the record's
            record.error = f"{type(exc).__name__}: {exc}"
            record.error_cause = root_cause(exc)
        record.finished_at = time.time()
        record.events = list(self.events)
        if "connection_create_start" in record.events:
            record.new_connection = True
        elif "connection_reuseconn" in record.events:
            record.new_connection = False
        if record.local_port is None and self.ports:
            record.local_port = self.ports[-1]
        if record.local_port is None and record.new_connection is False:
            # A small body is read with the headers and the connection released before it
            # could be seen; one session's requests go one at a time, so the connection it
            # reused is the one it last used.
            record.local_port = self.last_port
        self.last_port = record.local_port
        return record

    async def _send(self, request: Request, record: RequestRecord) -> None:
        async with self.client.request(
                request.method, self.base_url + request.path, headers=request.headers or None,
                data=request.body.encode("latin-1") if request.body is not None else None,
                allow_redirects=False) as response:
            transport = getattr(response.connection, "transport", None)
            if transport is not None:  # before the body is read and the connection released
                record.local_port = (transport.get_extra_info("sockname") or (None, None))[1]
            await response.read()
            record.status = response.status
            record.response_connection = response.headers.get("Connection")
            record.response_keep_alive = response.headers.get("Keep-Alive")

    def close(self, explicit: bool) -> None:
        if self.loop.is_closed():
            return
        self._call(self.client.close())
        self.closes.append(CloseRecord(self.session.name, time.time(), explicit))
        if explicit:  # a close step: the session goes on with a new pool, as a program would
            self.client = self._call(self._client())
        else:  # the session's end: its loop goes too
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


KIND = Aiohttp
