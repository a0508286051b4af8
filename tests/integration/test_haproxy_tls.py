"""TLS termination with a real HAProxy on loopback (issue 14, part 1): certificates picked by
SNI (two names, two certificates made here with `openssl`; clients without SNI get the
default), ALPN h2, plain HTTP redirected, X-Forwarded-For/-Proto reaching the web nodes, and
renewed, added and removed certificates applied by `serf-handle certs` under load: through
the runtime API with 0 reloads, and by the reload fallback without a socket: 0 failed requests."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.certs import make_cert
from support.processes import Processes, free_port, start_haproxy, wait_until
from support.site import Site, member_line

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("haproxy", "openssl", "curl")), reason="needs haproxy, openssl and curl"
)


class _Echo(BaseHTTPRequestHandler):
    """A web node: answers with its name and the forwarding headers it received."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (f"node={self.server.name} xff={self.headers.get_all('X-Forwarded-For')} "  # type: ignore[attr-defined]
                f"xfp={self.headers.get('X-Forwarded-Proto')}\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy's TCP health checks connect and close: not worth a traceback


@pytest.fixture
def webs() -> Iterator[list[int]]:
    servers = []
    for name in ("web1", "web2"):
        server = _Server(("127.0.0.1", free_port()), _Echo)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield [s.server_address[1] for s in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class TLSSite:
    """A load balancer: the handler's files, HAProxy (master-worker) from its config, two web nodes."""

    def __init__(self, procs: Processes, directory: Path, webs: list[int], live: bool, **tls: object) -> None:
        self.certs = directory / "certs"
        self.port, self.tls_port = free_port(), free_port()
        self.site = Site(directory / "site", log={"level": "info", "format": "text",
                                                   "file": str(directory / "handler.log")})
        self.site.procs, self.site.mode = procs, "runtime"
        sock = str(self.site.admin_socket)
        self.site.write_yml(
            vars={"bind": f"127.0.0.1:{self.port}", "socket": sock, "tls_bind": f"127.0.0.1:{self.tls_port}",
                  "tls_certs": str(self.certs), **tls},
            reload=self.site.reload_argv(), socket=sock if live else None,
        )
        self.site.must("render", "--write")
        start_haproxy(procs, self.site.config, self.site.pidfile)
        wait_until(lambda: self.site.admin_socket.exists(), what="the admin socket")
        for i, port in enumerate(webs, 1):
            self.site.must(event="member-join", stdin=member_line(f"web{i}", "127.0.0.1", port=str(port)))
        wait_until(lambda: self.get("a.example")[0] == 200, what="HTTPS through HAProxy")

    def certs_command(self) -> subprocess.CompletedProcess[bytes]:
        return self.site.run(None, args=["certs"])

    def context(self, alpn: list[str] | None = None, no_verify: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata="".join(p.read_text() for p in sorted(self.certs.glob("*.pem"))))
        if no_verify:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def handshake(self, name: str | None, alpn: list[str] | None = None) -> tuple[str, str | None, str]:
        """(the CN of the certificate served for SNI `name`, the ALPN protocol, its SHA-1)."""
        import hashlib

        ctx = self.context(alpn, no_verify=True)
        with (
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return _cn(der), tls.selected_alpn_protocol(), hashlib.sha1(der).hexdigest().upper()

    def get(self, name: str, path: str = "/", ctx: ssl.SSLContext | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=5, context=ctx or self.context())
        try:
            conn.sock = (ctx or self.context()).wrap_socket(
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=5), server_hostname=name)
            conn.request("GET", path, headers={"Host": name, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(), dict(resp.getheaders())
        except (OSError, http.client.HTTPException) as exc:
            return 0, f"{type(exc).__name__}: {exc}", {}
        finally:
            conn.close()


def _cn(der: bytes) -> str:
    done = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-nameopt", "multiline"],
                          input=der, capture_output=True, timeout=10, check=True)
    return done.stdout.decode().split("commonName")[1].split("=")[1].strip()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_sni_alpn_redirect_and_forwarded_headers(procs: Processes, tmp_path: Path, webs: list[int]) -> None:
    certs = tmp_path / "certs"
    a = make_cert(certs, "a.example")
    make_cert(certs, "b.example")
    lb = TLSSite(procs, tmp_path, webs, live=True, tls_default_cert="b.example.pem", https_redirect=True, hsts=True)
    # Each name gets its own certificate; a client without SNI the configured default; h2 by ALPN.
    assert lb.handshake("a.example", ["h2", "http/1.1"])[:2] == ("a.example", "h2")
    assert lb.handshake("b.example", ["h2", "http/1.1"])[:2] == ("b.example", "h2")
    assert lb.handshake(None)[0] == "b.example"
    # curl over HTTP/2, verifying the certificate for the name, through --resolve.
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(a), "--resolve", f"a.example:{lb.tls_port}:127.0.0.1",
         "-w", "\\n%{http_version}", f"https://a.example:{lb.tls_port}/"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit("\n", 1)
    assert version == "2" and body.startswith("node=web") and "xfp=https" in body
    # The web nodes get the client's address (a forged X-Forwarded-For is dropped) and the scheme.
    status, body, headers = lb.get("a.example", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "ftp"})
    assert status == 200 and "xff=['127.0.0.1']" in body and "xfp=https" in body, body
    assert headers.get("strict-transport-security") == "max-age=63072000"
    assert {lb.get("a.example")[1].split()[0] for _ in range(6)} == {"node=web1", "node=web2"}
    # Plain HTTP: a redirect to the same host and path over HTTPS (on the HTTPS port).
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
    conn.request("GET", "/some/path?q=1", headers={"Host": f"a.example:{lb.port}"})
    resp = conn.getresponse()
    assert resp.status == 301 and resp.getheader("Location") == f"https://a.example:{lb.tls_port}/some/path?q=1"
    assert resp.getheader("Strict-Transport-Security") is None
    conn.close()
    # TLS 1.1 is refused.
    ctx = lb.context(no_verify=True)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", lb.tls_port), timeout=5) as raw:
        ctx.wrap_socket(raw, server_hostname="a.example")


class TLSLoad:
    """Bounded HTTPS load: `threads` clients, each a new connection and handshake per request
    (so each sees the certificate served at that moment), plus one keep-alive client. At most
    `limit` requests in all and `seconds` seconds."""

    def __init__(self, lb: TLSSite, ctx: ssl.SSLContext, threads: int = 3, limit: int = 20_000,
                 seconds: float = 120) -> None:
        self.lb, self.ctx, self.limit, self.seconds = lb, ctx, limit, seconds
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(threads)]
        self.threads.append(threading.Thread(target=self._keepalive, daemon=True))

    def __enter__(self) -> TLSLoad:
        self.deadline = time.monotonic() + self.seconds
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)

    def _count(self, status: int, body: str) -> bool:
        with self.lock:
            if status == 200 and body.startswith("node=web"):
                self.ok += 1
            else:
                self.failures.append(f"{status} {body[:120]}")
            return self.ok + len(self.failures) < self.limit

    def _running(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline

    def _fresh(self) -> None:
        while self._running():
            if not self._count(*self.lb.get("a.example", ctx=self.ctx)[:2]):
                return

    def _keepalive(self) -> None:
        conn = None
        while self._running():
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", self.lb.tls_port, timeout=5, context=self.ctx)
                    conn.sock = self.ctx.wrap_socket(
                        socket.create_connection(("127.0.0.1", self.lb.tls_port), timeout=5),
                        server_hostname="a.example")
                conn.request("GET", "/", headers={"Host": "a.example"})
                resp = conn.getresponse()
                status, body = resp.status, resp.read().decode()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, f"keep-alive: {type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            if not self._count(status, body):
                break
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("live", [True, False], ids=["runtime-api", "reload"])
def test_certificate_renewal_under_load_fails_no_request(
    procs: Processes, tmp_path: Path, webs: list[int], live: bool
) -> None:
    certs = tmp_path / "certs"
    make_cert(certs, "a.example")
    make_cert(certs, "b.example")
    staged = tmp_path / "staged"  # the renewed certificate, made before the load starts
    renewed = make_cert(staged, "a.example", days=90)
    make_cert(staged, "c.example")
    lb = TLSSite(procs, tmp_path, webs, live=live)
    old = lb.handshake("a.example")[2]
    # The clients trust the old and the new certificates, and check the name.
    trusted = [*certs.glob("*.pem"), *staged.glob("*.pem")]
    ctx = ssl.create_default_context(cadata="".join(p.read_text() for p in trusted))
    check = lb.certs_command()
    assert check.returncode == 0, check.stderr
    assert (b"up to date" in check.stdout) == live
    reloads_before = lb.site.reload_count()
    with TLSLoad(lb, ctx) as load:
        time.sleep(1)
        # Renewal: a new file renamed over the old one (as a certbot deploy hook does), then `certs`.
        tmp = certs / ".a.example.pem.new"
        shutil.copy(renewed, tmp)
        tmp.replace(certs / "a.example.pem")
        done = lb.certs_command()
        assert done.returncode == 0, done.stderr
        new = wait_until(lambda: (fp := lb.handshake("a.example")[2]) != old and fp, timeout=10, what="renewed cert")
        time.sleep(1)
        if live:
            assert done.stdout.decode().strip().endswith(f"updated {certs}/a.example.pem (runtime API, no reload)")
            # A new name, then gone again, also without a reload.
            shutil.copy(staged / "c.example.pem", certs / "c.example.pem")
            assert b"added" in lb.certs_command().stdout
            assert lb.handshake("c.example")[0] == "c.example"
            (certs / "c.example.pem").unlink()
            assert b"removed" in lb.certs_command().stdout
            assert lb.handshake("c.example")[0] == "a.example"  # unknown name: the default (the first file)
            time.sleep(1)
    total = load.ok + len(load.failures)
    assert load.failures == [] and load.ok > 50, (total, load.failures[:5])
    assert new != old
    assert lb.site.reload_count() - reloads_before == (0 if live else 1)
    print(f"\n{'runtime API' if live else 'reload'}: {total} HTTPS requests during the renewal, "
          f"{len(load.failures)} failed")
