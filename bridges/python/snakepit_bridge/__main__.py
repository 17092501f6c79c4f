"""``python -m snakepit_bridge``: the same as the ``snakepit-bridge`` command."""

from snakepit_bridge.cli import main

if __name__ == "__main__":
    main()
