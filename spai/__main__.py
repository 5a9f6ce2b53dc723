"""``python -m spai``: the command line."""

from spai.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
