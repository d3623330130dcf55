"""``fpt spectrum``: spectral evidence for one image or a folder."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def spectrum() -> None:
        """(being written)"""
        raise typer.Exit(1)
