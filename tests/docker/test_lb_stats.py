"""The load-balancer image's stats page, metrics and TLS termination, run for real.

One Docker network, two web nodes and three load balancers:

- `stats`: the image's defaults, with the stats port (8404) published on 127.0.0.1. The web
  nodes are started one at a time after it, so each join is an event of its own.
  /stats lists every web node, /metrics (HAProxy's exporter) and /metrics/serf-handlers
  (the handler's file, served by HAProxy's Lua service) parse with prometheus_client's
  text parser, and the handler counted the joins without a single reload.
- `auth`: LB_STATS_AUTH set: all three paths answer 401 without credentials.
- `tls`: a directory with two self-signed certificates (made with openssl in the test's
  tmp dir) mounted as LB_TLS_CERTS, HTTPS (LB_HTTPS_PORT, 443) published on 127.0.0.1:
  each name gets its own certificate by SNI and reaches the web nodes;
  LB_HTTPS_REDIRECT=<published port> redirects plain HTTP there.

Every container and the network get a random suffix and are removed by a finalizer, even
when a step fails. Test traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docker.helpers import (
    LB_IMAGE,
    NODE_RE,
    WEB_IMAGE,
    container_logs,
    free_port,
    run,
    wait_for,
    wait_for_rotation,
)

prometheus_parser = pytest.importorskip("prometheus_client.parser")

pytestmark = pytest.mark.docker

SUFFIX = secrets.token_hex(4)
WEB_NODES = 2
STATS_AUTH = ("admin", secrets.token_urlsafe(12).replace("-", "x"))
TLS_NAMES = ("lb.test", "other.test")


@dataclass
class Net:
    name: str
    encrypt_key: str
    containers: list[str] = field(default_factory=list)
    webs: list[str] = field(default_factory=list)
    ports: dict[str, dict[int, int]] = field(default_factory=dict)  # lb -> container port -> host port

    def logs(self) -> str:
        return container_logs(self.containers)

    def start_lb(self, role: str, *args: str, publish: tuple[int, ...] = (80,), alias: str | None = None) -> str:
        name = f"sh-test-{role}-{SUFFIX}"
        self.containers.append(name)
        self.ports[name] = {port: free_port() for port in publish}
        published = [arg for port, host in self.ports[name].items() for arg in ("-p", f"127.0.0.1:{host}:{port}")]
        aliases = ["--network-alias", alias] if alias else []
        run(
            "docker", "run", "-d", "--name", name, "--hostname", name, "--network", self.name, *aliases,
            *published,
            "-e", f"SERF_NODE={name}", "-e", "SERF_JOIN=web", "-e", f"SERF_ENCRYPT_KEY={self.encrypt_key}",
            *args, LB_IMAGE,
        )  # fmt: skip
        return name

    def start_web(self, n: int) -> str:
        name = f"sh-test-statsweb{n}-{SUFFIX}"
        self.containers.append(name)
        run(
            "docker", "run", "-d", "--name", name, "--hostname", name,
            "--network", self.name, "--network-alias", "web",
            "-e", f"SERF_NODE={name}", "-e", "SERF_JOIN=lb", "-e", f"SERF_ENCRYPT_KEY={self.encrypt_key}",
            WEB_IMAGE,
        )  # fmt: skip
        self.webs.append(name)
        return name

    def url(self, lb: str, port: int, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[lb][port]}{path}"


@pytest.fixture(scope="module")
def net(images: None, request: pytest.FixtureRequest) -> Net:
    n = Net(name=f"sh-test-statsnet-{SUFFIX}", encrypt_key=base64.b64encode(os.urandom(32)).decode())

    def remove_all() -> None:
        for name in reversed(n.containers):
            run("docker", "rm", "-f", "-v", name, check=False, timeout=60)
        run("docker", "network", "rm", n.name, check=False, timeout=60)

    request.addfinalizer(remove_all)
    run("docker", "network", "create", n.name)
    return n


@pytest.fixture(scope="module")
def stats_lb(net: Net) -> str:
    """The image's defaults (stats on 8404, no auth); the web nodes join one at a time."""
    lb = net.start_lb("stats", publish=(80, 8404), alias="lb")
    for n in range(1, WEB_NODES + 1):
        net.start_web(n)
        wait_for_rotation(net.url(lb, 80), set(net.webs), logs=net.logs, timeout=60)
    return lb


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 5) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body; an HTTP error status is an answer too."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode(errors="replace")


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], through prometheus_client's text parser."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    found = [v for sample_labels, v in samples.get(name, []) if sample_labels == labels]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------- stats and metrics


