"""The example Django project; importing it loads its Celery app, as Celery's Django guide does.

That makes ``celery_app`` the current app in the web process too, so
``execute.delay(...)`` in a view is sent through this project's broker.
"""

from djproject.celery import app as celery_app

__all__ = ("celery_app",)
