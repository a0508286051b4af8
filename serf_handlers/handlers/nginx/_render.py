"""nginx.conf from the servers: the built-in template (plain Python, so that an event needs
no Jinja2), or the operator's own Jinja2 `template` with the same context.

Every backend with servers is an `upstream` (a shared `zone`, so passive failure state is
the same in every worker; keep-alive to the servers); a backend without servers has no
upstream (`nginx -t` refuses an empty one) and answers 503, as does one whose servers are all
drained or in maintenance (an upstream of `down` servers would answer 502). Requests whose Host is a
backend's name go to that backend; all others to the default backend.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._servers import Server

DEFAULTS: dict[str, object] = {
    "listen": "*:80",
    "pid": "/run/nginx.pid",
    "error_log": "stderr",
    "access_log": "off",
    "worker_processes": "auto",
    "worker_connections": 1024,
    # Old workers holding long connections are closed after this, so reloads never pile them up.
    "worker_shutdown_timeout": "30s",
    # Clients' keep-alive: an old worker closes idle connections at a reload, so a request sent
    # on one just then fails; "0" (no client keep-alive) avoids that on nginx < 1.27.4, and
    # `keepalive_min_timeout` (when set; nginx >= 1.27.4 only) does on newer ones.
    "keepalive_timeout": "75s",
}


def context(vars: Mapping[str, object], backends: Mapping[str, list[Server]], default: str) -> dict[str, object]:
    return {**DEFAULTS, **vars, "backends": backends, "default_backend": default}


def builtin(c: Mapping[str, object]) -> str:
    backends: Mapping[str, list[Server]] = c["backends"]  # type: ignore[assignment]
    default = str(c["default_backend"])
    parts = [
        "# Written by serf-handlers (the nginx handler): every change here is overwritten.\n",
        f"worker_processes {c['worker_processes']};\n",
        f"pid {c['pid']};\n",
        f"error_log {c['error_log']};\n",
        f"worker_shutdown_timeout {c['worker_shutdown_timeout']};\n",
        f"events {{\n    worker_connections {c['worker_connections']};\n}}\n",
        "http {\n",
        f"    access_log {c['access_log']};\n",
        f"    keepalive_timeout {c['keepalive_timeout']};\n",
        *([f"    keepalive_min_timeout {c['keepalive_min_timeout']};\n"] if c.get("keepalive_min_timeout") else []),
        "    proxy_next_upstream error timeout http_502 http_503 http_504;\n",
        "    proxy_next_upstream_tries 3;\n",
        "    proxy_connect_timeout 2s;\n",
        # Room for backend names of up to 64 characters as server names (the default, the CPU's
        # cache line, fits 46 on x86-64: "could not build server_names_hash").
        "    server_names_hash_bucket_size 128;\n",
    ]
    for name, servers in sorted(backends.items()):
        if any(not s.down for s in servers):
            lines = "".join(f"        {s.line}  # {s.node}\n" for s in servers)
            parts.append(f"    upstream {name} {{\n        zone {name} 64k;\n{lines}        keepalive 32;\n    }}\n")
    for name, servers in sorted(backends.items(), key=lambda item: item[0] != default):
        server_name = "" if name == default else f"        server_name {name};\n"
        listen = f"        listen {c['listen']}{' default_server' if name == default else ''};\n"
        if any(not s.down for s in servers):
            location = (f"            proxy_pass http://{name};\n"
                        "            proxy_http_version 1.1;\n"
                        '            proxy_set_header Connection "";\n'
                        "            proxy_set_header Host $host;\n"
                        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n")
        else:
            location = "            return 503;\n"
        parts.append(f"    server {{\n{listen}{server_name}        location / {{\n{location}        }}\n    }}\n")
    parts.append("}\n")
    return "".join(parts)
