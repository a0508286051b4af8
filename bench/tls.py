"""Section 6: TLS termination: requests per second over HTTPS against plain HTTP, and failed
requests while certificates are renewed under load.

A load balancer whose built-in template terminates TLS (`vars.tls_bind`, `vars.tls_certs`:
one self-signed ECDSA P-256 certificate made with openssl, `support.certs`), and two nginx
web nodes, joined by member-join events run by hand (no serf agents: nothing else changes
while it is measured).

(1) Throughput: `wrk -tT -cC -dDs` (keep-alive) against the plain HTTP bind and the HTTPS bind
    of the same HAProxy (runtime-API mode), to the same two nginx, in turn, ROUNDS rounds
    (the order alternating), after a short warm-up of each; medians.
(2) Renewal under load: two bounded wrk loads through HTTPS at once, one keep-alive and one
    with `Connection: close` (so every request makes a new handshake and gets the certificate
    served at that moment). RENEWALS times, a new certificate file is renamed over the old one
    (as a certbot deploy hook does) and `serf-handle certs` is run; each renewal is checked by
    the certificate a new handshake gets. Failed requests: wrk's non-2xx responses plus socket
    errors. Reloads: the site's reload counter. For the runtime-API load balancer and for the
    reload fallback (a second load balancer, without `socket`).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from support.certs import make_cert
from support.processes import Processes, free_port, get, wait_until
from support.site import member_line

from .churn import parse_wrk
from .procs import ASSETS, processes, start_web
from .site import BenchSite

ROUNDS = 3
DURATION = 5  # seconds per wrk run
THREADS = 2
CONNECTIONS = 50
RENEWALS = 3  # certificate renewals per renewal load
RENEW_EVERY = 3.0  # seconds between renewals (the load runs 2 s before the first and after the last)
RENEW_CONNECTIONS = (10, 4)  # keep-alive, new connection per request
NAME = "a.example"
WEBS = ("web1", "web2")
VARIANTS = ("plain", "tls")


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS, duration: int = DURATION,
        renewals: int = RENEWALS) -> dict[str, object]:
    with processes(workdir) as procs:
        return _run(procs, venv_bin, workdir, rounds, duration, renewals)


class TLSBench:
    """One load balancer terminating TLS for `WEBS`, from its own certificate directory."""

    def __init__(self, procs: Processes, venv_bin: Path, workdir: Path, mode: str, webs: dict[str, int]) -> None:
        self.procs = procs
        self.certs = workdir / "certs"
        self.staged = workdir / "staged"  # the renewed certificates, made before any load starts
        self.cert = make_cert(self.certs, NAME)
        self.tls_port = free_port()
        self.lb = BenchSite(procs, venv_bin, workdir / "lb", mode,
                            extra_vars={"tls_bind": f"127.0.0.1:{self.tls_port}", "tls_certs": str(self.certs)})
        for name, port in webs.items():
            self.lb.event("member-join", member_line(name, "127.0.0.1", port=str(port)))
        wait_until(lambda: {get(self.lb.port)[1] for _ in range(6)} == set(webs), what=f"{mode}: both webs served")
        wait_until(lambda: self.served() == der(self.cert), what=f"{mode}: HTTPS with the certificate")

    def url(self, variant: str) -> str:
        return f"https://127.0.0.1:{self.tls_port}/" if variant == "tls" else f"http://127.0.0.1:{self.lb.port}/"

    def served(self) -> bytes:
        """The certificate a new handshake gets now (DER); b"" when the handshake fails."""
        try:
            return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", self.tls_port), timeout=5))
        except (OSError, ValueError):
            return b""

    def wrk(self, label: str, variant: str, seconds: float, threads: int, connections: int,
            close: bool = False) -> subprocess.Popen[bytes]:
        """A bounded wrk run in `procs` (its output in `<label>.log`)."""
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s",
                "-s", str(ASSETS / "wrk_status.lua")]
        if close:
            argv += ["-H", "Connection: close"]
        return self.procs.start(label, [*argv, self.url(variant)])

    def result(self, label: str, proc: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
        proc.wait(seconds + 30)
        return parse_wrk((self.procs.workdir / f"{label}.log").read_text(errors="replace"))

    def renew(self, source: Path) -> dict[str, object]:
        """Rename `source`'s copy over the certificate file, run `serf-handle certs`, and wait
        until a new handshake gets the new certificate."""
        tmp = self.certs / f".{NAME}.pem.new"
        shutil.copy(source, tmp)
        started = time.monotonic()
        tmp.replace(self.cert)
        done = self.lb.run(None, args=["certs"])
        ran = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"serf-handle certs: exit {done.returncode}: {done.stderr.decode(errors='replace')}")
        wanted = der(source)
        wait_until(lambda: self.served() == wanted, timeout=10, interval=0.02, what="the renewed certificate served")
        return {"certs_ms": ran * 1000, "served_ms": (time.monotonic() - started) * 1000,
                "output": done.stdout.decode(errors="replace").strip().splitlines()[-1].replace(str(self.certs), "DIR")}


def der(pem_file: Path) -> bytes:
    """The first certificate of a PEM file (certificate + key), as DER."""
    text = pem_file.read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)] + "\n")


def _run(procs: Processes, venv_bin: Path, workdir: Path, rounds: int, duration: int,
         renewals: int) -> dict[str, object]:
    webs = {name: free_port() for name in WEBS}
    for name, port in webs.items():
        start_web(procs, name, port)
    sites = {mode: TLSBench(procs, venv_bin, workdir / mode, mode, webs) for mode in ("runtime", "reload")}
    for site in sites.values():
        for i in range(renewals):
            make_cert(site.staged, NAME, days=90, file=f"renewal{i + 1}.pem")
    return {
        "rounds": rounds, "duration": duration, "threads": THREADS, "connections": CONNECTIONS,
        "throughput": _throughput(sites["runtime"], rounds, duration),
        "renewal": {mode: _renewal(site, renewals) for mode, site in sites.items()},
        "renew_every": RENEW_EVERY, "renew_connections": RENEW_CONNECTIONS,
    }


def _throughput(site: TLSBench, rounds: int, duration: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for variant in VARIANTS:  # warm-up, not counted
        site.result(f"wrk-warmup-{variant}", site.wrk(f"wrk-warmup-{variant}", variant, 1, THREADS, CONNECTIONS), 1)
    for number in range(rounds):
        for variant in VARIANTS if number % 2 == 0 else reversed(VARIANTS):
            label = f"wrk-{variant}-{number + 1}"
            runs[variant].append(site.result(label, site.wrk(label, variant, duration, THREADS, CONNECTIONS), duration))
    return runs


def _renewal(site: TLSBench, renewals: int) -> dict[str, object]:
    seconds = 2 + RENEW_EVERY * (renewals - 1) + 2
    reloads_before = site.lb.reload_count()
    keepalive, fresh = RENEW_CONNECTIONS
    mode = site.lb.mode
    loads = {"keepalive": site.wrk(f"wrk-renew-{mode}-keepalive", "tls", seconds, 1, keepalive),
             "fresh": site.wrk(f"wrk-renew-{mode}-fresh", "tls", seconds, 1, fresh, close=True)}
    started = time.monotonic()
    done = []
    for i in range(renewals):
        time.sleep(max(0.0, started + 2 + RENEW_EVERY * i - time.monotonic()))
        done.append(site.renew(site.staged / f"renewal{i + 1}.pem"))
    results = {kind: site.result(f"wrk-renew-{mode}-{kind}", proc, seconds) for kind, proc in loads.items()}
    return {
        "seconds": seconds,
        "loads": results,
        "renewals": done,
        "failed": sum(int(r["failed"]) for r in results.values()),
        "reloads": site.lb.reload_count() - reloads_before,
        "runtime_updates": sum(1 for line in site.lb.log_lines() if "certificate updated through the runtime" in line),
        "handler_errors": len(site.lb.handler_errors()),
    }

