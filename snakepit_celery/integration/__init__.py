"""The Celery layer below the features: ``PoolTask`` and ``execute`` (``tasks``),
the worker bootstep that hosts the pools and its control commands (``worker``),
the lookup of the pools that live workers host (``known_pools``), and a Celery
worker in a subprocess for the demo, benchmarks and tests (``workerproc``).

The features (sessions, streaming, batch) build their tasks on these; the
wiring that registers all of them, :func:`snakepit_celery.install`, sits above
the features in :mod:`snakepit_celery.api`.
"""
