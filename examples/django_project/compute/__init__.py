"""The example app: views that call bridge commands through ``snakepit.execute``."""
