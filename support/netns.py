"""Linux network namespaces for the network-fault tests: a private network that only the test's
own namespaces share, and iptables faults inside them.

`Network` makes one switch namespace holding a bridge, and one namespace per node, each with one
veth whose other end sits on that bridge: nothing is created in the root namespace, so the test's
traffic never leaves its namespaces, and several runs can use the same addresses side by side.
`Namespace.argv` prefixes a command with `ip netns exec NAME` (which execs it, so the PID that
`Processes.start` returns is the program's own and `Processes` stops it by PID as usual).
`NsAgent` is a serf agent inside a namespace; `gossip` builds the iptables rules that cut Serf's
gossip (its bind port, UDP and TCP) and nothing else, so HTTP still passes; `cut` drops it
between two namespaces (always where it arrives: see `gossip`).

Also runnable inside a namespace: `python -m support.netns load HOST PORT` is `support.load`'s
bounded request load against HOST (not loopback), printing one JSON line per failed request and
one summary line when it ends (SIGINT/SIGTERM end it early).

Every command here is an argv list run with a timeout; none goes through a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from support.processes import Agent, Processes, nginx_conf, wait_until

GOSSIP_PORT = 7946  # every agent binds its own namespace's address, so they can all use Serf's default
RPC_ADDR = "127.0.0.1:7373"  # each namespace has its own loopback
SUBNET = "10.213.0"  # a /24 only the test's namespaces see
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


class NetnsError(RuntimeError):
    """A namespace, link or iptables command failed (the message names the command)."""


def run(argv: Sequence[str], timeout: float = TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done


def unavailable() -> str | None:
    """Why this machine cannot run the namespace tests (None: it can): tried for real, in a
    throwaway namespace, with every kind of command the tests use."""
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN); euid is {os.geteuid()}"
    missing = [p for p in ("ip", "iptables") if shutil.which(p) is None]
    if missing:
        return f"missing programs {missing}: install the Debian packages iproute2 and iptables"
    name = f"nfprobe-{secrets.token_hex(3)}"
    try:
        run(["ip", "netns", "add", name])
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        for argv in (
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "link", "add", "br0", "type", "bridge"],
            ["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["ip", "netns", "exec", name, "iptables", "-w", "5", "-A", "INPUT", "-p", "udp", "--dport",
             str(GOSSIP_PORT), "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP"],
        ):
            run(argv)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces are not usable here: {exc}"
    finally:
        run(["ip", "netns", "del", name], check=False)
    return None


def gossip(chain: str = "INPUT", peer: str | None = None, extra: Sequence[str] = (),
           port: int = GOSSIP_PORT) -> list[list[str]]:
    """iptables rules (for `Namespace.add_rules`) dropping every Serf gossip packet in `chain`:
    UDP and TCP, to or from `port` (TCP replies come from it, a peer's connections go to it).
    With `peer` only those from it (INPUT) or to it (OUTPUT); `extra` adds matches, e.g.
    `-m statistic --mode random --probability 0.2`.

    Cut on INPUT, where the packet arrives, as a network loses it: a DROP on OUTPUT makes the
    sender's `sendto` fail with EPERM, which memberlist logs as its own error ("Failed to send
    ping: ... operation not permitted") and never counts against the peer, so a node dropping
    its own output never suspects anybody (seen here: the load balancer kept every member alive
    for 150 s)."""
    if chain not in ("INPUT", "OUTPUT"):
        raise ValueError(f"chain {chain!r}: expected INPUT or OUTPUT")
    where = [] if peer is None else ["-s" if chain == "INPUT" else "-d", peer]
    return [
        [chain, "-p", proto, *where, side, str(port), *extra, "-j", "DROP"]
        for proto in ("udp", "tcp")
        for side in ("--dport", "--sport")
    ]


def cut(a: Namespace, b: Namespace, extra: Sequence[str] = ()) -> None:
    """No gossip between `a` and `b`, either way: each drops what arrives from the other."""
    a.add_rules(gossip("INPUT", b.addr, extra))
    b.add_rules(gossip("INPUT", a.addr, extra))


class Namespace:
    """One network namespace: `name` for `ip netns`, `addr` its address on the network."""

    def __init__(self, name: str, addr: str) -> None:
        self.name = name
        self.addr = addr

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, {self.addr!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv), timeout, check)

    def iptables(self, *args: str) -> str:
        return self.run(["iptables", "-w", "5", *args]).stdout

    def add_rules(self, rules: Iterable[Sequence[str]]) -> None:
        """Append each rule (`[CHAIN, match..., -j, TARGET]`) to the filter table."""
        for rule in rules:
            self.iptables("-A", *rule)

    def heal(self) -> None:
        """Remove every rule the test added (only the test ever adds any here)."""
        self.iptables("-F", "INPUT")
        self.iptables("-F", "OUTPUT")

    def rules(self) -> list[str]:
        return [line for line in self.iptables("-S").splitlines() if line.startswith("-A ")]

    def connects(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this namespace to host:port succeeds."""
        probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))"
        done = self.run([sys.executable, "-S", "-c", probe, host, str(port), str(timeout)], timeout=timeout + 10,
                        check=False)
        return done.returncode == 0

    def pids(self) -> list[int]:
        done = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]


