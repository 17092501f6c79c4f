"""The project's own Celery app, configured from Django settings (``CELERY_*``), with snakepit installed.

Start its worker from this directory::

    celery -A djproject worker --loglevel INFO

``install(app)`` adds the worker step that hosts the bridge pools (by default
one ``python`` pool running the showcase handler; set ``SNAKEPIT_CONFIG`` to a
worker config file for others) and routes ``execute`` to their queues. The
project's own settings win over the defaults ``install`` applies.
"""

from __future__ import annotations

import os

from celery import Celery

from snakepit_celery import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")

app = Celery("djproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
install(app)
app.autodiscover_tasks()
