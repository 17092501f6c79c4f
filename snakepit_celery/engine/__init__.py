"""The engine: the process supervisor that runs and calls the bridge processes.

Everything between a call and a bridge's answer lives here: the pool and its
checkout of a bridge (``pool``, ``checkout``, ``cancels``), the three call paths
(unary in ``pool``, ``bridge_stream``, ``pool_batch``) and how a failed call is
told apart (``failures``, ``rpc``), the bridge process and its lifecycle
(``bridge``, ``process``, ``lifecycle``, ``supervisor``, ``preload``), the host of
a worker's pools (``host``), the languages (``adapters``) and the hooks an
observer plugs in (``telemetry``).

It imports only itself, :mod:`snakepit_celery.errors` and
:mod:`snakepit_celery.config`: never Celery, kombu or redis, nor a layer above it
(the contracts in ``pyproject.toml``, checked by ``lint-imports``). Nothing is
imported here, so that importing a part of the engine does not import gRPC.
"""
