"""ASGI entry point (``uvicorn djproject.asgi:application``): the async views share one event loop."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")

application = get_asgi_application()
