"""TLS on one TCP connection: what its records show, and with the client's key log, what they carry.

Theory of operation
-------------------
This module is sans-IO, like `kalab.analyzer`: no sockets, no files, no
clock. One `TlsConnection` stands for one TCP connection. It is fed each
direction's bytes in order (the reassembled stream, exactly what the
analyzer's HTTP parser is fed today) with their capture times, through
``feed(side, data, ts)``, and it answers with the plaintext application data
of that direction, split where the capture times change, ready for the
HTTP/1.x parser. Calls must come in capture order across both directions
(the analyzer's do): the order of the two directions' records is what pairs
a request burst with its response burst.

Records. Each direction's bytes are cut into TLS records (type, version,
length, RFC 8446 section 5.1 / RFC 5246 section 6.2). A header is judged as
soon as its five bytes are in: a type TLS does not have, a major version
other than 3, or a length over `MAX_RECORD` (2^14 + 2048, TLS 1.2's limit
for a protected record and above TLS 1.3's) ends the reading of that
direction. If it was the direction's first record (or that first record was
not a handshake or an alert), the direction is `NOT_TLS`; later, it has
`GAVE_UP`: what was read before stands, nothing after is read. Neither ever
raises: hostile bytes only move these named states. At most one record
(plus one header) is held per direction, so memory is bounded.

Handshake, without keys. The handshake messages of each direction are read
from its plaintext handshake records (and, with keys, from its decrypted
ones) as a stream: a message may span records, and a record may hold
several. Only the messages this module reads are kept whole, up to
`MAX_HANDSHAKE_KEPT` bytes (ClientHello, ServerHello, EncryptedExtensions,
KeyUpdate); the rest (certificates) are skipped byte by byte, never held.
The ClientHello gives the client random (the key log's key), the SNI, the
ALPN protocols offered, the legacy version and supported_versions (GREASE
values left out). The ServerHello gives the cipher suite and the version
chosen: supported_versions when present (TLS 1.3), else its legacy version;
a ServerHello whose random is RFC 8446's HelloRetryRequest value is a
retry, and the next ServerHello is the real one. In TLS 1.2 the ALPN chosen
is in the ServerHello; in TLS 1.3 it is in EncryptedExtensions, which is
encrypted: without keys ``alpn_known`` is False, not a guess.

When the handshake ended. TLS 1.2: each side's ChangeCipherSpec is followed
by its Finished, the first protected record; the handshake ends with the
later of the two. TLS 1.3: it ends with the client's Finished. With keys it
is found in the decrypted handshake; without, the client's first encrypted
record is taken as its Finished (true unless the client sent a certificate),
the server's encrypted records before it as its handshake flight, and
``handshake_done_inferred`` says so.

Alerts and close_notify. Before encryption starts, alerts are plaintext and
read (level, description). After it, TLS 1.2 still shows an alert's record
type but not its content (a close_notify at the end of a TLS 1.2 connection is
a protected record of type 21: tshark says "Encrypted Alert"): without keys,
an `Alert` with ``level`` and ``description`` None. TLS 1.3 hides even the
type (every protected record says application data): without keys an alert
is not seen at all. So
``close_notify`` is `CLOSE_NOTIFY_SEEN` (who and when in
``close_notify_by``/``close_notify_at``), `CLOSE_NOTIFY_NONE` (every record
that could have held one was read, and none did) or `CLOSE_NOTIFY_UNKNOWN`.

Exchanges, inferred. Application-data records are grouped in capture order:
a burst of client records followed by a burst of server records is one
`InferredExchange` (first and last times, record and byte counts per side);
the next client record opens the next one. Server records before any
client record (TLS 1.3 session tickets, when they cannot be read) are
counted in ``unsolicited_server_records``. Which records are application
data is exact when they are decrypted (TLS 1.3's inner content type; a
ticket is handshake), and the outer type otherwise; in TLS 1.3 without keys
an encrypted alert or ticket after the handshake is counted as data. The
pairing itself is always an inference: pipelined requests would be one
exchange. Byte counts are the records' lengths (ciphertext, nonce and tag).

With keys. A `KeyLog` holds NSS key log lines (the ``SSLKEYLOGFILE``
format), by client random. Once both Hellos are read, the keys are derived:
TLS 1.2 from the master secret (``CLIENT_RANDOM``), by the PRF with the
suite's hash (RFC 5246 section 5; an extended master secret is already in
the log); TLS 1.3 from the traffic secrets, by HKDF-Expand-Label (RFC 8446
section 7): the two handshake secrets are needed, and a missing application
secret stops only its direction, at its Finished. The AEAD and the HKDF and
HMAC come from the ``cryptography`` library; nothing here is cipher code.
TLS 1.2 records are protected from each side's ChangeCipherSpec on (AES-GCM
with its explicit nonce, RFC 5288; ChaCha20-Poly1305, RFC 7905). TLS 1.3
records use the handshake keys until that side's Finished, then the
application keys, which a KeyUpdate advances; the inner content type is the
last non-zero byte (the zeros after it are padding); ChangeCipherSpec
records are skipped. Decrypted application data is handed back from `feed`,
each byte with the capture time of the segment that carried it (AEAD
ciphertext is the plaintext's length, byte for byte). A record that fails to
decrypt (its tag does not verify) is counted in ``decrypt_failures`` and
ends the decryption of its direction: handing on bytes after a hole would
make the HTTP parser guess, so the rest is only counted
(``undecrypted_records``). An unsupported version or suite, or missing or
conflicting secrets, leave the whole connection undecrypted, with a named
state (``decryption``) and a note; a TLS 1.2 renegotiation, or a missing
application secret, stops one direction, with a note, its later records
counted in ``undecrypted_records``. The HTTP read from a connection is whole
only if ``decryption`` is `DECRYPT_ON` and no record is undecrypted.

Which suites: TLS 1.2 `SUITES` 0xc02f 0xc030 0xc02b 0xc02c 0xcca8 0xcca9
(ECDHE, RSA or ECDSA) and 0x009c 0x009d (RSA key exchange); TLS 1.3
0x1301 0x1302 0x1303. Not: CBC suites, TLS 1.0/1.1, 0-RTT early data
(``CLIENT_EARLY_TRAFFIC_SECRET``), a TLS 1.2 renegotiation's new keys:
each is named in ``notes`` when met. An SSL 2 style hello is `NOT_TLS`.

Interface
---------
``looks_like_tls(first_bytes)``: at a stream's start, whether the client's
first bytes open a TLS handshake (HTTP/1.x cannot start so).

``KeyLog(text)``: NSS key log text (``SSLKEYLOGFILE``), hostile or not;
``add(text)`` for more.

``TlsConnection(keylog=None)``, then ``feed(side, data, ts)`` with ``side``
"client" or "server", the next in-order bytes of that direction and their
capture time; it returns ``[(plaintext, ts), ...]``, that direction's
decrypted application data (empty without keys), to be fed on to the HTTP
parser of the same direction in the same order. Read at any time:
``phase``, ``version``, ``offered_versions``, ``sni``, ``alpn_offered``,
``alpn`` and ``alpn_known``, ``cipher`` and ``cipher_name``,
``hello_retry``, ``handshake_started_at``, ``handshake_done_at`` and
``handshake_done_inferred``, ``alerts``, ``close_notify`` with
``close_notify_by`` and ``close_notify_at``, ``decryption`` with
``decrypt_failures`` and ``notes``, ``exchanges`` (`InferredExchange`),
``unsolicited_server_records``, ``last_app_data_at``, and per direction
``client`` and ``server`` (`TlsDirection`: records, bytes, failures);
``summary()`` gives them all as JSON-ready values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# --- the wire's numbers

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT))
MAX_RECORD = 2**14 + 2048  # TLSCiphertext.length's limit (RFC 5246 section 6.2.3)
MAX_HANDSHAKE_KEPT = 64 * 1024  # longer handshake messages (certificates) are skipped unread

HELLO_REQUEST, CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET = 0, 1, 2, 4
ENCRYPTED_EXTENSIONS, FINISHED, KEY_UPDATE = 8, 20, 24
EXT_SERVER_NAME, EXT_ALPN, EXT_EARLY_DATA, EXT_SUPPORTED_VERSIONS = 0, 16, 42, 43

# SHA-256("HelloRetryRequest"): a ServerHello with this random asks the client to retry.
HELLO_RETRY_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

TLS12, TLS13 = 0x0303, 0x0304
VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", TLS12: "TLS 1.2",
            TLS13: "TLS 1.3"}

CLOSE_NOTIFY = 0
ALERT_NAMES = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
               22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
               43: "unsupported_certificate", 44: "certificate_revoked",
               45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter",
               48: "unknown_ca", 49: "access_denied", 50: "decode_error", 51: "decrypt_error",
               70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
               86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension",
               110: "unsupported_extension", 112: "unrecognized_name",
               116: "certificate_required", 120: "no_application_protocol"}
FATAL = 2

# --- named states

# A direction's bytes (`TlsDirection.state`).
READING = "reading"  # TLS records, read one after another
NOT_TLS = "not_tls"  # its first record was not a TLS handshake or alert: nothing is read
GAVE_UP = "gave_up"  # a later record header broke TLS's rules: what came before stands

# The connection (`TlsConnection.phase`).
PHASE_START = "start"  # nothing fed yet
PHASE_HANDSHAKE = "handshake"  # a ClientHello came; the handshake has not ended (yet)
PHASE_HANDSHAKE_FAILED = "handshake_failed"  # a fatal alert was read before it ended
PHASE_APPLICATION = "application"  # the handshake ended (``handshake_done_at``)
PHASE_NOT_TLS = "not_tls"  # a direction is NOT_TLS
PHASE_GAVE_UP = "gave_up"  # a direction GAVE_UP: the facts read before it stand

# Decryption (`TlsConnection.decryption`).
DECRYPT_NO_KEYLOG = "no_keylog"  # made without a key log: nothing is decrypted
DECRYPT_WAITING = "waiting"  # a key log, but the two Hellos have not both been read
DECRYPT_NO_KEYS = "no_keys"  # the key log lacks (or contradicts) this connection's secrets
DECRYPT_UNSUPPORTED = "unsupported"  # a version or cipher suite this module does not decrypt
DECRYPT_ON = "decrypting"  # keys in place; every record so far decrypted
DECRYPT_FAILED = "failed"  # a record failed to decrypt: its direction stopped there

# close_notify (`TlsConnection.close_notify`).
CLOSE_NOTIFY_SEEN = "seen"
CLOSE_NOTIFY_NONE = "none"  # every record that could hold an alert was read: none did
CLOSE_NOTIFY_UNKNOWN = "unknown"  # some could not be read (encrypted, or reading stopped)

SIDES = ("client", "server")
_MAX_NOTES = 16
MAX_ALERTS = 64  # alerts kept in ``alerts``; the first close_notify is kept in any case


class Suite(NamedTuple):
    name: str
    version: int  # TLS12 or TLS13
    aead: type  # AESGCM or ChaCha20Poly1305
    key_length: int
    hash: type  # hashes.SHA256 or hashes.SHA384: the PRF's (1.2) or HKDF's (1.3)


SUITES: dict[int, Suite] = {
    0x009C: Suite("TLS_RSA_WITH_AES_128_GCM_SHA256", TLS12, AESGCM, 16, hashes.SHA256),
    0x009D: Suite("TLS_RSA_WITH_AES_256_GCM_SHA384", TLS12, AESGCM, 32, hashes.SHA384),
    0xC02B: Suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", TLS12, AESGCM, 16, hashes.SHA256),
    0xC02C: Suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", TLS12, AESGCM, 32, hashes.SHA384),
    0xC02F: Suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", TLS12, AESGCM, 16, hashes.SHA256),
    0xC030: Suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", TLS12, AESGCM, 32, hashes.SHA384),
    0xCCA8: Suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", TLS12, ChaCha20Poly1305, 32,
                  hashes.SHA256),
    0xCCA9: Suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", TLS12, ChaCha20Poly1305, 32,
                  hashes.SHA256),
    0x1301: Suite("TLS_AES_128_GCM_SHA256", TLS13, AESGCM, 16, hashes.SHA256),
    0x1302: Suite("TLS_AES_256_GCM_SHA384", TLS13, AESGCM, 32, hashes.SHA384),
    0x1303: Suite("TLS_CHACHA20_POLY1305_SHA256", TLS13, ChaCha20Poly1305, 32, hashes.SHA256),
}


def looks_like_tls(first_bytes: bytes) -> bool:
    """Whether a client's first bytes on a connection start a TLS ClientHello record.

    For the analyzer to decide at a stream's start: a handshake record (22),
    version 3.x, a length a record may have, holding a ClientHello (1). Needs
    the first three bytes at least (False with fewer); checks the length and
    message type when five and six are there. HTTP/1.x cannot start so: its
    first byte is a method's letter. An SSL 2 style hello is not recognised.
    """
    b = first_bytes
    if len(b) < 3 or b[0] != HANDSHAKE or b[1] != 3 or b[2] > 4:
        return False
    if len(b) >= 5 and not 4 <= (b[3] << 8 | b[4]) <= MAX_RECORD:
        return False
    return len(b) < 6 or b[5] == CLIENT_HELLO


# --- the key log

KEYLOG_LABELS = ("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                 "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
                 "SERVER_TRAFFIC_SECRET_0")
MAX_KEYLOG_LINE = 512  # a real line is under 250 characters
MAX_KEYLOG_RANDOMS = 1_000_000  # client randoms kept; more lines are counted as dropped
_HEX = re.compile(r"[0-9A-Fa-f]+")
_SECRET_LENGTHS = {"CLIENT_RANDOM": (48,)}  # the master secret; traffic secrets: 32 or 48
_TLS13_LABELS = KEYLOG_LABELS[1:]


class KeyLog:
    """Secrets from NSS key log text, by client random.

    Lines are ``LABEL CLIENT_RANDOM SECRET`` (hex). The five labels in
    `KEYLOG_LABELS` are kept; other labels (exporter and early-data secrets)
    and ``#`` comments are ignored. Whatever else a line holds, it is counted
    as ``bad`` and skipped: one bad line costs only itself. A client random
    whose lines give two different values for one label is ``conflicting``,
    and gives no secrets at all. Bounded: lines over `MAX_KEYLOG_LINE`
    characters are bad before being split; past ``max_randoms`` client
    randoms, new ones are ``dropped``. `add` never raises on content.
    """

    def __init__(self, text: str | bytes = "", max_randoms: int = MAX_KEYLOG_RANDOMS) -> None:
        self._secrets: dict[bytes, dict[str, bytes]] = {}
        self._conflicting: set[bytes] = set()
        self.max_randoms = max_randoms
        self.used = 0  # lines kept (a repeat of a kept line too)
        self.ignored = 0  # comments, blank lines, other labels
        self.bad = 0  # lines that are not key log lines
        self.dropped = 0  # good lines for client randoms past max_randoms
        self.add(text)

    def add(self, text: str | bytes) -> None:
        """More key log text (a whole file, or what was appended to it)."""
        if isinstance(text, str):
            lines = text.split("\n")
        elif isinstance(text, bytes | bytearray | memoryview):
            lines = bytes(text).split(b"\n")
        else:
            raise TypeError("a key log is str or bytes")
        for raw in lines:
            self._line(raw)

    def _line(self, raw: str | bytes) -> None:
        if len(raw) > MAX_KEYLOG_LINE:
            self.bad += 1
            return
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("ascii")
            except UnicodeDecodeError:
                self.bad += 1
                return
        elif not raw.isascii():
            self.bad += 1
            return
        line = raw.strip()
        if not line or line.startswith("#"):
            self.ignored += 1
            return
        words = line.split()
        if len(words) != 3:
            self.bad += 1
            return
        label, random_hex, secret_hex = words
        if label not in KEYLOG_LABELS:
            self.ignored += 1
            return
        lengths = _SECRET_LENGTHS.get(label, (32, 48))
        if (len(random_hex) != 64 or _HEX.fullmatch(random_hex) is None
                or len(secret_hex) not in (2 * n for n in lengths)
                or _HEX.fullmatch(secret_hex) is None):
            self.bad += 1
            return
        client_random, secret = bytes.fromhex(random_hex), bytes.fromhex(secret_hex)
        entry = self._secrets.get(client_random)
        if entry is None:
            if len(self._secrets) >= self.max_randoms:
                self.dropped += 1
                return
            entry = self._secrets[client_random] = {}
        seen = entry.get(label)
        if seen is not None and seen != secret:
            self._conflicting.add(client_random)
        entry.setdefault(label, secret)
        self.used += 1

    def __len__(self) -> int:
        return len(self._secrets)

    def __contains__(self, client_random: object) -> bool:
        return client_random in self._secrets

    def conflicting(self, client_random: bytes) -> bool:
        return client_random in self._conflicting

    def secrets(self, client_random: bytes) -> dict[str, bytes]:
        """The secrets logged for this client random, by label; empty if none, or if they
        conflict."""
        if client_random in self._conflicting:
            return {}
        return dict(self._secrets.get(client_random, {}))


# --- key derivation: HMAC and HKDF from `cryptography`


def _hmac(key: bytes, data: bytes, algorithm: type) -> bytes:
    mac = hmac.HMAC(key, algorithm())
    mac.update(data)
    return mac.finalize()


def prf(secret: bytes, label: bytes, seed: bytes, length: int, algorithm: type) -> bytes:
    """TLS 1.2's PRF: P_hash(secret, label + seed) (RFC 5246 section 5)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = _hmac(secret, a, algorithm)
        out += _hmac(secret, a + seed, algorithm)
    return out[:length]


