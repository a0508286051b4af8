"""Issue 18: nothing but membership stops membership. With a real HAProxy (runtime-API mode),
real serf agents and nginx on loopback, under a light bounded load:

- one expired certificate in `vars.tls_certs` (HAProxy loads it): a join is routed and a
  leave removed within 1 s of Serf starting the run, 0 failed requests; one warning naming
  the file, not repeated by later runs; the expiry gauge; `check` exits 1 naming it;
- a certificate HAProxy refuses, then a broken template: the join and the leave still reach
  HAProxy's live servers through the runtime API; the run exits 1 with one line; `status`
  says the file is behind; haproxy.cfg is untouched; after the fix the next event installs
  the file with no reload.

Judged by HAProxy's live servers (`show servers state`) and traffic. The helpers of
test_haproxy_convergence.py are reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from support.certs import make_cert, make_expired_cert
from support.load import Load
from support.processes import Processes, require, wait_until
from support.site import Site
from tests.integration.test_haproxy_convergence import live, mark, next_run, start_lb, started_at, status

pytestmark = pytest.mark.integration


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py


def tls_vars(procs: Processes, certs: Path) -> dict[str, str]:
    from support.processes import free_port

    return {"tls_bind": f"127.0.0.1:{free_port()}", "tls_certs": str(certs)}


def routed_within(lb: Site, after: int, event: str, wanted: set[str]) -> float:
    """Seconds from Serf starting the `event` run to HAProxy's live servers being `wanted`."""
    began = started_at(lb, event, after)
    wait_until(lambda: set(live(lb)) == wanted, timeout=20, interval=0.02, what=f"HAProxy serving {wanted}")
    return time.time() - began


def warnings(lb: Site, text: str) -> list[str]:
    return [str(r["message"]) for r in lb.records() if r.get("level") == "warning" and text in str(r.get("message"))]


def test_an_expired_certificate_warns_and_membership_goes_on(procs: Processes) -> None:
    require("serf", "haproxy", "nginx", "openssl")
    certs = procs.workdir / "certs"
    make_cert(certs, "a.test")
    expired = make_expired_cert(certs, "b.test")
    metrics = procs.workdir / "metrics.prom"
    lb = start_lb(procs, webs=("web1",), serve_vars=tls_vars(procs, certs))
    lb.metrics = metrics
    lb.write_yml()
    with Load(lb.port, rate=40, seconds=120) as load:
        after = mark(lb)
        lb.add_web("web2", "body-web2")
        joined = routed_within(lb, after, "member-join", {"web1", "web2"})
        assert next_run(lb, after, "member-join").code == 0
        after = mark(lb)
        lb.webs["web1"].leave()
        left = routed_within(lb, after, "member-leave", {"web2"})
        assert next_run(lb, after, "member-leave").code == 0
        time.sleep(0.5)
    print(f"expired certificate: join routed {joined:.2f} s, leave removed {left:.2f} s after Serf started the run; "
          f"{len(load.failures)} of {load.requests} requests failed")
    assert load.failures == [] and load.requests > 50
    assert joined < 1.0 and left < 1.0
    said = warnings(lb, f"{expired}: the certificate expired on 2020-02-01 00:00:00 UTC")
    assert len(said) == 1, said  # logged by the first run that saw it, not by every run after
    assert f'serf_handlers_tls_certificate_expiry_timestamp_seconds{{file="{expired}"}} 1580515200' in \
        metrics.read_text()
    check = lb.run(None, args=["check"])
    assert check.returncode == 1 and f"{expired}: the certificate expired" in check.stderr.decode(), check
    code, text = status(lb)
    assert code == 0 and f"tls warning: {expired}: the certificate expired" in text, text


def test_a_refused_certificate_or_template_still_changes_haproxy_live(procs: Processes) -> None:
    require("serf", "haproxy", "nginx", "openssl")
    certs = procs.workdir / "certs"
    good = make_cert(certs, "a.test")
    lb = start_lb(procs, webs=("web1",), serve_vars=tls_vars(procs, certs))
    installed = lb.config.read_bytes()
    reloads = lb.reload_count()
    bad = certs / "b.test.pem"
    bad.write_text(good.read_text().split("-----BEGIN PRIVATE KEY-----")[0])  # no key: HAProxy refuses it
    with Load(lb.port, rate=40, seconds=150) as load:
        after = mark(lb)
        lb.add_web("web2", "body-web2")
        joined = routed_within(lb, after, "member-join", {"web1", "web2"})
        run = next_run(lb, after, "member-join")
        assert run.code == 1 and any(f"{bad}: no private key" in line for line in run.stderr), run
        after = mark(lb)
        lb.webs["web1"].leave()
        left = routed_within(lb, after, "member-leave", {"web2"})
        assert next_run(lb, after, "member-leave").code == 1
        assert lb.config.read_bytes() == installed  # never a config HAProxy would refuse
        code, text = status(lb)
        assert code == 1 and "config file behind: not installed" in text and f"{bad}: no private key" in text, text

        bad.unlink()  # the fix; the next event installs the file, with no reload
        after = mark(lb)
        lb.add_web("web3", "body-web3")
        routed_within(lb, after, "member-join", {"web2", "web3"})
        assert next_run(lb, after, "member-join").code == 0
        assert b"web2 " in lb.config.read_bytes() and b"web1 " not in lb.config.read_bytes()
        assert status(lb)[0] == 0

        template = procs.workdir / "broken.cfg.j2"
        template.write_text("global\n{{ no_such_variable }}\n")
        lb.write_yml(template=str(template))
        installed = lb.config.read_bytes()
        after = mark(lb)
        lb.webs["web2"].leave()
        routed_within(lb, after, "member-leave", {"web3"})
        run = next_run(lb, after, "member-leave")
        assert run.code == 1 and any("no_such_variable" in line for line in run.stderr), run
        assert lb.config.read_bytes() == installed
        code, text = status(lb)
        assert code == 1 and "config file behind" in text and "no_such_variable" in text, text

        lb.write_yml(template=None)
        after = mark(lb)
        lb.add_web("web4", "body-web4")
        routed_within(lb, after, "member-join", {"web3", "web4"})
        assert next_run(lb, after, "member-join").code == 0
        time.sleep(0.5)
    print(f"refused certificate: join live {joined:.2f} s, leave {left:.2f} s after Serf started the run; "
          f"{len(load.failures)} of {load.requests} requests failed; reloads {lb.reload_count() - reloads}")
    assert load.failures == [] and load.requests > 50
    assert joined < 1.0 and left < 1.0
    assert lb.reload_count() == reloads
    text = lb.config.read_text()
    assert "web4 " in text and "web3 " in text and "web2 " not in text
    assert status(lb)[0] == 0