class Network:
    """A switch namespace with a bridge `br0`, and node namespaces on it (`add`), all named
    `<tag>-<node>` with a random tag; `close` deletes them all (every one of their processes must
    have been stopped, see `close`). Addresses are `SUBNET.<host>/24`."""

    def __init__(self, tag: str | None = None, subnet: str = SUBNET) -> None:
        self.tag = tag or f"nf{secrets.token_hex(3)}"
        self.subnet = subnet
        self.switch = Namespace(f"{self.tag}-sw", "")
        self.nodes: dict[str, Namespace] = {}
        self.created: list[str] = []  # namespace names, in creation order

    def _create(self, ns: Namespace) -> None:
        run(["ip", "netns", "add", ns.name])
        self.created.append(ns.name)
        run(["ip", "-n", ns.name, "link", "set", "lo", "up"])

    def start(self) -> Network:
        self._create(self.switch)
        run(["ip", "-n", self.switch.name, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch.name, "link", "set", "br0", "up"])
        return self

    def add(self, node: str, host: int) -> Namespace:
        """A namespace for `node` with `eth0` at SUBNET.host, its peer (named `node`) on the bridge."""
        if not (node.isascii() and node.isalnum() and len(node) <= 15):
            raise ValueError(f"node {node!r}: at most 15 letters and digits (it names the bridge port)")
        if not 1 <= host <= 254 or node in self.nodes:
            raise ValueError(f"node {node!r} host {host}: a new node and a host number 1-254")
        ns = Namespace(f"{self.tag}-{node}", f"{self.subnet}.{host}")
        self._create(ns)
        self.nodes[node] = ns
        run(["ip", "-n", ns.name, "link", "add", "eth0", "type", "veth",
             "peer", "name", node, "netns", self.switch.name])
        run(["ip", "-n", self.switch.name, "link", "set", node, "master", "br0"])
        run(["ip", "-n", self.switch.name, "link", "set", node, "up"])
        run(["ip", "-n", ns.name, "addr", "add", f"{ns.addr}/24", "dev", "eth0"])
        run(["ip", "-n", ns.name, "link", "set", "eth0", "up"])
        return ns

    def heal(self) -> None:
        """Every node's rules removed."""
        for ns in self.nodes.values():
            ns.heal()

    def close(self, grace: float = 10.0) -> list[str]:
        """Delete every namespace created (their veths, the bridge and the iptables rules go
        with them). The caller stops its own processes first, by PID; what is still inside a
        namespace then (say a handler run its serf agent started) is ours by construction, as
        the namespace is: it gets `grace` seconds to end, then SIGKILL by PID. Returns what was
        left over, for the caller to report."""
        leftovers: list[str] = []
        for name in reversed(self.created):
            ns = Namespace(name, "")
            deadline = time.monotonic() + grace
            while ns.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = ns.pids()
            if pids:
                leftovers.append(f"{name}: killed leftover PIDs {pids}")
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while ns.pids() and time.monotonic() < deadline:
                    time.sleep(0.1)
            done = run(["ip", "netns", "del", name], check=False)
            if done.returncode != 0:
                leftovers.append(f"{name}: `ip netns del` exited {done.returncode}: {done.stderr.strip()}")
        self.created.clear()
        return leftovers


