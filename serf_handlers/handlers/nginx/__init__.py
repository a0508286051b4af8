"""The `nginx` handler: nginx as the load balancer, its upstreams equal to the members."""

from ._handler import NginxHandler

__all__ = ["NginxHandler"]
