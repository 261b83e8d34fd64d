"""requests: a `requests.Session` per scenario session (the lab's first client)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from client.kinds._shared import (
    HTTP_VERSION,
    REQUEST_TIMEOUT,
    RETRIES,
    STALE_CHECK,
    TCP_KEEPALIVE,
    root_cause,
)
from kalab.kinds import ClientKind, CloseRecord, Driver, Fail, RequestRecord
from kalab.spec import Node, Scalar

if TYPE_CHECKING:
    import requests as requests_lib

    from kalab.certs import ClientTls
    from kalab.scenario import Request, Session


class Requests(ClientKind):
    name = "requests"
    order = 0  # the default
    summary = "a requests.Session (urllib3's pool underneath)"
    advertises = ("keeps pooled connections until the session closes, ignores Keep-Alive: "
                  "timeout=, checks a pooled socket before reuse (\"Resetting dropped "
                  "connection\"), retries only idempotent methods")
    options = {
        "session": Scalar("boolean", "false: no Session; each request is sent as "
                          "requests.get() sends it, on a Session of its own closed right after "
                          "it: a new connection per request, closed by the client", True),
        "retries": RETRIES,
        "http_version": HTTP_VERSION,
        "stale_check": STALE_CHECK,
        "tcp_keepalive": TCP_KEEPALIVE,
    }

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        """What means nothing with ``session: false`` is refused, not silently ignored:
        there is no pool to close, and no connection is ever reused."""
        if options.get("session", True):
            return
        for i, step in enumerate(fields["steps"].value):
            if step.value == "close" or (isinstance(step.value, dict) and "close" in step.value):
                raise fail(step, f"{where}.steps[{i}]", "nothing to close with session: "
                           "false (each request's Session is closed right after it)")
        if "stale_check" in fields:
            raise fail(fields["stale_check"], f"{where}.stale_check", "means nothing with "
                       "session: false (no connection is ever reused)")

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        return _RequestsDriver(session, base_url, tls)

    @classmethod
    def versions(cls) -> dict[str, str]:
        import requests
        import urllib3

        return {"requests": requests.__version__, "urllib3": urllib3.__version__}


def make_session(session: Session, tls: ClientTls | None = None) -> requests_lib.Session:
    """A requests.Session as the scenario's session asks: its retries, its HTTP version,
    its stale check, its TCP keep-alive; with ``tls``, HTTPS trusting the run's CA alone
    (``verify``), through an SSL context that writes the key log."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    from client.kinds import _urllib3

    class ScenarioAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            options = _urllib3.socket_options(session)
            if options is not None:
                kwargs["socket_options"] = options  # urllib3 sets them on each socket
            if tls is not None:
                kwargs["ssl_context"] = tls.context()
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                **self.poolmanager.pool_classes_by_scheme, **_urllib3.pool_classes(session)}

    http = requests.Session()
    # The lab's server, directly: proxy and .netrc settings in the environment of whoever
    # runs kalab are not the scenario's (and reading them cost 0.4 ms of every send).
    http.trust_env = False
    if tls is not None and tls.ca is not None:
        http.verify = str(tls.ca)  # the run's CA alone, not certifi's bundle
    if session.retries or _urllib3.pool_classes(session) \
            or session.tcp_keepalive is not None or tls is not None:
        # Retry(total=N) retries only idempotent methods, as RFC 9110 section 9.2.2 asks.
        adapter = ScenarioAdapter(max_retries=Retry(
            total=session.retries, backoff_factor=0) if session.retries else 0)
        http.mount("https://" if tls is not None else "http://", adapter)
    return http


class _RequestsDriver(Driver):
    def __init__(self, session: Session, base_url: str, tls: ClientTls | None) -> None:
        super().__init__()
        self.session, self.base_url, self.tls = session, base_url, tls
        # Without a Session (``session: false``) each request makes its own.
        self.http = make_session(session, tls) if session.use_session else None

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        if self.http is None:
            # as requests.get() sends it: on a Session of its own, closed once the
            # response is read, so its connection is new and the client closes it at once
            with make_session(self.session, self.tls) as http:
                record = self._send(http, request, planned_at)
            self.closes.append(CloseRecord(self.session.name, time.time(), False))
            return record
        return self._send(self.http, request, planned_at)

    def _send(self, http: requests_lib.Session, request: Request,
              planned_at: float) -> RequestRecord:
        import requests

        from client.kinds import _urllib3

        seen_port: list[int | None] = [None]

        def remember_port(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            raw = response.raw  # before the body is read and the socket pooled
            seen_port[0] = _urllib3.local_port(getattr(raw, "connection", None)
                                               or getattr(raw, "_connection", None))

        _urllib3.POOL_LOG.take()
        sent = time.time()
        record = RequestRecord(request.ref, self.session.name, request.method, request.path,
                               planned_at=planned_at, sent_at=sent, finished_at=sent,
                               client=Requests.name)
        try:
            response = http.request(request.method, self.base_url + request.path,
                                    headers=request.headers or None, data=request.body,
                                    timeout=REQUEST_TIMEOUT, allow_redirects=False,
                                    hooks={"response": remember_port})
            record.status = response.status_code
            record.response_connection = response.headers.get("Connection")
            record.response_keep_alive = response.headers.get("Keep-Alive")
        except requests.RequestException as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.error_cause = root_cause(exc)
        record.finished_at = time.time()
        record.local_port = seen_port[0]
        record.events = _urllib3.POOL_LOG.take()
        record.new_connection, record.replaced_dropped = _urllib3.beliefs(record.events)
        return record

    def close(self, explicit: bool) -> None:
        if self.http is not None:
            self.http.close()
            self.closes.append(CloseRecord(self.session.name, time.time(), explicit))


KIND = Requests
