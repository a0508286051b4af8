"""The built-in `haproxy` handler: HAProxy's backends always equal the alive Serf members.

Private modules, one job each:
- `_handler`: the handler object (event, reconcile, status, render, query), under the lock;
- `_plan`: what one run must do, decided up front: the wanted servers, then the plan, an
  ordered list of steps (drain early, save, install, runtime change or reload, save);
- `_execute`: walks a plan's steps; the crash-safety protocol;
- `_options`: option validation, and the typed TLS and stats records;
- `_servers`: untrusted members to safe servers, server naming and options;
- `_routes`: routes by host and path (the `backends` option, members' route tags);
- `_maps`: the routing map files, and HAProxy's live copies of them;
- `_state`: the state file (atomic writes and the lock: `serf_handlers/_files.py`);
- `_render`: the template context, and the choice of renderer;
- `_builtin`: the built-in template rendered without Jinja2;
- `_jinja`: Jinja2, for an operator's own template only;
- `_install`: validate, install, reload, and which members `haproxy -c` refuses;
- `_certs`: the TLS certificates: checks, expiry, `serf-handle certs`;
- `_live`, `_runtime`: the admin socket (runtime API): one session object per run;
- `_report`: the status table and the query reply.
"""

from ._handler import HAProxyHandler

__all__ = ["HAProxyHandler"]
