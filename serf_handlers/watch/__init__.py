"""`serf-handle watch`: the configured handlers in one long-running process, fed by the
Serf agent's RPC event stream instead of a process per event.

Imported only by that command: it needs msgpack (Debian's python3-msgpack, or the `watch`
extra) and threads, which a per-event run never loads. Private modules, one job each:

- `_rpc`: a small client of the agent's RPC (msgpack over TCP): one reader thread, a Seq table;
- `_inbox`: the queue between that thread and the loop, with its bound;
- `_records`: stream records and `members` replies to the package's events and members (pure);
- `_coalesce`: `wait: {min, max}` and the merging of member changes (pure);
- `_loop`: the loop: connect, stream, coalesce, dispatch, respond, reconcile, reconnect, signals.
"""

from ._loop import Watcher, serve

__all__ = ["Watcher", "serve"]
