"""Real processes on loopback for the tests, the benchmarks and the demo (not installed).

- `support.processes`: serf agents, nginx (its `/healthz` switched by `set_healthy`), HAProxy,
  started through a `Processes` group that stops exactly the PIDs it started; `free_port`,
  `wait_until`, `get`.
- `support.admin`: HAProxy's admin socket (the package's own runtime API client) and the one
  `show servers state` parser (`server_rows`: every column; `live_servers`: the main ones).
- `support.certs`: self-signed certificates made with `openssl` (`make_cert`), for TLS termination.
- `support.load`: a light, bounded request load through HAProxy that counts failed requests.
- `support.netns`: Linux network namespaces on a private bridge, serf agents, nginx and that
  load inside them, and iptables rules that cut only Serf's gossip (the network-fault tests).
- `support.site`: a haproxy-handler site in one directory, driven through the real
  `serf-handle`; optionally with HAProxy in front of it and a serf agent running it (a load
  balancer). Its reload commands all append one line per reload to one file: the one counter.

Importable from the repository root: pytest has `pythonpath = .`, the benchmarks run as
`python -m bench` and the demo as `python -m demo`.
"""
