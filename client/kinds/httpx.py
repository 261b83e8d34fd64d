"""httpx: an `httpx.Client` per session, its pool expiring idle connections itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client.kinds._shared import REQUEST_TIMEOUT, root_cause
from kalab.kinds import ClientKind, CloseRecord, Driver, RequestRecord, seconds
from kalab.spec import Scalar

if TYPE_CHECKING:
    from kalab.certs import ClientTls
    from kalab.scenario import Request, Session


class Httpx(ClientKind):
    name = "httpx"
    order = 20
    summary = "an httpx.Client (httpcore's pool), which expires idle connections itself"
    advertises = ("closes a pooled connection idle past keepalive_expiry (default 5 s) when "
                  "it next uses the pool (its own FIN, then a new connection); a pooled "
                  "connection the server closed is replaced; retries only failed connects")
    options = {
        "keepalive_expiry": seconds("httpx Limits(keepalive_expiry=...): seconds a pooled "
                                    "connection may stay idle before the client closes it", 5.0),
        "retries": Scalar("integer", "httpx HTTPTransport(retries=N): retries of a connect "
                          "that failed, never of a request that was sent", 0, 0, 10),
    }

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        return _HttpxDriver(session, base_url, tls)

    @classmethod
    def versions(cls) -> dict[str, str]:
        import httpcore
        import httpx

        return {"httpx": httpx.__version__, "httpcore": httpcore.__version__}


class _CoreLog(logging.Handler):
    """httpcore's debug lines (its own trace, as log records), per thread = per session."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.setdefault(threading.get_ident(), []).append(
            f"{record.name.rsplit('.', 1)[-1]}: {record.getMessage()}")

    def take(self) -> list[str]:
        return self.lines.pop(threading.get_ident(), [])


_LOG = _CoreLog()
_installed = threading.Lock()


def _install_log() -> None:
    with _installed:
        logger = logging.getLogger("httpcore")
        if _LOG not in logger.handlers:
            logger.addHandler(_LOG)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False


def _port(stream: Any) -> int | None:
    try:
        sock = stream.get_extra_info("socket")
        return sock.getsockname()[1] if sock is not None else None
    except (AttributeError, OSError):
        return None


class _HttpxDriver(Driver):
    def __init__(self, session: Session, base_url: str, tls: ClientTls | None) -> None:
        import httpx

        super().__init__()
        _install_log()
        self.session, self.base_url = session, base_url
        self.expiry = float(session.keepalive_expiry)
        limits = httpx.Limits(keepalive_expiry=self.expiry)
        # The limits go on the transport: a Client given a transport ignores its own.
        # verify: the run's CA alone, through a context that writes the key log
        transport = httpx.HTTPTransport(limits=limits, retries=session.retries,
                                        verify=tls.context() if tls is not None else True)
        # trust_env=False: the lab's server directly, whatever proxy the environment names
        self.client = httpx.Client(transport=transport, trust_env=False, timeout=httpx.Timeout(
            REQUEST_TIMEOUT[1], connect=REQUEST_TIMEOUT[0]))
        self.pooled_since: float | None = None  # when the last response left a pooled connection

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        import httpx

        events: list[str] = []
        ports: list[int | None] = []

        def trace(name: str, info: dict[str, Any]) -> None:
            events.append(name)
            if name == "connection.connect_tcp.complete":
                ports.append(_port(info.get("return_value")))

        _LOG.take()
        sent = time.time()
        idle = None if self.pooled_since is None else time.monotonic() - self.pooled_since
        record = RequestRecord(request.ref, self.session.name, request.method, request.path,
                               planned_at=planned_at, sent_at=sent, finished_at=sent,
                               client=Httpx.name)
        try:
            response = self.client.request(
                request.method, self.base_url + request.path, headers=request.headers or None,
                content=request.body.encode("latin-1") if request.body is not None else None,
                extensions={"trace": trace})
            record.status = response.status_code
            record.response_connection = response.headers.get("Connection")
            record.response_keep_alive = response.headers.get("Keep-Alive")
            stream = response.extensions.get("network_stream")
            record.local_port = _port(stream) if stream is not None else None
            kept = "close" not in (record.response_connection or "").lower()
            self.pooled_since = time.monotonic() if kept else None
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.error_cause = root_cause(exc)
            self.pooled_since = None
        record.finished_at = time.time()
        if record.local_port is None and ports:
            record.local_port = ports[-1]
        record.new_connection = any(e.startswith("connection.connect_tcp") for e in events)
        # httpcore drops a pooled connection that has expired (the client's own timer) or
        # that the server closed (its socket turned readable), and says only that it
        # closed it; which of the two it was follows from the client's own expiry.
        replaced = record.new_connection and idle is not None
        if replaced and idle >= self.expiry:
            events.append(f"kalab: the pooled connection had been idle {idle:.3f} s, past "
                          f"keepalive_expiry {self.expiry:g} s: the client expired it")
            record.replaced_dropped = False
        elif replaced:
            events.append(f"kalab: the pooled connection had been idle {idle:.3f} s, within "
                          f"keepalive_expiry {self.expiry:g} s: httpcore found it closed")
            record.replaced_dropped = True
        else:
            record.replaced_dropped = False
        record.events = events + _LOG.take()
        return record

    def close(self, explicit: bool) -> None:
        self.client.close()
        self.pooled_since = None
        self.closes.append(CloseRecord(self.session.name, time.time(), explicit))


KIND = Httpx
