"""TLS termination in the built-in template (vars.tls_*): the rendered config (both renderers,
byte-identical, accepted by the real `haproxy -c`), the option checks, the certificate checks
(missing directory, unreadable file, key not matching; an expired one only warns) through the real `serf-handle`,
and the runtime API's payload form. Certificates are made here with `openssl`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from serf_handlers.errors import ConfigError
from serf_handlers.events import Member
from serf_handlers.handlers.haproxy import HAProxyHandler, _builtin, _certs
from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE, render
from serf_handlers.handlers.haproxy._options import Tls
from serf_handlers.handlers.haproxy._plan import wanted_from_members
from serf_handlers.handlers.haproxy._render import context as render_context
from serf_handlers.handlers.haproxy._state import EMPTY
from support.certs import make_cert, make_expired_cert
from support.site import Site, member_line, stderr_lines

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("openssl") is None, reason="haproxy or openssl is not installed"
)

# --- certificates, made with openssl (support/certs.py) ---------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "certs"
    make_cert(directory, "a.example")
    make_cert(directory, "b.example")
    return directory


def tls_vars(certs: Path, **more: object) -> dict[str, object]:
    return {"bind": "127.0.0.1:18080", "socket": "/nonexistent/admin.sock", "tls_bind": "127.0.0.1:18443",
            "tls_certs": str(certs), **more}


# --- rendering ----------------------------------------------------------------------------------

VARIANTS = [
    {},
    {"https_redirect": True},
    {"https_redirect": 8443, "hsts": True},
    {"tls_default_cert": "b.example.pem", "hsts": 300},
    {"tls_bind": "*:443", "https_redirect": True, "stats_bind": "127.0.0.1:18404"},
]


@pytest.mark.parametrize("more", VARIANTS)
def test_builtin_and_jinja_render_the_same_valid_tls_config(
    tmp_path: Path, certs: Path, more: dict[str, object]
) -> None:
    h = HAProxyHandler(config=str(tmp_path / "h.cfg"), state=str(tmp_path / "s.json"), vars=tls_vars(certs, **more))
    members = [Member("web1", "10.0.0.1", {"role": "web"}),
               Member("api1", "10.0.0.2", {"role": "web", "backend": "api"})]
    for servers in ({}, wanted_from_members(EMPTY, members, h.options).servers):
        ctx = render_context(h.options, servers)
        text = _builtin.render(ctx)
        assert text == render(BUILTIN_TEMPLATE, ctx)
        (tmp_path / "c.cfg").write_text(text)
        done = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "c.cfg")], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        warnings = [w for w in (done.stdout + done.stderr).splitlines() if "[WARNING]" in w and "state file" not in w]
        assert not warnings
    default = f"crt {certs}/b.example.pem " if more.get("tls_default_cert") else ""
    assert f"    bind {more.get('tls_bind', '127.0.0.1:18443')} ssl {default}crt {certs} alpn h2,http/1.1\n" in text
    assert "ssl-default-bind-options prefer-client-ciphers ssl-min-ver TLSv1.2 no-tls-tickets\n" in text
    assert "    option forwardfor\n" in text and "X-Forwarded-Proto https if { ssl_fc }" in text
    assert ("redirect location https://" in text) == bool(more.get("https_redirect"))
    if more.get("https_redirect") == 8443:
        assert "regsub(:[0-9]+$,)]:8443%[capture.req.uri] code 301 unless { ssl_fc }" in text
    if more.get("tls_bind") == "*:443":
        assert "regsub(:[0-9]+$,)]%[capture.req.uri]" in text  # the default port is left out
    hsts = {True: 63072000, 300: 300}.get(more.get("hsts"))  # type: ignore[arg-type]
    assert (f'Strict-Transport-Security "max-age={hsts}"' in text) == bool(hsts)


def test_without_tls_nothing_changes(tmp_path: Path) -> None:
    text = HAProxyHandler(config=str(tmp_path / "h.cfg"))._render({})
    assert "ssl" not in text.replace("httpclient.ssl.verify", "") and "forwardfor" not in text


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"tls_bind": "*:443"}, "vars.tls_bind, vars.tls_certs: set both"),
        ({"tls_certs": "/etc/certs"}, "vars.tls_bind, vars.tls_certs: set both"),
        ({"https_redirect": True}, "vars.https_redirect: needs vars.tls_bind"),
        ({"hsts": True}, "vars.hsts: needs vars.tls_bind"),
        ({"tls_bind": "*", "tls_certs": "/c"}, "vars.tls_bind: expected an address with a port"),
        ({"tls_bind": "*:443 ssl crt /x", "tls_certs": "/c"}, "vars.tls_bind: expected an address with a port"),
        ({"tls_bind": "*:443", "tls_certs": "certs"}, "vars.tls_certs: expected an absolute directory path"),
        ({"tls_bind": "*:443", "tls_certs": "/c d"}, "vars.tls_certs: expected an absolute directory path"),
        ({"tls_bind": "*:443", "tls_certs": "/c", "tls_default_cert": "../x"}, "vars.tls_default_cert"),
        ({"tls_bind": "*:443", "tls_certs": "/c", "https_redirect": "yes"}, "vars.https_redirect: expected"),
        ({"tls_bind": "*:443", "tls_certs": "/c", "hsts": -1}, "vars.hsts: expected"),
    ],
)
def test_bad_tls_vars_are_config_errors(tls: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        HAProxyHandler(vars=tls)


def test_tls_vars_are_normalised() -> None:
    v = HAProxyHandler(vars={"tls_bind": "*:8443", "tls_certs": "/etc/certs/", "https_redirect": True, "hsts": True})
    assert v.options.vars["tls_certs"] == "/etc/certs"
    assert v.options.vars["https_redirect"] == 8443 and v.options.vars["hsts"] == 63072000
    # The typed record the code reads, built once from the same values.
    assert v.options.tls == Tls("*:8443", "/etc/certs", None, 8443, 63072000)
    plain = HAProxyHandler(vars={"tls_bind": "*:443", "tls_certs": "/c", "tls_default_cert": "a.pem"}).options.tls
    assert plain == Tls("*:443", "/c", "a.pem", None, None)
    assert HAProxyHandler().options.tls is None


# --- the certificate checks ---------------------------------------------------------------------


def test_check_lists_what_haproxy_loads_in_its_order(certs: Path, tmp_path: Path) -> None:
    found = _certs.check(str(certs))
    assert [Path(c.path).name for c in found] == ["a.example.pem", "b.example.pem"]
    assert all(len(c.fingerprint) == 40 and "PRIVATE KEY" in c.pem for c in found)
    extra = tmp_path / "extra"
    shutil.copytree(certs, extra)
    (extra / "a.example.pem.ocsp").write_text("x")
    (extra / ".hidden").write_text("x")
    (extra / "sub").mkdir()
    assert _certs.files(str(extra)) == ["a.example.pem", "b.example.pem"]


def bad_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a certificate directory, what the one-line error must say about which file)."""
    good = tmp_path / "good"
    a = make_cert(good, "a.example")
    cases: dict[str, tuple[Path, str]] = {}
    d = tmp_path / "missing"
    cases["missing directory"] = (d, f"vars.tls_certs: {d}: cannot read the directory: No such file or directory")
    d = tmp_path / "empty"
    d.mkdir()
    cases["no files"] = (d, f"vars.tls_certs: {d}: no certificate files in it")
    d = tmp_path / "dangling"
    make_cert(d, "a.example")
    (d / "z.pem").symlink_to(tmp_path / "nowhere.pem")
    cases["unreadable file"] = (d, f"{d}/z.pem: cannot read it: No such file or directory")
    d = tmp_path / "mismatch"
    make_cert(d, "a.example")
    make_cert(d, "b.example", key_from=a)
    cases["key not matching"] = (d, f"{d}/b.example.pem: the private key does not match the certificate")
    d = tmp_path / "nokey"
    d.mkdir()
    (d / "a.pem").write_text(a.read_text().split("-----BEGIN PRIVATE KEY-----")[0])
    cases["no key"] = (d, f"{d}/a.pem: no private key in it")
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "a.pem").write_text("hello\n")
    cases["not PEM"] = (d, f"{d}/a.pem: no certificate in it")
    return cases


