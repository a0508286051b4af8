"""In-process timings of the haproxy handler's pieces for N members (section 2).

Run with the throwaway install's interpreter:  python render_time.py WORKDIR N [N ...]
Prints one JSON object: for each N, milliseconds for
- render: the handler's own render of an N-server config (warm: median of the repeats
  after the first; cold: the first, which also compiles the template),
- servers: turning N members into validated servers,
- state load / state dumps: the JSON state file with N servers.
It uses the handler's private API on purpose: these are the parts of one run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

REPEATS = 7


def members(n: int) -> list[tuple[str, str, dict[str, str]]]:
    return [(f"web{i:05d}", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", {"role": "web", "port": "8080"})
            for i in range(n)]


def main(workdir: str, sizes: list[int]) -> dict[str, dict[str, float]]:
    import jinja2  # noqa: F401 - imported before timing: start-up cost is measured in section 1

    from serf_handlers.handlers.haproxy import HAProxyHandler, _state
    from serf_handlers.handlers.haproxy._servers import from_member

    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        directory = os.path.join(workdir, f"render-{n}")
        os.makedirs(directory, exist_ok=True)
        handler = HAProxyHandler(
            config=os.path.join(directory, "haproxy.cfg"), state=os.path.join(directory, "state.json"),
            check=False, vars={"bind": "127.0.0.1:8080", "socket": os.path.join(directory, "admin.sock")},
        )
        started = time.perf_counter()
        servers = {name: from_member(name, addr, tags, 80, "web") for name, addr, tags in members(n)}
        to_servers = time.perf_counter() - started
        renders = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            text = handler._render(servers)
            renders.append(time.perf_counter() - started)
        assert text.count("\n    server ") == n, "render did not produce N server lines"
        state = _state.State(servers, servers)
        dumps = []
        for _ in range(3):
            started = time.perf_counter()
            blob = _state.dumps(state)
            dumps.append(time.perf_counter() - started)
        path = os.path.join(directory, "state.json")
        with open(path, "wb") as file:
            file.write(blob)
        loads = []
        for _ in range(3):
            started = time.perf_counter()
            _state.load(path)
            loads.append(time.perf_counter() - started)
        out[str(n)] = {
            "render_cold_ms": renders[0] * 1000,
            "render_ms": statistics.median(renders[1:]) * 1000,
            "servers_ms": to_servers * 1000,
            "state_load_ms": statistics.median(loads) * 1000,
            "state_dumps_ms": statistics.median(dumps) * 1000,
            "config_bytes": len(text.encode()),
            "state_bytes": len(blob),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], [int(n) for n in sys.argv[2:]])))
