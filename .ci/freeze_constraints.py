"""Print constraints.txt: exact pins of fpt's runtime + test dependencies as installed here.

Walks the installed distributions' requirement metadata from fpt[test] (extras and environment
markers evaluated for this machine), so unrelated packages in the environment are left out.
Usage: python .ci/freeze_constraints.py > constraints.txt
"""

from __future__ import annotations

import importlib.metadata as md
import re

from packaging.markers import default_environment
from packaging.requirements import Requirement


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def walk(name: str, extras: frozenset[str], seen: dict[str, str], done: set) -> None:
    if (_key(name), extras) in done:
        return
    done.add((_key(name), extras))
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise SystemExit(f"{name} is required but not installed") from None
    seen[_key(name)] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        env = default_environment()
        wanted = req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))
        if wanted:
            walk(req.name, frozenset(req.extras), seen, done)


def main() -> None:
    seen: dict[str, str] = {}
    walk("fpt", frozenset({"test"}), seen, set())
    seen.pop("fpt")
    # Like pip freeze, leave out the installer's own tools: the venv's bundled setuptools shadows
    # the one torch was installed against, and pinning it would fight torch's own requirement.
    for tool in ("pip", "setuptools", "wheel"):
        seen.pop(tool, None)
    print("# Exact versions the test suite passed with (runtime + test dependencies, transitive).")
    print("# CI: pip install -c constraints.txt -e '.[test]'. Regenerate: python .ci/freeze_constraints.py")
    for k in sorted(seen):
        print(f"{k}=={seen[k]}")


if __name__ == "__main__":
    main()
