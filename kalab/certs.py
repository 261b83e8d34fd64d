"""HTTPS in the lab (`tls: true`): a CA made for the run, the engine's certificate, the
client's trust and its key log.

The server role makes, for each engine's turn, a CA of its own and a certificate
it signs for the names and addresses the client may use (`make_server_tls`):
the CA's private key is never written anywhere, the engine's stays in the
server's private scratch folder (gone with the engine), and the two
certificates go in the engine's folder (``handoff.TLS_CA``,
``handoff.TLS_CERT``), where the client finds the CA to trust once the server
is ready. Nothing trusts anything else: every client verifies the chain and the
name against that CA alone (never ``verify=False``).

The client writes its TLS secrets to ``handoff.TLS_KEYLOG`` in the engine's
folder, in the NSS key log format (``SSLKEYLOGFILE``): the Python clients
through `ssl.SSLContext.keylog_filename` (`ClientTls.context`), curl through
its ``SSLKEYLOGFILE`` variable. tshark reads it with ``-o
tls.keylog_file:FILE``, and `kalab.tls.KeyLog` reads it for the analysis.

``tls: {version: "1.2"}`` (or ``"1.3"``) makes the client offer that version
alone; every engine here takes both, so the choice is the client's, for all.
The certificates use ECDSA P-256 keys: the suites the lab's decryption reads
(`kalab.tls.SUITES`) are what every engine and client then agree on.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("1.2", "1.3")  # what `tls: {version: ...}` may say
_SSL_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VALID_FOR = datetime.timedelta(days=2)  # a run lasts hours at most
CA_NAME = "kalab run CA"


@dataclass(frozen=True)
class ServerTls:
    """What an engine serves HTTPS with: its certificate (``cert``, the engine's folder),
    its private key (``key``, the private scratch folder), and the two in one file
    (``bundle``, scratch: HAProxy takes them so)."""

    cert: Path
    key: Path
    bundle: Path
    ca: Path  # the run's CA certificate: a readiness check verifies against it


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for HTTPS: the CA to trust (None: this host's trusted CAs, for
    a server the lab did not start), the key log to write, the one TLS version to offer
    (None: the client's own range, TLS 1.2 to 1.3)."""

    ca: Path | None
    keylog: Path
    version: str | None = None

    def context(self) -> ssl.SSLContext:
        """A verifying context that trusts the CA only (or this host's) and writes the key
        log."""
        # CERT_REQUIRED and the host's name checked, whichever CA
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.version is not None:
            context.minimum_version = context.maximum_version = _SSL_VERSIONS[self.version]
        context.keylog_filename = str(self.keylog)
        return context

    def curl_arguments(self) -> list[str]:
        """curl's words for the same: the CA, and the version (the key log is its
        environment's SSLKEYLOGFILE, `curl_environment`)."""
        argv = ["--cacert", str(self.ca)] if self.ca is not None else []
        if self.version == "1.2":
            argv += ["--tlsv1.2", "--tls-max", "1.2"]
        elif self.version == "1.3":
            argv += ["--tlsv1.3", "--tls-max", "1.3"]
        return argv

    def curl_environment(self) -> dict[str, str]:
        return {"SSLKEYLOGFILE": str(self.keylog)}


def server_names(host: str, extra: list[str]) -> list[str]:
    """The names and addresses the certificate is for: the listening address (all of this
    machine's when it listens on all), loopback, this machine's name, and ``extra`` (the
    names the client is told to use, e.g. compose's service name)."""
    names = ["localhost", "127.0.0.1", "::1", *extra]
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False
        names.append(host)  # a name
    if not unspecified and host not in names:
        names.append(host)
    names.append(os.uname().nodename)
    return list(dict.fromkeys(name for name in names if name))


def _san(names: list[str]) -> list:
    from cryptography import x509

    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def make_server_tls(folder: Path, scratch: Path, host: str, names: list[str]) -> ServerTls:
    """Make the run's CA and the engine's certificate (`server_names` of ``host`` and
    ``names``): the CA and the certificate in ``folder``, the key in ``scratch``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALID_FOR
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    all_names = server_names(host, names)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_san(all_names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    from kalab import handoff

    pem = serialization.Encoding.PEM
    cert_pem = cert.public_bytes(pem)
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tls = ServerTls(folder / handoff.TLS_CERT, scratch / "tls-key.pem",
                    scratch / "tls-bundle.pem", folder / handoff.TLS_CA)
    _write(tls.ca, ca.public_bytes(pem), 0o644)
    _write(tls.cert, cert_pem, 0o644)
    _write(tls.key, key_pem, 0o600)
    _write(tls.bundle, cert_pem + key_pem, 0o600)
    return tls


def _write(path: Path, data: bytes, mode: int) -> None:
    """A new file with ``mode`` from its first byte (never over another's file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # the umask may have taken bits the readers need


def client_tls(folder: Path, version: str | None) -> ClientTls:
    """The client's side of an engine's turn, from the files the server left in its folder."""
    from kalab import handoff

    return ClientTls(folder / handoff.TLS_CA, folder / handoff.TLS_KEYLOG, version)
