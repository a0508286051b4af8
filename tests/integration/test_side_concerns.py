"""Issue 18: nothing but membership stops membership. With a real HAProxy (runtime-API mode),
real serf agents and nginx on loopback, under a light bounded load:

- one expired certificate in `vars.tls_certs` (HAProxy loads it): a join is routed and a
  leave removed within 1 s of Serf starting the run, 0 failed requests; one warning naming
  the file, not repeated by later runs; the expiry gauge; `check` exits 1 naming it;
- a certificate HAProxy refuses, a broken template, a missing stats Lua file (`haproxy -c`
  refuses the config, no member's fault): the join and the leave still reach
  HAProxy's live servers through the runtime API; the run exits 1 with one line; `status`
  says the file is behind; haproxy.cfg is untouched; after the fix the next event installs
  the file with no reload.

Judged by HAProxy's live servers (`show servers state`) and traffic. The helpers of
test_haproxy_convergence.py are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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


class Breakage(NamedTuple):
    name: str
    words: str  # what the failing run's error line and `status` must say
    apply: Callable[[Site], None]
    fix: Callable[[Site], None]


def _refuse_a_certificate(lb: Site) -> None:
    certs = Path(lb.options["vars"]["tls_certs"])
    good = (certs / "a.test.pem").read_text()
    (certs / "b.test.pem").write_text(good.split("-----BEGIN PRIVATE KEY-----")[0])  # no key: HAProxy refuses it


def _break_the_template(lb: Site) -> None:
    template = lb.dir / "broken.cfg.j2"
    template.write_text("global\n{{ no_such_variable }}\n")
    lb.write_yml(template=str(template))


def _lose_the_stats_lua(lb: Site) -> None:
    from support.processes import free_port

    missing = lb.dir / "gone" / "metrics.lua"
    stats = {"stats_bind": f"127.0.0.1:{free_port()}", "stats_metrics_file": str(lb.dir / "metrics.prom"),
             "stats_lua": str(missing)}
    lb.write_yml(vars={**lb.options["vars"], **stats})


def _restore_vars(lb: Site) -> None:
    lb.write_yml(vars={k: v for k, v in lb.options["vars"].items() if not k.startswith("stats_")})


BREAKAGES = (
    Breakage("refused certificate", "b.test.pem: no private key", _refuse_a_certificate,
             lambda lb: (Path(lb.options["vars"]["tls_certs"]) / "b.test.pem").unlink()),
    Breakage("broken template", "no_such_variable", _break_the_template, lambda lb: lb.write_yml(template=None)),
    Breakage("stats Lua file missing", "metrics.lua", _lose_the_stats_lua, _restore_vars),
)


def test_what_cannot_be_installed_still_changes_haproxy_live(procs: Processes) -> None:
    """For each breakage: a join, then a leave reach HAProxy's live servers through the
    runtime API; each run exits 1 with one line saying why; haproxy.cfg is untouched;
    `status` exits 1 saying the file is behind. After the fix, the next event installs the
    file, with no reload. 0 failed requests throughout."""
    require("serf", "haproxy", "nginx", "openssl")
    certs = procs.workdir / "certs"
    make_cert(certs, "a.test")
    lb = start_lb(procs, webs=("web0",), serve_vars=tls_vars(procs, certs))
    reloads = lb.reload_count()
    timings = []
    serving = {"web0"}
    with Load(lb.port, rate=40, seconds=240) as load:
        for i, breakage in enumerate(BREAKAGES, 1):
            installed = lb.config.read_bytes()
            breakage.apply(lb)
            for event in ("member-join", "member-leave"):
                after = mark(lb)
                if event == "member-join":
                    lb.add_web(f"web{i}", f"body-web{i}")
                    serving = serving | {f"web{i}"}
                else:
                    gone = sorted(serving)[0]
                    lb.webs[gone].leave()
                    serving = serving - {gone}
                timings.append(routed_within(lb, after, event, serving))
                run = next_run(lb, after, event)
                assert run.code == 1 and breakage.words in run.stderr[-1], (breakage.name, run)
                assert "runtime API" in run.stderr[-1], (breakage.name, run)
                # The state file says what HAProxy really has: the members, all applied.
                assert lb.servers() == serving and lb.applied() == serving, (breakage.name, lb.state_data())
            assert lb.config.read_bytes() == installed, breakage.name  # never a config HAProxy would refuse
            code, text = status(lb)
            assert code == 1 and "config file behind: not installed" in text and breakage.words in text, text

            breakage.fix(lb)  # the next event installs the file, with no reload
            after = mark(lb)
            lb.add_web(f"web{i}b", f"body-web{i}b")
            serving = serving | {f"web{i}b"}
            routed_within(lb, after, "member-join", serving)
            assert next_run(lb, after, "member-join").code == 0, breakage.name
            assert {line.split()[1] for line in lb.server_lines()} == serving, (breakage.name, lb.server_lines())
            assert status(lb)[0] == 0, breakage.name
            assert set(live(lb)) == lb.servers() == lb.applied() == serving, breakage.name
            assert "behind" not in (lb.state_data() or {}), breakage.name
        time.sleep(0.5)
    print(f"cannot install: joins and leaves live {', '.join(f'{t:.2f}' for t in timings)} s after Serf started "
          f"each run; {len(load.failures)} of {load.requests} requests failed; reloads {lb.reload_count() - reloads}")
    assert load.failures == [] and load.requests > 100
    assert max(timings) < 1.0
    assert lb.reload_count() == reloads
