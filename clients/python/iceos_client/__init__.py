"""iceos-client: an authenticated channel to iceOS and its typed stubs.

    from iceos_client import connect
    with connect("localhost:8080", token="ice_…") as ice:
        ice.auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest())
"""

from .channel import Client, bearer_interceptor, connect

__all__ = ["Client", "bearer_interceptor", "connect"]
