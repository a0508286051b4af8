"""Handlers loaded as `type: echo_plugin:NAME` by the serf integration test (a module:attr plugin)."""

import sys


def pong(event):
    # Noise on both streams: none of it may reach Serf's reply.
    print("noise on stdout")
    print("noise on stderr", file=sys.stderr)
    return b"pong " + event.payload


def sized(event):
    return "x" * int(event.payload)


class Recorder:
    """A reconciling handler that writes the members it was given, one name per line."""

    def __init__(self, path):
        self.path = path

    def __call__(self, event):
        pass

    def reconcile(self, members):
        with open(self.path, "w") as file:
            file.writelines(f"{m.name} {m.addr} {m.role} {sorted(m.tags.items())}\n" for m in members)
