"""App config of the example app."""

from __future__ import annotations

from django.apps import AppConfig


class ComputeConfig(AppConfig):
    name = "compute"
