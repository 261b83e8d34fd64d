"""urllib3 alone: a `PoolManager` per session, no requests on top."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client.kinds._shared import (
    HTTP_VERSION,
    REQUEST_TIMEOUT,
    RETRIES,
    STALE_CHECK,
    TCP_KEEPALIVE,
    root_cause,
)
from kalab.kinds import ClientKind, CloseRecord, Driver, RequestRecord

if TYPE_CHECKING:
    from kalab.certs import ClientTls
    from kalab.scenario import Request, Session


class Urllib3(ClientKind):
    name = "urllib3"
    order = 10
    summary = "a urllib3.PoolManager (what requests uses, without requests)"
    advertises = ("keeps pooled connections forever, ignores Keep-Alive: timeout=, checks a "
                  "pooled socket before reuse (\"Resetting dropped connection\"), retries only "
                  "idempotent methods")
    options = {
        "retries": RETRIES,
        "http_version": HTTP_VERSION,
        "stale_check": STALE_CHECK,
        "tcp_keepalive": TCP_KEEPALIVE,
    }

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        return _PoolDriver(session, base_url, tls)

    @classmethod
    def versions(cls) -> dict[str, str]:
        import urllib3

        return {"urllib3": urllib3.__version__}


class _PoolDriver(Driver):
    def __init__(self, session: Session, base_url: str, tls: ClientTls | None) -> None:
        import urllib3

        from client.kinds import _urllib3

        super().__init__()
        self.session, self.base_url = session, base_url
        kwargs: dict[str, Any] = {}
        options = _urllib3.socket_options(session)
        if options is not None:
            kwargs["socket_options"] = options  # urllib3 sets them on each socket
        if tls is not None:
            kwargs["ssl_context"] = tls.context()  # the run's CA alone; the key log
        self.pool = urllib3.PoolManager(**kwargs)
        self.pool.pool_classes_by_scheme = {**self.pool.pool_classes_by_scheme,
                                            **_urllib3.pool_classes(session)}

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        import urllib3
        from urllib3.util.retry import Retry

        from client.kinds import _urllib3

        _urllib3.POOL_LOG.take()
        sent = time.time()
        record = RequestRecord(request.ref, self.session.name, request.method, request.path,
                               planned_at=planned_at, sent_at=sent, finished_at=sent,
                               client=Urllib3.name)
        # Retry(total=N) retries only idempotent methods, as RFC 9110 section 9.2.2 asks;
        # without it, none at all (urllib3's own default would retry 3 times).
        retries = Retry(total=self.session.retries, backoff_factor=0, redirect=False) \
            if self.session.retries else False
        try:
            response = self.pool.request(
                request.method, self.base_url + request.path, headers=request.headers or None,
                body=request.body.encode("latin-1") if request.body is not None else None,
                retries=retries, redirect=False, preload_content=False,
                timeout=urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1]))
            # before the body is read and the connection goes back to the pool
            record.local_port = _urllib3.local_port(getattr(response, "connection", None)
                                                    or getattr(response, "_connection", None))
            response.read()
            response.release_conn()
            record.status = response.status
            record.response_connection = response.headers.get("Connection")
            record.response_keep_alive = response.headers.get("Keep-Alive")
        except urllib3.exceptions.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.error_cause = root_cause(exc)
        record.finished_at = time.time()
        record.events = _urllib3.POOL_LOG.take()
        record.new_connection, record.replaced_dropped = _urllib3.beliefs(record.events)
        return record

    def close(self, explicit: bool) -> None:
        self.pool.clear()
        self.closes.append(CloseRecord(self.session.name, time.time(), explicit))


KIND = Urllib3
