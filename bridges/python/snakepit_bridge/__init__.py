"""snakepit-bridge: the Python side of snakepit-celery's Bridge protocol."""
