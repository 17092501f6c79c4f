"""snakepit-celery: Celery tasks that call warm, stateful bridge processes over gRPC."""