def test_each_bad_certificate_is_named_in_one_line(tmp_path: Path) -> None:
    for name, (directory, message) in bad_cases(tmp_path).items():
        with pytest.raises(_certs.CertError) as info:
            _certs.check(str(directory))
        assert message in str(info.value), name
        assert "\n" not in str(info.value)
    with pytest.raises(_certs.CertError, match=r"vars\.tls_default_cert: .*/good/nope\.pem: no such certificate file"):
        _certs.check(str(tmp_path / "good"), "nope.pem")


def test_every_run_and_check_refuse_a_bad_certificate_and_keep_the_config(tmp_path: Path) -> None:
    """Through the real serf-handle: each bad directory makes `check` and a member-join exit 1
    with one line naming the file; haproxy.cfg stays byte-identical; the member is kept for
    the run after the certificate is fixed."""
    certs = tmp_path / "live"
    make_cert(certs, "a.example")
    site = Site(tmp_path / "site", vars={**tls_vars(certs)})
    assert site.join(member_line("web1", "10.0.0.1")).returncode == 0
    installed = site.config.read_bytes()
    assert f"crt {certs} alpn h2,http/1.1".encode() in installed
    for i, (name, (directory, message)) in enumerate(bad_cases(tmp_path / "bad").items()):
        site.write_yml(vars=tls_vars(directory))
        for done in (site.run(None, args=["check"]), site.join(member_line(f"web{i + 2}", f"10.0.0.{i + 2}"))):
            assert done.returncode == 1, (name, done.stderr)
            errors = stderr_lines(done)  # (a run: the handler's ERROR record, then the summary)
            assert errors[-1].startswith("serf-handle: error: ") and message in errors[-1], (name, errors)
            assert len(errors) <= 2 and b"Traceback" not in done.stderr
        assert site.config.read_bytes() == installed, name
    site.write_yml(vars=tls_vars(certs))
    check = site.run(None, args=["check"])
    assert check.returncode == 0 and b"tls: 1 certificate(s) in " in check.stdout
    assert site.join().returncode == 0
    assert site.servers() == {"web1", *(f"web{i + 2}" for i in range(len(bad_cases(tmp_path / "again"))))}


