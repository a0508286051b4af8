"""The built-in `haproxy` handler: HAProxy's backends always equal the alive Serf members.

Private modules, one job each:
- `_handler`: one run (event, reconcile, status, render);
- `_options`: option validation;
- `_servers`: untrusted members to safe servers, server naming;
- `_state`, `_files`: the state file, atomic writes, the lock;
- `_builtin`: the built-in template rendered without Jinja2;
- `_render`: Jinja2, for an operator's own template only;
- `_install`: validate, install, reload;
- `_runtime`: the admin socket (runtime API);
- `_report`: the status table and the query reply.
"""

from ._handler import HAProxyHandler

__all__ = ["HAProxyHandler"]
