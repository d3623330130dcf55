"""Writers keep what they replace: symlinks, mode, owner; unwritable targets are refused up front."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fpt.errors import InputError
from fpt.evaluation import discover_models
from fpt.gallery import add_embeddings, edit_gallery, load_gallery, rename_model
from fpt.report import literal, visible
from fpt.storage import atomic_path, check_writable


def _gallery(path: Path) -> None:
    with edit_gallery(path, create=True) as g:
        for name in ("a", "b"):
            add_embeddings(g, name, np.eye(3, 4, dtype=np.float32), [f"/{name}{i}" for i in range(3)],
                           [f"{name}{i}" for i in range(3)], np.zeros(3, bool), "s" * 64, 4)


def test_edit_through_symlink_replaces_target_and_keeps_link(tmp_path):
    real = tmp_path / "real.h5"
    _gallery(real)
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    with edit_gallery(link) as g:
        rename_model(g, "a", "c")
    assert link.is_symlink()
    assert "c" in load_gallery(real).models
    assert not (tmp_path / "link.h5.lock").exists() or (tmp_path / "real.h5.lock").exists()


def test_rewrite_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "g.h5"
    _gallery(path)
    path.chmod(0o664)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # nobody:nogroup, as in the issue
    before = path.stat()
    with edit_gallery(path) as g:
        rename_model(g, "a", "c")
    after = path.stat()
    assert after.st_ino != before.st_ino  # really replaced, not edited in place
    assert (after.st_mode & 0o7777, after.st_uid, after.st_gid) == (0o664, before.st_uid, before.st_gid)


def test_read_only_gallery_refused_and_untouched(tmp_path):
    path = tmp_path / "g.h5"
    _gallery(path)
    path.chmod(0o444)
    data = path.read_bytes()
    with pytest.raises(InputError, match="read-only"):
        with edit_gallery(path) as g:
            rename_model(g, "a", "c")
    assert path.read_bytes() == data


def test_check_writable_refusals(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="folder does not exist"):
        check_writable(tmp_path / "no" / "x.pt")
    with pytest.raises(InputError, match="already exists"):
        check_writable(tmp_path / "f", overwrite=False)
    with pytest.raises(InputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        check_writable(tmp_path / "f" / "x.h5")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InputError):
        check_writable(loop)
    assert check_writable(tmp_path / "new.h5") == (tmp_path / "new.h5").resolve()
    assert not list(tmp_path.glob(".new.h5.*"))  # the probe file is gone


def test_atomic_path_does_not_follow_into_a_new_file_when_link_dangles(tmp_path):
    target = tmp_path / "t.txt"
    link = tmp_path / "l.txt"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_text("hello")
    assert link.is_symlink() and target.read_text() == "hello"


def test_eval_follows_symlinked_model_folders_once(tmp_path):
    from PIL import Image

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for d in (root / "real-model", elsewhere / "linked"):
        d.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "x.png")
    (root / "linked").symlink_to(elsewhere / "linked")
    (elsewhere / "linked" / "loop").symlink_to(elsewhere)  # a loop must not hang or duplicate
    labels = sorted(m.label for m in discover_models(root))
    assert labels == ["linked", "real-model"]


def test_visible_and_literal():
    assert visible("a\x1b[31mb\tc\nd") == "a\\x1b[31mb\\tc\\nd"
    assert visible("é ü [x]") == "é ü [x]"
    assert visible("a\nb", keep_newlines=True) == "a\nb"
    from rich.text import Text

    for s in ["[bold red]x.png", "[/]", "x\\", "[link=http://e]y[/link]"]:
        assert Text.from_markup(f"[bold]{literal(s)}[/bold]").plain == s
