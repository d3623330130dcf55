"""Which part of a job this process does: ``--shard i/n`` combined with torchrun's ranks."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fpt.errors import ConfigError


# ------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """This process's share of a job: part ``index`` of ``count``.

    ``world`` > 1 when running under torchrun; ``auto_merge`` when rank 0 should assemble the
    parts itself (torchrun without ``--shard``).
    """

    index: int = 0
    count: int = 1
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def auto_merge(self) -> bool:
        return self.world > 1 and self.count == self.world



def shard_spec(shard: str | None = None, env: dict[str, str] | None = None) -> Shard:
    """Combine ``--shard i/n`` with torchrun's ``RANK`` / ``WORLD_SIZE``: part ``i*W + r`` of ``n*W``."""
    from fpt.synth.train import parse_shard

    env = os.environ if env is None else env
    i, n = parse_shard(shard)
    world = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment RANK={rank} WORLD_SIZE={world}")
    return Shard(i * world + rank, n * world, rank, world, local)


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous block ``index`` of ``count`` over ``n`` items (sizes differ by at most one)."""
    return n * index // count, n * (index + 1) // count


def part_path(out: str | Path, index: int, count: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.rank{index}-of-{count}")


def find_parts(out: str | Path) -> dict[int, list[Path]]:
    """Part files beside ``out``, grouped by the count they were written for."""
    out = Path(out)
    found: dict[int, list[Path]] = {}
    prefix = f"{out.name}.rank"
    for p in out.parent.glob(f"{glob.escape(out.name)}.rank*-of-*"):
        idx, sep, cnt = p.name[len(prefix):].partition("-of-")
        if sep and idx.isdigit() and cnt.isdigit():
            found.setdefault(int(cnt), []).append(p)
    return found


def rank_device(device: str, shard: Shard) -> str:
    """Under torchrun, ``auto``/``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``)."""
    if shard.world > 1 and torch.cuda.is_available() and device.strip().lower() in ("auto", "cuda"):
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return device