def test_haproxy_c_message_reaches_the_user(tmp_path: Path, certs: Path) -> None:
    """What our own checks let through but HAProxy refuses (here an address it cannot bind):
    `haproxy -c`'s alert is the run's error line; nothing is installed."""
    site = Site(tmp_path / "site", vars=tls_vars(certs, tls_bind="256.0.0.1:443"))
    done = site.join(member_line("web1", "10.0.0.1"))
    errors = stderr_lines(done)
    assert done.returncode == 1
    assert "haproxy rejected the new config" in errors[-1] and "256.0.0.1" in errors[-1], errors
    assert not site.config.exists()


# --- the runtime API's payload form -------------------------------------------------------------


def test_payload_command_only_carries_pem(certs: Path) -> None:
    cert = _certs.check(str(certs))[0]
    data = _certs.payload_command(f"set ssl cert {cert.path}", cert.pem)
    assert data.startswith(f"set ssl cert {cert.path} <<\n-----BEGIN CERTIFICATE-----\n".encode())
    assert data.endswith(b"-----END PRIVATE KEY-----\n\n") and b"\n\n" not in data[:-2]
    for command, payload in [
        ("set ssl cert /x.pem\ndel server web/a", cert.pem),
        ("set ssl cert /x.pem; shutdown sessions", cert.pem),
        ("set ssl cert /x.pem <<", cert.pem),
        ("set ssl cert /x.pem", cert.pem + "\nshutdown frontend http\n"),
        ("set ssl cert /x.pem", cert.pem.replace("\n", "\n\n", 1)),
        ("set ssl cert /x.pem", ""),
    ]:
        with pytest.raises(ValueError, match="refusing"):
            _certs.payload_command(command, payload)


# --- an expiring certificate is a warning, never a stop (issue 18) --------------------------------


@pytest.mark.parametrize(
    ("not_after", "expected"),
    [
        pytest.param(1_000_000.0 + 30 * 86400, None, id="30 days left: nothing"),
        pytest.param(1_000_000.0 + 13.5 * 86400, "expires on 1970-01-26 01:46:40 UTC, in 13 day(s)",
                     id="within WARN_DAYS: expires"),
        pytest.param(1_000_000.0 - 2.5 * 86400, "expired on 1970-01-10 01:46:40 UTC, 2 day(s) ago (still served)",
                     id="past: expired, with the days (so the warning is repeated at most once a day)"),
    ],
)
def test_expiry_notices(not_after: float, expected: str | None) -> None:
    cert = _certs.Cert("/c/a.pem", "AB", not_after, "")
    notices = _certs.expiry_notices([cert], now=1_000_000.0)
    assert notices == ([] if expected is None else [f"/c/a.pem: the certificate {expected}"])


def test_an_expired_certificate_warns_once_and_the_membership_changes(tmp_path: Path) -> None:
    """Through the real serf-handle (reload mode): the joins are installed and exit 0; the
    warning names the file and is logged by the first run only; `check` exits 1 naming it;
    the gauge carries its notAfter."""
    certs = tmp_path / "certs"
    make_cert(certs, "a.example")
    old = make_expired_cert(certs, "old.example")
    site = Site(tmp_path / "site", vars=tls_vars(certs))
    site.metrics = tmp_path / "metrics.prom"
    site.write_yml()
    first = site.join(member_line("web1", "10.0.0.1"))
    second = site.join(member_line("web2", "10.0.0.2"))
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert site.servers() == {"web1", "web2"} and len(site.server_lines()) == 2
    warning = f"{old}: the certificate expired on 2020-02-01 00:00:00 UTC"
    assert warning.encode() in first.stderr and b"WARNING" in first.stderr
    assert warning.encode() not in second.stderr
    assert f'tls_certificate_expiry_timestamp_seconds{{file="{old}"}} 1580515200'.encode() in \
        site.metrics.read_bytes()
    check = site.run(None, args=["check"])
    assert check.returncode == 1 and warning in check.stderr.decode() and "renew" in check.stderr.decode()
    status = site.run(None, args=["status"])
    assert status.returncode == 0 and f"tls warning: {warning}".encode() in status.stdout