def test_stats_page_lists_every_web_node(net: Net, stats_lb: str) -> None:
    status, headers, body = get(net.url(stats_lb, 8404, "/stats"))
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("text/html")
    assert "<html" in body.lower()
    missing = [web for web in net.webs if web not in body]
    assert missing == [], f"{missing} not on the stats page\n{net.logs()}"


def test_haproxy_metrics_parse_and_have_every_web_server(net: Net, stats_lb: str) -> None:
    status, _, body = get(net.url(stats_lb, 8404, "/metrics"))
    assert status == 200, body[:300]
    samples = parse(body)
    server_samples = {name: s for name, s in samples.items() if name.startswith("haproxy_server_")}
    assert server_samples, f"no haproxy_server_* metrics among {sorted(samples)[:20]}"
    for name in ("haproxy_server_status", "haproxy_server_current_sessions", "haproxy_server_bytes_in_total"):
        assert {labels["server"] for labels, _ in samples.get(name, []) if labels.get("proxy") == "web"} == set(
            net.webs
        ), f"{name}: {samples.get(name)}"
    # Every web server is up (its health check on /healthz passes).
    for web in net.webs:
        assert value(samples, "haproxy_server_status", proxy="web", server=web, state="UP") == 1, web


def test_handler_metrics_count_the_joins_without_a_reload(net: Net, stats_lb: str) -> None:
    last: list[str] = [""]

    def counted() -> bool:
        status, _, body = get(net.url(stats_lb, 8404, "/metrics/serf-handlers"))
        last[0] = f"{status}\n{body}"
        if status != 200:
            return False
        samples = parse(body)
        return value(samples, "serf_handlers_haproxy_servers", backend="web", state="ready") == WEB_NODES

    try:
        wait_for("the handler's metrics to show every web server", counted, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0][:2000]}\n{net.logs()}") from None
    status, headers, body = get(net.url(stats_lb, 8404, "/metrics/serf-handlers"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples = parse(body)
    joins = value(samples, "serf_handlers_events_total", type="member-join")
    assert joins is not None and joins >= WEB_NODES, f"member-join events: {joins}\n{body}"
    assert value(samples, "serf_handlers_haproxy_reloads_total") == 0, body
    assert value(samples, "serf_handlers_haproxy_reload_failures_total") == 0, body
    assert value(samples, "serf_handlers_runs_total", command="handle", result="failed") in (None, 0), body
    assert value(samples, "serf_handlers_last_run_exit_code", command="handle") == 0, body
    assert sum(v for _, v in samples["serf_handlers_handler_failures_total"]) == 0, body


def test_stats_auth_answers_401_without_credentials(net: Net) -> None:
    lb = net.start_lb("statsauth", "-e", f"LB_STATS_AUTH={STATS_AUTH[0]}:{STATS_AUTH[1]}", publish=(8404,))

    def answers() -> bool:
        try:
            get(net.url(lb, 8404, "/stats"), timeout=2)
        except OSError:
            return False
        return True

    try:
        wait_for("the stats frontend to answer", answers, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{net.logs()}") from None
    for path in ("/stats", "/metrics", "/metrics/serf-handlers", "/"):
        status, headers, _ = get(net.url(lb, 8404, path))
        assert status == 401, f"{path}: {status} without credentials"
        assert headers.get("www-authenticate", "").startswith("Basic"), headers
        assert get(net.url(lb, 8404, path), auth=(STATS_AUTH[0], "wrong"))[0] == 401, path
    status, _, body = get(net.url(lb, 8404, "/stats"), auth=STATS_AUTH)
    assert status == 200 and "<html" in body.lower()
    status, _, body = get(net.url(lb, 8404, "/metrics"), auth=STATS_AUTH)
    assert status == 200 and parse(body)

    def handler_metrics() -> bool:
        return get(net.url(lb, 8404, "/metrics/serf-handlers"), auth=STATS_AUTH)[0] == 200

    wait_for("the handler's metrics behind auth", handler_metrics, timeout=30)
    # The password never reaches the logs.
    assert STATS_AUTH[1] not in container_logs([lb], tail=1000)


# ---------------------------------------------------------------- TLS termination


@dataclass
class Certs:
    directory: Path
    ca: dict[str, Path]  # name -> its self-signed certificate, the client's trust anchor


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    base = tmp_path_factory.mktemp("tls")
    directory = base / "certs"
    directory.mkdir()
    ca: dict[str, Path] = {}
    for name in TLS_NAMES:
        key, crt = base / f"{name}.key", base / f"{name}.crt"
        run(
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
        )  # fmt: skip
        pem = directory / f"{name}.pem"  # HAProxy's form: the chain, then the key
        pem.write_text(crt.read_text() + key.read_text())
        pem.chmod(0o644)
        ca[name] = crt
    # Readable inside the mount whatever host uid the container's root maps to (a rootless
    # or user-namespaced daemon): HAProxy's master reads the directory as that root.
    for path in (base, directory):
        path.chmod(0o755)
    return Certs(directory=directory, ca=ca)


def https_get(port: int, name: str, cafile: Path, path: str = "/") -> tuple[int, str, str]:
    """GET over TLS to 127.0.0.1:port with SNI `name`, trusting only `cafile`.

    Returns the status, the body and the negotiated ALPN protocol. The handshake fails
    unless the load balancer presents `name`'s own certificate.
    """
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        return response.status, response.read().decode(), tls.selected_alpn_protocol() or ""


@pytest.fixture(scope="module")
def tls_lb(net: Net, certs: Certs, stats_lb: str) -> str:
    # HTTPS inside the container on the default 443, published elsewhere: the redirect names
    # the published port.
    https_port = free_port()
    lb = f"sh-test-tls-{SUFFIX}"
    net.containers.append(lb)
    net.ports[lb] = {80: free_port(), 443: https_port}
    run(
        "docker", "run", "-d", "--name", lb, "--hostname", lb, "--network", net.name,
        "-p", f"127.0.0.1:{net.ports[lb][80]}:80", "-p", f"127.0.0.1:{https_port}:443",
        "-v", f"{certs.directory}:/etc/haproxy/certs:ro",
        "-e", f"SERF_NODE={lb}", "-e", "SERF_JOIN=web", "-e", f"SERF_ENCRYPT_KEY={net.encrypt_key}",
        "-e", "LB_TLS_CERTS=/etc/haproxy/certs", "-e", f"LB_HTTPS_REDIRECT={https_port}", "-e", "LB_STATS_PORT=off",
        LB_IMAGE,
    )  # fmt: skip
    return lb


def test_https_with_sni_reaches_every_web_node(net: Net, certs: Certs, tls_lb: str) -> None:
    port = net.ports[tls_lb][443]
    seen: set[str] = set()
    errors: list[str] = []

    def reached_all() -> bool:
        for _ in range(4 * WEB_NODES):
            for name in TLS_NAMES:
                try:
                    status, body, alpn = https_get(port, name, certs.ca[name], "/")
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(f"{name}: {exc!r}")
                    continue
                match = NODE_RE.search(body)
                if status == 200 and match and alpn == "http/1.1":
                    seen.add(match.group(1))
                else:
                    errors.append(f"{name}: {status} {alpn} {body[:100]!r}")
        return seen == set(net.webs)

    try:
        wait_for("HTTPS to reach every web node", reached_all, timeout=60, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: saw {sorted(seen)}, errors {errors[-3:]}\n{net.logs()}") from None

    # Each name got its own certificate: the other name's certificate does not verify.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, TLS_NAMES[0], certs.ca[TLS_NAMES[1]])
    # /whoami through TLS, after the retries above settled: every request answers now.
    for name in TLS_NAMES:
        status, body, _ = https_get(port, name, certs.ca[name], "/whoami")
        assert status == 200 and body.strip() in net.webs, (name, status, body)


def test_plain_http_is_redirected_to_the_published_https_port(net: Net, certs: Certs, tls_lb: str) -> None:
    https_port = net.ports[tls_lb][443]
    connection = http.client.HTTPConnection("127.0.0.1", net.ports[tls_lb][80], timeout=5)
    deadline = time.monotonic() + 30
    while True:  # until HAProxy listens (it does before the first web node is added)
        try:
            connection.request("GET", "/some/path?q=1", headers={"Host": f"{TLS_NAMES[0]}:8080"})
            response = connection.getresponse()
            response.read()
            break
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    connection.close()
    assert response.status == 301, (response.status, response.getheaders())
    location = response.getheader("Location")
    assert location == f"https://{TLS_NAMES[0]}:{https_port}/some/path?q=1"
    # Following it lands on a web node (over TLS, with SNI).
    status, body, _ = https_get(https_port, TLS_NAMES[0], certs.ca[TLS_NAMES[0]], "/whoami")
    assert status == 200 and body.strip() in net.webs
