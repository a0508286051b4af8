"""TLS certificates (`vars.tls_certs`): checked before every install, applied live by `serf-handle certs`.

The check (`check`) runs whenever a config is rendered with `tls_certs` set, so every run,
`serf-handle check` and `serf-handle certs` refuse what HAProxy itself would refuse: a
missing or unreadable directory, a file without a certificate or a private key, a key that
does not match its certificate, in one line naming each bad file. The config file then
stays as it was, while the membership change still reaches HAProxy through the runtime API
(`_plan.live_only`).

An expired certificate, or one that expires within `WARN_DAYS`, is loaded by HAProxy, so it
stops nothing: `expiry_notices` words a warning per file, which a run logs only when it
differs from what the state recorded as last said (`State.notices`), so an unchanged
directory is not warned about on every event; `status` and the metrics gauge
`serf_handlers_tls_certificate_expiry_timestamp_seconds{file}` show it always, and
`serf-handle check` exits 1 for it (it is the operator's tool).

`apply` brings HAProxy's certificates to the directory's files through the runtime API, with no
reload and no connection touched: a replaced file is sent with `set ssl cert <file> <<` and
its PEM, then `commit ssl cert <file>`; a new file with `new ssl cert` first and `add ssl
crt-list <dir> <file>` after; a file gone with `del ssl crt-list` and `del ssl cert`.

`ssl` (about 10 ms to import) is imported only here, and this module only when TLS is configured.
"""

from __future__ import annotations

import os
import re
import stat
import time

from ... import _log
from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import ConfigError, HandlerError
from ._install import CannotInstall

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._options import Options

# What HAProxy 2.6 skips in a `crt <directory>` (src/ssl_crtlist.c): dot files, files ending in
# one of these (extra files it loads next to a certificate), and anything not a regular file.
IGNORED_SUFFIXES = (".issuer", ".ocsp", ".sctl", ".key")
OPENSSL_TIMEOUT = 10.0
WARN_DAYS = 14  # a warning this long before a certificate expires (ACME clients renew at 30 days left)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")


class CertError(CannotInstall):
    """A certificate file HAProxy refuses; the message names every bad file."""


class Cert(NamedTuple):
    path: str  # as HAProxy names it: <tls_certs>/<file>
    fingerprint: str  # SHA-1 of the first certificate (DER), upper-case hex, as `show ssl cert` shows it
    not_after: float  # seconds since the epoch
    pem: str  # the PEM blocks only, as sent to HAProxy


_checked: dict[tuple[object, ...], list[Cert]] = {}


def files(directory: str) -> list[str]:
    """The files HAProxy loads from `directory`, in its order (byte order: the first is the
    default certificate). Raises OSError when the directory cannot be listed."""
    names = []
    for name in sorted(os.listdir(directory), key=os.fsencode):
        if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
            continue
        try:
            regular = stat.S_ISREG(os.stat(os.path.join(directory, name)).st_mode)
        except OSError:
            regular = True  # HAProxy fails on it too (a dangling link): `check` names it
        if regular:
            names.append(name)
    return names


def check(directory: str, default: str | None = None) -> list[Cert]:
    """Every certificate HAProxy would load from `directory`, checked; raises CertError naming
    each file HAProxy would refuse (one line). Expiry is not checked here (`expiry_notices`).
    The result is kept for the run, keyed by the files' identity."""
    where = f"vars.tls_certs: {directory}"
    try:
        names = files(directory)
    except OSError as exc:
        raise CertError(f"{where}: cannot read the directory: {exc.strerror or exc}") from None
    if not names:
        raise CertError(f"{where}: no certificate files in it (one PEM per name: certificate chain, then key)")
    if default is not None and default not in names:
        raise CertError(f"vars.tls_default_cert: {os.path.join(directory, default)}: no such certificate file")
    paths = [os.path.join(directory, name) for name in names]
    key = tuple(_identity(p) for p in paths)
    if key in _checked:
        return _checked[key]
    certs, problems = [], []
    for path in paths:
        try:
            certs.append(_check_file(path))
        except CertError as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise CertError(f"vars.tls_certs: {'; '.join(problems)}")
    _checked[key] = certs
    return certs