def expand_label(secret: bytes, label: bytes, context: bytes, length: int,
                 algorithm: type) -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446 section 7.1)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) \
        + context
    return HKDFExpand(algorithm(), length, info).derive(secret)


class _Keys:
    """One direction's record protection: the AEAD, its IV, the record sequence number."""

    __slots__ = ("aead", "iv", "seq", "tls13", "explicit_nonce")

    def __init__(self, suite: Suite, key: bytes, iv: bytes) -> None:
        self.aead = suite.aead(key)
        self.iv = iv
        self.seq = 0
        self.tls13 = suite.version == TLS13
        # TLS 1.2 AES-GCM: 4 bytes of IV from the keys, 8 sent before each record's ciphertext.
        self.explicit_nonce = 8 if not self.tls13 and suite.aead is AESGCM else 0

    def open(self, ctype: int, header: bytes, payload: bytes) -> tuple[int, bytes, int] | None:
        """(content type, plaintext, the plaintext's offset in the payload), or None when the
        record does not authenticate."""
        seq = self.seq
        explicit = self.explicit_nonce
        overhead = 16 + explicit + (1 if self.tls13 else 0)
        if len(payload) < overhead:
            return None
        if explicit:
            nonce = self.iv + payload[:explicit]
        else:
            nonce = (int.from_bytes(self.iv, "big") ^ seq).to_bytes(12, "big")
        if self.tls13:
            aad = header
        else:
            aad = seq.to_bytes(8, "big") + header[:3] + (len(payload) - 16 - explicit).to_bytes(
                2, "big")
        try:
            plain = self.aead.decrypt(nonce, payload[explicit:], aad)
        except (InvalidTag, ValueError, OverflowError):
            return None
        self.seq = seq + 1
        if not self.tls13:
            return ctype, plain, explicit
        # TLSInnerPlaintext: content, the real type, then zero padding (RFC 8446 section 5.2).
        end = len(plain.rstrip(b"\x00"))
        if end == 0:
            return None  # no content type: RFC 8446 says unexpected_message
        return plain[end - 1], plain[:end - 1], 0


