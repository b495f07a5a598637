"""Allow `python -m telemetryd`, so the CLI works without the console script on PATH."""

from telemetryd.cli import main

if __name__ == "__main__":
    main()
