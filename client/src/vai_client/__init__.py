"""vai-sidecar-client: feed a vai sidecar from a model server, never blocking a prediction.

    from vai_client import Client
    monitor = Client("http://127.0.0.1:8000", token="...")
    monitor.log(model="digits", request_id=rid, logits=logits, embedding=features)

Standard library only; numpy arrays and torch tensors are read duck-typed, neither is imported here.
"""

from vai_client._policy import RetryPolicy
from vai_client._stats import ClientStats
from vai_client.aio import AsyncClient
from vai_client.client import Client

__all__ = ["AsyncClient", "Client", "ClientStats", "RetryPolicy"]
__version__ = "0.1.0"