def _identity(path: str) -> tuple[object, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return (path,)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def expiry_notices(certs: list[Cert], now: float | None = None) -> list[str]:
    """One line per certificate that expired or expires within WARN_DAYS, naming the file and the date."""
    now = time.time() if now is None else now
    notices = []
    for cert in certs:
        # The day count is in the text, so a run that logs changed notices only (see the module
        # docstring) repeats each at most once a day.
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cert.not_after))
        days = int(abs(cert.not_after - now) // 86400)
        if cert.not_after <= now:
            notices.append(f"{cert.path}: the certificate expired on {when}, {days} day(s) ago (still served)")
        elif cert.not_after <= now + WARN_DAYS * 86400:
            notices.append(f"{cert.path}: the certificate expires on {when}, in {days} day(s)")
    return notices


def expiry_gauge(certs: list[Cert]) -> None:
    """`serf_handlers_tls_certificate_expiry_timestamp_seconds{file}`: each file's notAfter."""
    from ... import _metrics

    name = _metrics.P + "tls_certificate_expiry_timestamp_seconds"
    _metrics.family(name, {_metrics.labels(file=cert.path): cert.not_after for cert in certs})


def summary(directory: str, certs: list[Cert]) -> str:
    """One line: how many certificates, and the first to expire (`check` and `status`)."""
    first = min(certs, key=lambda c: c.not_after)
    return (f"tls: {len(certs)} certificate(s) in {directory}, the first to expire: {first.path}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime(first.not_after))}")


def status(directory: str, default: str | None = None) -> tuple[str, bool]:
    """`serf-handle status`'s TLS lines, and whether HAProxy would refuse a file."""
    try:
        certs = check(directory, default)
    except CertError as exc:
        return f"tls: refused, the config file cannot be installed: {exc}\n", True
    lines = [summary(directory, certs)]
    lines.extend(f"tls warning: {notice}" for notice in expiry_notices(certs))
    return "\n".join(lines) + "\n", False


def _check_file(path: str) -> Cert:
    import hashlib
    import ssl

    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii")
    except OSError as exc:
        raise CertError(f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CertError("not a PEM file (it is not ASCII text)") from None
    # Each block's lines, without blank lines or carriage returns (see `payload_command`).
    blocks = [(kind, "".join(f"{line}\n" for line in body.split() if line)) for kind, body in _PEM_BLOCK.findall(text)]
    first = next((body for kind, body in blocks if kind == "CERTIFICATE"), None)
    if first is None:
        raise CertError("no certificate in it (expected PEM: the certificate chain, then its private key)")
    if not any(kind.endswith("PRIVATE KEY") for kind, _ in blocks):
        raise CertError("no private key in it (put the certificate chain and its key in one file: cat fullchain.pem "
                        "privkey.pem > FILE)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(path, password=_no_password)
    except _Encrypted:
        raise CertError("its private key is encrypted (HAProxy needs it unencrypted)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise CertError("the private key does not match the certificate") from None
        raise CertError(f"OpenSSL cannot load it: {exc.reason or exc}") from None
    der = ssl.PEM_cert_to_DER_cert(f"-----BEGIN CERTIFICATE-----\n{first}-----END CERTIFICATE-----\n")
    not_after = _not_after(path)
    pem = "".join(f"-----BEGIN {kind}-----\n{body}-----END {kind}-----\n" for kind, body in blocks)
    return Cert(path, hashlib.sha1(der).hexdigest().upper(), not_after, pem)


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    # Never let OpenSSL prompt on a terminal for a passphrase: Serf runs us with no one there.
    raise _Encrypted


def _not_after(path: str) -> float:
    """The first certificate's notAfter; with CPython's certificate decoder, else `openssl x509`."""
    import ssl

    decode: Callable[[str], dict[str, object]] | None = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is not None:
        try:
            return float(ssl.cert_time_to_seconds(str(decode(path)["notAfter"])))
        except (ssl.SSLError, KeyError, ValueError):
            pass
    import subprocess

    try:
        done = subprocess.run(
            ["openssl", "x509", "-noout", "-enddate", "-in", path],
            capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertError(f"cannot read its expiry date: openssl: {exc}") from None
    _, _, when = done.stdout.strip().partition("notAfter=")
    try:
        return float(ssl.cert_time_to_seconds(when))
    except ValueError:
        raise CertError(f"cannot read its expiry date: {done.stderr.strip() or done.stdout.strip()}") from None


# --- the runtime API -------------------------------------------------------------------------


class Refused(HandlerError):
    """HAProxy refused a certificate change; the message carries its words."""


def payload_command(command: str, payload: str) -> bytes:
    """`command <<` followed by `payload` and the empty line that ends it, for one connection.

    The admin socket's client (`_runtime.Client`) refuses newlines, as a defence against
    commands split by untrusted input; this form needs them, so it is allowed only here and
    only for a payload of PEM lines: an empty line ends a payload, and anything after it
    would be read as more commands, so no payload line may be empty or be anything but a
    PEM boundary or base64.
    """
    if any(c in command for c in "\n\r;\0<") or not command.isprintable() or not command.isascii():
        raise ValueError(f"refusing a runtime API command that could split: {command!r}")
    lines = payload.splitlines()
    for line in lines:
        if not (_BASE64_LINE.fullmatch(line) or re.fullmatch(r"-----(BEGIN|END) [A-Z0-9 ]+-----", line)):
            raise ValueError(f"refusing a payload line that is not PEM: {line[:40]!r}")
    if not lines:
        raise ValueError("refusing an empty payload")
    return f"{command} <<\n{payload.rstrip(chr(10))}\n\n".encode("ascii")


def send_payload(socket_path: str, command: str, payload: str, timeout: float) -> str:
    """One command with a payload (`payload_command`) on its own connection; like `_runtime.Client`."""
    import socket

    from ._runtime import Unavailable

    data = payload_command(command, payload)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    try:
        sock.connect(socket_path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as exc:
        raise Unavailable(f"admin socket {socket_path}: {exc.strerror or exc or type(exc).__name__}") from None
    finally:
        sock.close()
    return b"".join(chunks).decode("utf-8", "replace").strip()


class Change(NamedTuple):
    action: str  # "updated", "added", "removed"
    path: str


def apply(socket_path: str, directory: str, certs: list[Cert], timeout: float = 2.0) -> list[Change]:
    """Bring HAProxy's certificates from `directory` to `certs` through the runtime API.

    Raises `_runtime.Unavailable` when the socket does not answer (then a reload is the way),
    Refused when HAProxy refuses a certificate (nothing of it is committed)."""
    from ._runtime import Client

    api = Client(socket_path, timeout)
    loaded, pending = _loaded(api("show ssl cert"), directory)
    for path in pending:  # a transaction left open by an interrupted run would block ours
        api(f"abort ssl cert {path}")
    changes = []
    for cert in certs:
        if cert.path in loaded:
            if _fingerprint(api(f"show ssl cert {cert.path}")) == cert.fingerprint:
                continue
            _replace(api, socket_path, cert, timeout)
            changes.append(Change("updated", cert.path))
        else:
            _expect(api(f"new ssl cert {cert.path}"), "New empty certificate store")
            _replace(api, socket_path, cert, timeout)
            _expect(api(f"add ssl crt-list {directory} {cert.path}"), "Success!")
            changes.append(Change("added", cert.path))
    wanted = {cert.path for cert in certs}
    for path in sorted(loaded - wanted):
        _expect(api(f"del ssl crt-list {directory} {path}"), "deleted in crtlist")
        _expect(api(f"del ssl cert {path}"), "deleted!")
        changes.append(Change("removed", path))
    return changes


def _replace(api: Callable[[str], str], socket_path: str, cert: Cert, timeout: float) -> None:
    _expect(send_payload(socket_path, f"set ssl cert {cert.path}", cert.pem, timeout), "Transaction created")
    reply = api(f"commit ssl cert {cert.path}")
    if "Success!" not in reply:
        api(f"abort ssl cert {cert.path}")
        raise Refused(f"commit ssl cert {cert.path}: {_one_line(reply)}")


def _expect(reply: str, marker: str) -> None:
    if marker not in reply:
        raise Refused(_one_line(reply) or "(no reply)")


def _one_line(reply: str) -> str:
    return " | ".join(line.strip() for line in reply.splitlines() if line.strip())


def _loaded(listing: str, directory: str) -> tuple[set[str], list[str]]:
    """`show ssl cert`: the certificates loaded from `directory`, and the open transactions
    (listed after `# transaction`, a '*' before the name)."""
    loaded, pending = set(), []
    prefix = directory.rstrip("/") + "/"
    for line in listing.splitlines():
        name = line.strip()
        if name.startswith("*"):
            pending.append(name[1:])
        elif name.startswith(prefix) and "/" not in name[len(prefix):]:
            loaded.add(name)
    return loaded, pending


def _fingerprint(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "SHA1 FingerPrint":
            return value.strip().upper()
    return None


def log_changes(changes: list[Change]) -> None:
    for change in changes:
        _log.info(f"haproxy: certificate {change.action} through the runtime API", file=change.path)


def refresh(options: Options) -> list[str]:
    """`serf-handle certs`: check the directory, then make HAProxy serve its files: through the
    runtime API with a `socket`, else (or when the socket does not answer) with the `reload`
    command, after `haproxy -c` of the installed config. Under the handler's lock, so it never
    interleaves with a membership change. Returns what it did, one line each."""
    from ..._files import Lock

    if options.tls is None:
        raise ConfigError("vars.tls_certs: not set (this handler terminates no TLS)")
    directory = options.tls.certs
    with Lock(f"{options.state}.lock"):
        certs = check(directory, options.tls.default_cert)
        expiry_gauge(certs)
        for notice in expiry_notices(certs):
            _log.warning(f"haproxy: {notice}")
        reason = "no admin socket (`socket`)"
        if options.socket is not None:
            from ._runtime import Unavailable

            try:
                changes = apply(options.socket, directory, certs)
            except Unavailable as exc:
                reason = str(exc)
                _log.warning(f"haproxy: certificates not applied through the runtime API: {exc}")
            else:
                log_changes(changes)
                first = min(certs, key=lambda c: c.not_after)
                return [f"{change.action} {change.path} (runtime API, no reload)" for change in changes] or [
                    f"{len(certs)} certificate(s) in {directory} up to date; the first to expire: {first.path}, "
                    f"{time.strftime('%Y-%m-%d', time.gmtime(first.not_after))}"
                ]
        return [_reload(options, reason)]


def _reload(options: Options, reason: str) -> str:
    from . import _state
    from ._install import reload, validate
    from ._options import server_state_file
    from ._runtime import save_server_state

    if options.reload is None:
        raise HandlerError(f"certificates not applied: {reason}, and no `reload` command configured")
    if options.check:
        from ._install import ValidationError

        try:
            validate(options.haproxy, options.config)  # HAProxy loads the new files here, as the reload will
        except ValidationError as exc:
            raise HandlerError(f"certificates not applied, no reload: {str(exc).partition(': ')[2]}") from None
    save_server_state(server_state_file(options), _state.load(options.state).servers)
    reload(options.reload)
    _log.info("haproxy: reloaded to load the certificates", reason=reason)
    return f"reloaded HAProxy to load the certificates ({reason})"