class NsAgent(Agent):
    """A serf agent inside namespace `ns`: gossip on `ns.addr:GOSSIP_PORT`, RPC on the
    namespace's own loopback (`RPC_ADDR`), and `serf()` running the CLI in there; otherwise a
    `support.processes.Agent` (so helpers that take one, and `Site.agent`, accept it)."""

    def __init__(
        self,
        procs: Processes,
        ns: Namespace,
        name: str,
        tags: dict[str, str] | None = None,
        join: NsAgent | None = None,
        handlers: Sequence[str] = (),
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        log_level: str = "debug",
    ) -> None:
        # Not Agent.__init__: that one binds loopback ports of the root namespace.
        self.name = name
        self.ns = ns
        self.rpc_auth = None
        self.leaving = False
        self.bind = GOSSIP_PORT
        self.rpc = RPC_ADDR
        argv = ["serf", "agent", "-node", name, "-bind", f"{ns.addr}:{GOSSIP_PORT}", "-rpc-addr", RPC_ADDR,
                "-log-level", log_level]
        for key, value in (tags or {}).items():
            argv += ["-tag", f"{key}={value}"]
        if join is not None:
            argv += ["-join", f"{join.ns.addr}:{join.bind}"]
        for each in handlers:
            argv += ["-event-handler", each]
        argv += list(extra)
        self.procs = procs
        self.proc = procs.start(f"serf-{name}", ns.argv(argv), env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()

    def serf(self, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ns.argv(["serf", args[0], f"-rpc-addr={self.rpc}", *args[1:]]),
            capture_output=True, text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL,
        )

    def statuses(self) -> dict[str, str]:
        """This agent's view: member -> alive, failed, left, leaving."""
        out = self.serf("members", "-format", "json").stdout
        return {m["name"]: m["status"] for m in json.loads(out)["members"] or []}


def start_nginx_in(procs: Processes, ns: Namespace, name: str, port: int, body: str, probe: Namespace) -> None:
    """nginx in `ns` on ns.addr:port answering every request with `body`; returns once a
    connection from namespace `probe` reaches it (so the network path works too)."""
    root = procs.workdir / f"nginx-{name}"
    root.mkdir(exist_ok=True)
    server = (
        f"        listen {ns.addr}:{port};\n"
        f'        location / {{ default_type text/plain; return 200 "{body}\\n"; }}\n'
    )
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, server))
    procs.start(f"nginx-{name}", ns.argv(["nginx", "-p", str(root), "-c", str(conf)]))
    wait_until(lambda: probe.connects(ns.addr, port), timeout=15, interval=0.2,
               what=f"nginx {name} on {ns.addr}:{port} from {probe.name}")


# --- the load, inside a namespace ---------------------------------------------------------


class NsLoad:
    """`python -m support.netns load` started in namespace `ns` against host:port (see the
    module docstring): at `rate` requests a second on fresh connections, at most `limit` requests
    and `seconds` seconds. A context manager; afterwards `ok`, `failures` (seconds since its
    start, what) and `seen` (body -> requests)."""

    def __init__(self, procs: Processes, ns: Namespace, host: str, port: int, name: str, rate: float = 40.0,
                 limit: int = 20_000, seconds: float = 300.0) -> None:
        self.procs = procs
        self.log = procs.workdir / f"{name}.log"
        self.argv = ns.argv([sys.executable, "-m", "support.netns", "load", host, str(port), "--rate", str(rate),
                             "--limit", str(limit), "--seconds", str(seconds)])
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.seen: Counter[str] = Counter()

    def __enter__(self) -> NsLoad:
        self.log.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = self.procs.start(self.name, self.argv, env=env)
        wait_until(lambda: self._lines() or self.proc is None or self.proc.poll() is not None, timeout=15,
                   what=f"{self.name}: its first request")
        if not any("first" in line for line in self._lines()):
            raise RuntimeError(f"{self.name} did not start: {self.log.read_text(errors='replace')[-800:]}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.procs.stop(self.proc, signal.SIGINT, timeout=15)
        self.proc = None
        summary: dict[str, Any] | None = None
        for line in self._lines():
            if "failure" in line:
                at, what = line["failure"]
                self.failures.append((float(at), str(what)))
            elif "summary" in line:
                summary = line["summary"]
        if summary is None:
            raise RuntimeError(f"{self.name} ended without a summary: {self.log.read_text(errors='replace')[-800:]}")
        self.ok = int(summary["ok"])
        self.seen = Counter({str(body): int(n) for body, n in summary["seen"].items()})

    @property
    def requests(self) -> int:
        return self.ok + len(self.failures)

    def _lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines() if self.log.exists() else []:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                found.append(data)
        return found


def get_from(host: str, port: int, timeout: float = 3.0) -> tuple[int, str]:
    """One request for `/` through a fresh connection to host:port: (status, body), or (0, '<error>')."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return 0, f"<{type(exc).__name__}>"
    finally:
        conn.close()


def _load(host: str, port: int, rate: float, limit: int, seconds: float) -> int:
    """What `support.load.Load` does, against host:port, reporting on stdout as JSON lines."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    deadline, next_at, interval = started + seconds, started, 1.0 / rate
    ok, seen = 0, Counter[str]()
    for count in range(limit):
        if stop.is_set() or time.monotonic() > deadline:
            break
        status, body = get_from(host, port)
        if status == 200:
            ok += 1
            seen[body] += 1
        else:
            print(json.dumps({"failure": [round(time.monotonic() - started, 2), f"{status} {body}"]}), flush=True)
        if count == 0:
            print(json.dumps({"first": status}), flush=True)
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    print(json.dumps({"summary": {"ok": ok, "seen": dict(seen)}}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="a bounded request load against HOST:PORT (run it inside a namespace)")
    load.add_argument("host")
    load.add_argument("port", type=int)
    load.add_argument("--rate", type=float, default=40.0)
    load.add_argument("--limit", type=int, default=20_000)
    load.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    return _load(args.host, args.port, args.rate, args.limit, args.seconds)


if __name__ == "__main__":
    raise SystemExit(main())
