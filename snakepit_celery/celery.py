"""The ready-made Celery app: ``celery -A snakepit_celery worker`` finds ``app`` here.

Importing :mod:`snakepit_celery` creates no app (a Django project brings its
own); Celery's app finder looks for ``snakepit_celery.app``, then
``snakepit_celery.celery``, then this submodule's ``app``. Its broker and result
backend come from the config (``SNAKEPIT_BROKER_URL``, ``SNAKEPIT_RESULT_BACKEND``,
or the file named by ``SNAKEPIT_CONFIG``), then Celery's own
``CELERY_BROKER_URL``/``CELERY_RESULT_BACKEND``, then the local Redis; see
:func:`snakepit_celery.api.create_app`. A bad config fails the import, naming
the field, so the worker refuses to start.
"""

from __future__ import annotations

from snakepit_celery.api import create_app

__all__ = ["app"]

app = create_app()
