"""Handlers loaded as `type: echo_plugin:NAME` by the serf integration test (a module:attr plugin)."""

import sys


def pong(event):
    # Noise on both streams: none of it may reach Serf's reply.
    print("noise on stdout")
    print("noise on stderr", file=sys.stderr)
    return b"pong " + event.payload


def sized(event):
    return "x" * int(event.payload)
