"""The built-in `haproxy` handler: HAProxy's backends always equal the alive Serf members.

Private modules, one job each:
- `_handler`: the handler object (event, reconcile, status, render, query), under the lock;
- `_plan`: what one run must do, as pure functions (wanted servers, config, runtime change, reload, saves);
- `_execute`: carries a plan out; the crash-safety protocol;
- `_options`: option validation;
- `_servers`: untrusted members to safe servers, server naming and options;
- `_state`, `_files`: the state file, atomic writes, the lock;
- `_render`: the template context, and the choice of renderer;
- `_builtin`: the built-in template rendered without Jinja2;
- `_jinja`: Jinja2, for an operator's own template only;
- `_install`: validate, install, reload;
- `_runtime`: the admin socket (runtime API): one session object per run;
- `_report`: the status table and the query reply.
"""

from ._handler import HAProxyHandler

__all__ = ["HAProxyHandler"]
