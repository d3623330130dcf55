"""``python -m fpt`` (and ``torchrun -m fpt``) runs the command line."""

from fpt.cli import console_main

if __name__ == "__main__":
    console_main()