def _keys_13(suite: Suite, secret: bytes) -> _Keys:
    algorithm = suite.hash
    return _Keys(suite, expand_label(secret, b"key", b"", suite.key_length, algorithm),
                 expand_label(secret, b"iv", b"", 12, algorithm))


# --- reading handshake messages


class _Malformed(Exception):
    """A handshake message whose fields run past its end: it yields nothing."""


class _Reader:
    __slots__ = ("data", "i")

    def __init__(self, data: bytes) -> None:
        self.data, self.i = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.i:
            raise _Malformed
        out = self.data[self.i:self.i + n]
        self.i += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    def left(self) -> int:
        return len(self.data) - self.i


def _extensions(data: bytes) -> dict[int, bytes]:
    """Extensions by type; a repeated type is malformed (RFC 8446 section 4.2)."""
    found: dict[int, bytes] = {}
    reader = _Reader(data)
    while reader.left():
        kind, body = reader.number(2), reader.vector(2)
        if kind in found:
            raise _Malformed
        found[kind] = body
    return found


def _grease(value: int) -> bool:
    """RFC 8701's reserved values: 0x0a0a, 0x1a1a ... 0xfafa."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")


def _alpn_list(data: bytes) -> list[str]:
    reader = _Reader(_Reader(data).vector(2))
    names = []
    while reader.left():
        name = reader.vector(1)
        if not name:
            raise _Malformed
        names.append(_text(name))
    return names


def _server_name(data: bytes) -> str | None:
    reader = _Reader(_Reader(data).vector(2))
    while reader.left():
        kind, name = reader.number(1), reader.vector(2)
        if kind == 0:
            return _text(name) if 0 < len(name) <= 255 else None
    return None


class _Hello(NamedTuple):
    legacy_version: int
    random: bytes
    suites: tuple[int, ...]  # the client's offer, or the server's one choice
    extensions: dict[int, bytes]


def _client_hello(body: bytes) -> _Hello:
    reader = _Reader(body)
    version, random = reader.number(2), reader.take(32)
    reader.vector(1)  # legacy_session_id
    suites_raw = reader.vector(2)
    reader.vector(1)  # legacy_compression_methods
    extensions = _extensions(reader.vector(2)) if reader.left() else {}
    suites = tuple(int.from_bytes(suites_raw[i:i + 2], "big")
                   for i in range(0, len(suites_raw) - 1, 2))
    return _Hello(version, random, suites, extensions)


def _server_hello(body: bytes) -> _Hello:
    reader = _Reader(body)
    version, random = reader.number(2), reader.take(32)
    reader.vector(1)  # legacy_session_id_echo
    suite = reader.number(2)
    reader.take(1)  # legacy_compression_method
    extensions = _extensions(reader.vector(2)) if reader.left() else {}
    return _Hello(version, random, (suite,), extensions)


class _HandshakeStream:
    """Handshake messages from one direction's handshake bytes: (type, body) per message,
    the body None when it is longer than `MAX_HANDSHAKE_KEPT` or not one this module
    reads (it is skipped, not held)."""

    __slots__ = ("head", "kind", "remaining", "body", "keep")

    KEPT = frozenset((CLIENT_HELLO, SERVER_HELLO, ENCRYPTED_EXTENSIONS, KEY_UPDATE))

    def __init__(self) -> None:
        self.head = b""  # an incomplete 4-byte message header
        self.kind = -1  # the message being read; -1 between messages
        self.remaining = 0
        self.body: list[bytes] = []
        self.keep = False

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        i, n = 0, len(data)
        while i < n or (self.kind >= 0 and self.remaining == 0):
            if self.kind < 0:
                need = 4 - len(self.head)
                self.head += data[i:i + need]
                i += need
                if len(self.head) < 4:
                    break
                self.kind, self.remaining = self.head[0], int.from_bytes(self.head[1:4], "big")
                self.head = b""
                self.keep = self.kind in self.KEPT and self.remaining <= MAX_HANDSHAKE_KEPT
                self.body = []
            take = min(self.remaining, n - i)
            if take and self.keep:
                self.body.append(data[i:i + take])
            i += take
            self.remaining -= take
            if self.remaining == 0:
                out.append((self.kind, b"".join(self.body) if self.keep else None))
                self.kind, self.body = -1, []
        return out


# --- what the module reports


class Alert(NamedTuple):
    side: str  # who sent it: "client" or "server"
    at: float  # capture time of the record that completed it
    level: int | None  # 1 warning, 2 fatal; None when it could not be read
    description: int | None  # 0 close_notify ... (ALERT_NAMES); None when unread
    encrypted: bool  # sent in a protected record (read with keys, or not read)

    @property
    def name(self) -> str | None:
        if self.description is None:
            return None
        return ALERT_NAMES.get(self.description, f"alert_{self.description}")


@dataclass(slots=True)
class InferredExchange:
    """A burst of the client's application-data records, then the server's: one request and
    its response, as far as records alone can say. Times are capture times (first byte of
    the first record, last byte of the last); bytes are record lengths (ciphertext)."""

    request_at: float
    request_end_at: float
    request_records: int
    request_bytes: int
    response_at: float | None = None  # None: no server record came after the burst
    response_end_at: float | None = None
    response_records: int = 0
    response_bytes: int = 0
    inferred: bool = True  # always: records do not say where a message ends


class TlsDirection:
    """One direction of the connection: its record reading and what it carried."""

    __slots__ = ("side", "state", "gave_up_at", "records", "app_records", "app_bytes",
                 "plaintext_bytes", "undecrypted_records", "decrypt_failures",
                 "last_app_data_at", "ccs_at", "finished_at", "encrypted_records",
                 "unreadable", "keys", "next_keys", "secret", "stopped",
                 "parts", "held", "need", "base", "marks", "handshake")

    def __init__(self, side: str) -> None:
        self.side = side
        self.state = READING
        self.gave_up_at: int | None = None  # stream offset of the header that broke the rules
        self.records = 0  # records read
        self.app_records = 0  # records taken as application data
        self.app_bytes = 0  # their lengths
        self.plaintext_bytes = 0  # application data decrypted and handed on
        self.undecrypted_records = 0  # protected records not decrypted (any reason)
        self.decrypt_failures = 0  # records whose tag did not verify (or were malformed inside)
        self.last_app_data_at: float | None = None
        self.ccs_at: float | None = None  # TLS <= 1.2: its ChangeCipherSpec
        self.finished_at: float | None = None  # its Finished (see the module's docstring)
        self.encrypted_records = 0  # protected records seen
        self.unreadable = 0  # protected records that might hold an alert, not read
        self.keys: _Keys | None = None  # protecting the records now, when known
        self.next_keys: _Keys | None = None  # TLS 1.3: the application keys, after Finished
        self.secret: bytes | None = None  # TLS 1.3: the application traffic secret in use
        self.stopped = False  # decryption ended here (a failure or renegotiation)
        self.parts: list[bytes] = []  # the bytes of an incomplete record, as they came
        self.held = 0  # their length
        self.need = 5  # bytes that complete the record in hand (its header, at first)
        self.base = 0  # stream offset of parts[0][0]
        self.marks: list[tuple[int, float]] = []  # (stream offset, capture time) per feed held
        self.handshake = _HandshakeStream()


class TlsConnection:
    """One TCP connection's TLS. Feed each direction's in-order bytes with `feed`; read the
    properties at any time. See the module's docstring."""

    def __init__(self, keylog: KeyLog | None = None) -> None:
        self.keylog = keylog
        self.client = TlsDirection("client")
        self.server = TlsDirection("server")
        # From the ClientHello
        self.client_random: bytes | None = None
        self.legacy_version: int | None = None  # the ClientHello's version field
        self.offered_versions: list[str] = []  # supported_versions, else the legacy version
        self.sni: str | None = None
        self.alpn_offered: list[str] = []
        self.early_data_offered = False
        self.handshake_started_at: float | None = None  # the ClientHello's record
        # From the ServerHello (and EncryptedExtensions)
        self.server_random: bytes | None = None
        self.version_code: int | None = None
        self.cipher: int | None = None
        self.hello_retry = False
        self.alpn: str | None = None
        self.alpn_known = False
        self.handshake_done_at: float | None = None
        self.handshake_done_inferred = False
        self.alerts: list[Alert] = []  # the first `MAX_ALERTS`; the rest are counted
        self.alerts_dropped = 0
        self._close_notify: Alert | None = None
        self.exchanges: list[InferredExchange] = []
        self.unsolicited_server_records = 0
        self.notes: list[str] = []
        self._decryption = DECRYPT_NO_KEYLOG if keylog is None else DECRYPT_WAITING
        self._suite: Suite | None = None

    # --- what is known

    @property
    def version(self) -> str | None:
        """The version the server chose: "TLS 1.2", "TLS 1.3"; None before its ServerHello."""
        code = self.version_code
        return None if code is None else VERSIONS.get(code, f"0x{code:04x}")

    @property
    def cipher_name(self) -> str | None:
        if self.cipher is None:
            return None
        suite = SUITES.get(self.cipher)
        return suite.name if suite else f"0x{self.cipher:04x}"

    @property
    def phase(self) -> str:
        states = (self.client.state, self.server.state)
        if NOT_TLS in states:
            return PHASE_NOT_TLS
        if GAVE_UP in states:
            return PHASE_GAVE_UP
        if self.handshake_done_at is not None:
            return PHASE_APPLICATION
        if any(a.level == FATAL for a in self.alerts):
            return PHASE_HANDSHAKE_FAILED
        return PHASE_HANDSHAKE if self.client.records or self.server.records else PHASE_START

    @property
    def decryption(self) -> str:
        if self._decryption == DECRYPT_ON and (self.client.decrypt_failures
                                               or self.server.decrypt_failures):
            return DECRYPT_FAILED
        return self._decryption

    @property
    def decrypt_failures(self) -> int:
        return self.client.decrypt_failures + self.server.decrypt_failures

    @property
    def close_notify_by(self) -> str | None:
        first = self._first_close_notify()
        return first.side if first else None

    @property
    def close_notify_at(self) -> float | None:
        first = self._first_close_notify()
        return first.at if first else None

    @property
    def close_notify(self) -> str:
        if self._first_close_notify() is not None:
            return CLOSE_NOTIFY_SEEN
        if (self.client.unreadable or self.server.unreadable
                or self.client.state != READING or self.server.state != READING):
            return CLOSE_NOTIFY_UNKNOWN
        return CLOSE_NOTIFY_NONE

    @property
    def last_app_data_at(self) -> float | None:
        """The last application-data record of either side (the idle time's start, where
        TLS's own records (tickets, alerts) are data to TCP)."""
        times = [t for t in (self.client.last_app_data_at, self.server.last_app_data_at)
                 if t is not None]
        return max(times) if times else None

    def _first_close_notify(self) -> Alert | None:
        return self._close_notify

    def _alert(self, alert: Alert) -> None:
        if alert.description == CLOSE_NOTIFY and self._close_notify is None:
            self._close_notify = alert
        if len(self.alerts) < MAX_ALERTS:
            self.alerts.append(alert)
        else:
            self.alerts_dropped += 1

    def summary(self) -> dict:
        """What is known, as JSON-ready values (for a report, or a test's message)."""
        return {
            "phase": self.phase, "version": self.version,
            "offered_versions": list(self.offered_versions), "sni": self.sni,
            "alpn_offered": list(self.alpn_offered), "alpn": self.alpn,
            "alpn_known": self.alpn_known, "cipher": self.cipher_name,
            "hello_retry": self.hello_retry,
            "handshake_started_at": self.handshake_started_at,
            "handshake_done_at": self.handshake_done_at,
            "handshake_done_inferred": self.handshake_done_inferred,
            "close_notify": self.close_notify, "close_notify_by": self.close_notify_by,
            "close_notify_at": self.close_notify_at,
            "alerts": [{"by": a.side, "at": a.at, "level": a.level, "name": a.name,
                        "encrypted": a.encrypted} for a in self.alerts],
            "alerts_dropped": self.alerts_dropped,
            "decryption": self.decryption, "decrypt_failures": self.decrypt_failures,
            "undecrypted_records": self.client.undecrypted_records
            + self.server.undecrypted_records,
            "last_app_data_at": self.last_app_data_at,
            "exchanges": [{"request_at": e.request_at, "request_end_at": e.request_end_at,
                           "request_records": e.request_records,
                           "request_bytes": e.request_bytes, "response_at": e.response_at,
                           "response_end_at": e.response_end_at,
                           "response_records": e.response_records,
                           "response_bytes": e.response_bytes, "inferred": e.inferred}
                          for e in self.exchanges],
            "unsolicited_server_records": self.unsolicited_server_records,
            "notes": list(self.notes),
        }

    def _note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < _MAX_NOTES:
            self.notes.append(text)

    # --- records in

    def feed(self, side: str, data: bytes, ts: float) -> list[tuple[bytes, float]]:
        """One direction's next in-order bytes, captured at ``ts``. Returns that
        direction's application data decrypted from the records these bytes completed:
        (bytes, capture time) chunks in order, nothing when not decrypting. Raises only
        ValueError for a ``side`` that is neither "client" nor "server"."""
        if side == "client":
            d = self.client
        elif side == "server":
            d = self.server
        else:
            raise ValueError(f"side is 'client' or 'server', not {side!r}")
        if d.state != READING or not data:
            return []
        # Pieces are only joined once the record in hand is complete: a record fed a
        # byte at a time costs no more than one fed whole.
        d.marks.append((d.base + d.held, ts))
        d.parts.append(data)
        d.held += len(data)
        if d.held < d.need:
            return []
        work = d.parts[0] if len(d.parts) == 1 else b"".join(d.parts)
        out: list[tuple[bytes, float]] = []
        i, n = 0, len(work)
        need = 5
        while n - i >= 5:
            ctype, major, minor = work[i], work[i + 1], work[i + 2]
            length = work[i + 3] << 8 | work[i + 4]
            first = d.records == 0
            if (ctype not in CONTENT_TYPES or major != 3 or minor > 4 or length > MAX_RECORD
                    or (length == 0 and ctype != APPLICATION_DATA)
                    or (first and ctype not in (HANDSHAKE, ALERT))):
                d.state = NOT_TLS if first else GAVE_UP
                d.gave_up_at = d.base + i
                if not first:
                    self._note(f"the {side}'s bytes stopped being TLS records at stream byte "
                               f"{d.base + i}")
                d.parts, d.held, d.marks = [], 0, []
                return out
            end = i + 5 + length
            if end > n:
                need = 5 + length
                break
            self._record(d, ctype, work, i, length, ts, out)
            i = end
        d.base += i
        rest = work[i:] if i else work
        d.parts = [rest] if rest else []
        d.held, d.need = len(rest), need
        marks = d.marks
        if not rest:
            marks.clear()
        else:
            keep = 0
            while keep + 1 < len(marks) and marks[keep + 1][0] <= d.base:
                keep += 1
            if keep:
                del marks[:keep]
        return out

    def _time_at(self, d: TlsDirection, offset: int) -> float:
        ts = d.marks[0][1]
        for mark_offset, mark_ts in d.marks:
            if mark_offset > offset:
                break
            ts = mark_ts
        return ts

    def _record(self, d: TlsDirection, ctype: int, work: bytes, i: int, length: int,
                ts: float, out: list[tuple[bytes, float]]) -> None:
        d.records += 1
        header = work[i:i + 5]
        payload = work[i + 5:i + 5 + length]
        start = d.base + i  # the record's stream offset
        tls13 = self.version_code == TLS13
        if ctype == CHANGE_CIPHER_SPEC:
            if self.version_code is not None and not tls13:
                self._change_cipher_spec(d, ts)
            return  # TLS 1.3's (and a hello's compatibility) ChangeCipherSpec is skipped
        protected = d.ccs_at is not None or (tls13 and ctype == APPLICATION_DATA)
        if not protected:
            if ctype == HANDSHAKE:
                self._handshake(d, payload, ts)
            elif ctype == ALERT:
                self._alerts(d, payload, ts, encrypted=False)
            elif ctype == APPLICATION_DATA:
                # Before any keys: 0-RTT early data (or a peer breaking the rules).
                d.encrypted_records += 1
                d.undecrypted_records += 1
                self._note(f"the {d.side} sent application data before the handshake "
                           "(0-RTT early data is not decrypted)")
            return
        d.encrypted_records += 1
        opened = None
        if d.keys is not None and not d.stopped:
            opened = d.keys.open(ctype, header, payload)
            if opened is None:
                d.decrypt_failures += 1
                d.stopped = True
                self._note(f"a record from the {d.side} failed to decrypt (stream byte "
                           f"{start}): the rest of that direction is not decrypted")
        if opened is None:
            d.undecrypted_records += 1
            self._opaque(d, ctype, start, length, ts)
            return
        inner, plain, offset = opened
        if inner == APPLICATION_DATA:
            self._application(d, start, length, ts)
            if plain:
                d.plaintext_bytes += len(plain)
                self._hand_on(d, start + 5 + offset, plain, ts, out)
        elif inner == HANDSHAKE:
            self._handshake(d, plain, ts, encrypted=True)
        elif inner == ALERT:
            self._alerts(d, plain, ts, encrypted=True)
        # A protected ChangeCipherSpec or heartbeat carries nothing for this module.

    def _hand_on(self, d: TlsDirection, offset: int, plain: bytes, ts: float,
                 out: list[tuple[bytes, float]]) -> None:
        """Plaintext starting at stream ``offset`` of the ciphertext, split at the capture
        times of the segments that carried its bytes."""
        marks = d.marks
        if offset >= marks[-1][0]:
            chunks = [(plain, ts)]  # all of it came in this feed
        else:
            chunks = []
            end = offset + len(plain)
            at = self._time_at(d, offset)
            pos = offset
            for mark_offset, mark_ts in marks:
                if mark_offset <= pos:
                    continue
                if mark_offset >= end:
                    break
                chunks.append((plain[pos - offset:mark_offset - offset], at))
                pos, at = mark_offset, mark_ts
            chunks.append((plain[pos - offset:], at))
        for chunk in chunks:
            if out and out[-1][1] == chunk[1]:
                out[-1] = (out[-1][0] + chunk[0], chunk[1])
            else:
                out.append(chunk)

    def _opaque(self, d: TlsDirection, ctype: int, start: int, length: int, ts: float) -> None:
        """A protected record that was not decrypted: what its outer type and place say."""
        if self.version_code == TLS13:
            d.unreadable += 1  # any protected record of TLS 1.3 may be an alert
            if d is self.client:
                if d.encrypted_records == 1 and d.finished_at is None:
                    # Its first protected record: its Finished (no client certificate).
                    d.finished_at = ts
                    if self.handshake_done_at is None:
                        self.handshake_done_at = ts
                        self.handshake_done_inferred = True
                    return
            elif self.client.encrypted_records == 0 and d.finished_at is None:
                return  # the server's flight before the client's Finished: its handshake
            self._application(d, start, length, ts)
            return
        if d.finished_at is None and ctype == HANDSHAKE:
            self._finished(d, ts)  # TLS <= 1.2: the record after ChangeCipherSpec
        elif ctype == ALERT:
            d.unreadable += 1
            self._alert(Alert(d.side, ts, None, None, True))
        elif ctype == APPLICATION_DATA:
            self._application(d, start, length, ts)

    def _application(self, d: TlsDirection, start: int, length: int, ts: float) -> None:
        d.app_records += 1
        d.app_bytes += length
        d.last_app_data_at = ts
        began = self._time_at(d, start)
        exchanges = self.exchanges
        last = exchanges[-1] if exchanges else None
        if d is self.client:
            if last is not None and last.response_records == 0:
                last.request_end_at = ts
                last.request_records += 1
                last.request_bytes += length
            else:
                exchanges.append(InferredExchange(began, ts, 1, length))
        elif last is None:
            self.unsolicited_server_records += 1
        else:
            if last.response_at is None:
                last.response_at = began
            last.response_end_at = ts
            last.response_records += 1
            last.response_bytes += length

    def _alerts(self, d: TlsDirection, data: bytes, ts: float, encrypted: bool) -> None:
        if not data or len(data) % 2:
            self._note(f"the {d.side} sent a malformed alert record")
            return
        for k in range(0, len(data), 2):
            self._alert(Alert(d.side, ts, data[k], data[k + 1], encrypted))

    def _finished(self, d: TlsDirection, ts: float) -> None:
        if d.finished_at is not None:
            return
        d.finished_at = ts
        if self.version_code == TLS13:
            if d is self.client:
                self.handshake_done_at = ts
                self.handshake_done_inferred = False
        elif self.client.finished_at is not None and self.server.finished_at is not None:
            self.handshake_done_at = max(self.client.finished_at, self.server.finished_at)

    def _change_cipher_spec(self, d: TlsDirection, ts: float) -> None:
        if d.ccs_at is not None:
            # A second one: a renegotiation, with keys this module does not follow.
            if d.keys is not None and not d.stopped:
                d.stopped = True
                self._note(f"the {d.side} renegotiated: its records after that are not "
                           "decrypted")
            return
        d.ccs_at = ts

    # --- handshake messages

    def _handshake(self, d: TlsDirection, data: bytes, ts: float, encrypted: bool = False) -> None:
        for kind, body in d.handshake.feed(data):
            if kind == CLIENT_HELLO and d is self.client:
                if encrypted:
                    self._note("the client renegotiated: its records after that are not "
                               "decrypted")
                elif body is not None and self.client_random is None:
                    self._read_client_hello(body, ts)
                elif body is None:
                    self._note("a ClientHello too long to read")
            elif kind == SERVER_HELLO and d is self.server and not encrypted:
                if body is None:
                    self._note("a ServerHello too long to read")
                else:
                    self._read_server_hello(body)
            elif kind == ENCRYPTED_EXTENSIONS and d is self.server and encrypted and body:
                self._read_encrypted_extensions(body)
            elif kind == FINISHED and encrypted:
                self._finished(d, ts)
                if self.version_code == TLS13 and d.keys is not None:
                    # The application keys from the next record on (none: stop there).
                    d.keys, d.next_keys = d.next_keys, None
                    d.stopped = d.keys is None
            elif kind == KEY_UPDATE and encrypted and self._suite is not None:
                self._key_update(d)
            elif kind == HELLO_REQUEST and encrypted and d is self.server:
                self._note("the server asked for a renegotiation")

    def _read_client_hello(self, body: bytes, ts: float) -> None:
        try:
            hello = _client_hello(body)
            ext = hello.extensions
            sni = _server_name(ext[EXT_SERVER_NAME]) if EXT_SERVER_NAME in ext else None
            alpn = _alpn_list(ext[EXT_ALPN]) if EXT_ALPN in ext else []
            if EXT_SUPPORTED_VERSIONS in ext:
                raw = _Reader(ext[EXT_SUPPORTED_VERSIONS]).vector(1)
                if len(raw) % 2:
                    raise _Malformed
                codes = [int.from_bytes(raw[k:k + 2], "big") for k in range(0, len(raw), 2)]
                offered = [VERSIONS.get(c, f"0x{c:04x}") for c in codes if not _grease(c)]
            else:
                offered = [VERSIONS.get(hello.legacy_version, f"0x{hello.legacy_version:04x}")]
        except _Malformed:
            self._note("a malformed ClientHello: its fields are not read")
            return
        self.client_random = hello.random
        self.legacy_version = hello.legacy_version
        self.offered_versions = offered
        self.sni = sni
        self.alpn_offered = alpn
        self.early_data_offered = EXT_EARLY_DATA in ext
        self.handshake_started_at = ts
        if self.early_data_offered:
            self._note("the client offered 0-RTT early data (not decrypted)")
        self._setup_keys()

    def _read_server_hello(self, body: bytes) -> None:
        if self.server_random is not None:
            return  # one ServerHello per handshake; a renegotiation's is encrypted
        try:
            hello = _server_hello(body)
            ext = hello.extensions
            version = hello.legacy_version
            if EXT_SUPPORTED_VERSIONS in ext:
                raw = ext[EXT_SUPPORTED_VERSIONS]
                if len(raw) != 2:
                    raise _Malformed
                version = int.from_bytes(raw, "big")
            alpn = _alpn_list(ext[EXT_ALPN]) if EXT_ALPN in ext else []
            if len(alpn) > 1:
                raise _Malformed
        except _Malformed:
            self._note("a malformed ServerHello: its fields are not read")
            return
        self.version_code = version
        self.cipher = hello.suites[0]
        if hello.random == HELLO_RETRY_RANDOM:
            self.hello_retry = True  # the real ServerHello follows the client's second hello
            return
        self.server_random = hello.random
        if version != TLS13:
            self.alpn = alpn[0] if alpn else None
            self.alpn_known = True
        self._setup_keys()

    def _read_encrypted_extensions(self, body: bytes) -> None:
        try:
            ext = _extensions(_Reader(body).vector(2))
            alpn = _alpn_list(ext[EXT_ALPN]) if EXT_ALPN in ext else []
            if len(alpn) > 1:
                raise _Malformed
        except _Malformed:
            self._note("malformed EncryptedExtensions: the ALPN chosen is not read")
            return
        self.alpn = alpn[0] if alpn else None
        self.alpn_known = True

    # --- keys

    def _setup_keys(self) -> None:
        if (self._decryption != DECRYPT_WAITING or self.client_random is None
                or self.server_random is None or self.keylog is None):
            return
        version, cipher = self.version_code, self.cipher
        suite = SUITES.get(cipher) if cipher is not None else None
        if version not in (TLS12, TLS13) or suite is None or suite.version != version:
            self._decryption = DECRYPT_UNSUPPORTED
            self._note(f"{self.version} with {self.cipher_name} is not decrypted here")
            return
        secrets = self.keylog.secrets(self.client_random)
        if self.keylog.conflicting(self.client_random):
            self._decryption = DECRYPT_NO_KEYS
            self._note("the key log gives conflicting secrets for this client random")
            return
        hash_length = suite.hash.digest_size
        if version == TLS12:
            master = secrets.get("CLIENT_RANDOM")
            if master is None:
                self._decryption = DECRYPT_NO_KEYS
                self._note("the key log has no CLIENT_RANDOM line for this connection")
                return
            key, iv = suite.key_length, 4 if suite.aead is AESGCM else 12
            block = prf(master, b"key expansion", self.server_random + self.client_random,
                        2 * (key + iv), suite.hash)
            self.client.keys = _Keys(suite, block[:key], block[2 * key:2 * key + iv])
            self.server.keys = _Keys(suite, block[key:2 * key], block[2 * key + iv:])
        else:
            # The handshake secrets are needed; the application ones may be missing (a client
            # that refused the certificate logs none), and then each direction stops at its
            # Finished: its handshake, alerts included, is still read.
            needed = ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET")
            missing = [label for label in needed if label not in secrets]
            wrong = [label for label in _TLS13_LABELS
                     if label in secrets and len(secrets[label]) != hash_length]
            if missing or wrong:
                self._decryption = DECRYPT_NO_KEYS
                self._note("the key log lacks " + ", ".join(missing) if missing else
                           "the key log's secrets do not fit the cipher suite's hash")
                return
            self.client.keys = _keys_13(suite, secrets[needed[0]])
            self.server.keys = _keys_13(suite, secrets[needed[1]])
            for d, label in ((self.client, "CLIENT_TRAFFIC_SECRET_0"),
                             (self.server, "SERVER_TRAFFIC_SECRET_0")):
                if label in secrets:
                    d.secret = secrets[label]
                    d.next_keys = _keys_13(suite, d.secret)
                else:
                    self._note(f"the key log lacks {label}: the {d.side}'s records after its "
                               "Finished are not decrypted")
        self._suite = suite
        self._decryption = DECRYPT_ON

    def _key_update(self, d: TlsDirection) -> None:
        """TLS 1.3 KeyUpdate: the sender's next records use the next traffic secret."""
        suite = self._suite
        if suite is None or d.secret is None or d.next_keys is not None:
            return
        d.secret = expand_label(d.secret, b"traffic upd", b"", suite.hash.digest_size,
                                suite.hash)
        d.keys = _keys_13(suite, d.secret)
