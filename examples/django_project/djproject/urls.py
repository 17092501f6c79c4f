"""URLs of the example project."""

from __future__ import annotations

from compute import views
from django.urls import path

urlpatterns = [
    path("add/", views.add, name="add"),
    path("async/add/", views.add_async, name="add-async"),
    path("tasks/", views.start_task, name="start-task"),
    path("tasks/<str:task_id>/", views.task_status, name="task-status"),
    path("health/", views.health, name="health"),
]
