"""What a pool holds: the (architecture, seed) job list of ``fpt synth``, from its options.

Kept apart from the CLI so that scripts plan exactly the pool the command would build.
"""

from __future__ import annotations

from fpt.errors import ConfigError
from fpt.synth.space import grid_space, select_archs, select_ld_archs
from fpt.synth.train import Job, plan_jobs, shard_jobs


def parse_int_list(text: str | None, what: str, example: str = "3,4,5") -> list[int]:
    """'3,4,5' -> [3, 4, 5]; '' or 'none' -> []; anything else is a ConfigError naming ``what``."""
    text = (text or "").strip()
    if not text or text.lower() == "none":
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}", hint=f"comma-separated integers, e.g. {example}") from None


def seed_range(n: int, start: int) -> list[int]:
    """``n`` consecutive seeds from ``start``."""
    return list(range(start, start + max(0, n)))


def plan_pool(*, arch: str = "*", ld_arch: str = "none", blocks: str = "1,2", seeds: int = 1, seed_start: int = 0,
              grid_depths: str = "3,4,5", grid_seeds: int = 1, size: int = 64,
              shard_index: int = 0, shard_count: int = 1) -> list[Job]:
    """The jobs of one ``fpt synth`` run (this shard's share), FD then latent decoders then grid.

    Raises ConfigError for a crop size that leaves a latent decoder a latent grid under 4 x 4,
    and for an empty plan (so a typo is not a silent no-op).
    """
    fd_archs = [] if arch.strip().lower() == "none" else select_archs(
        arch, blocks=tuple(parse_int_list(blocks, "--blocks", "1,2,3")))
    ld_archs = select_ld_archs(ld_arch)
    if ld_archs and size < 16 * max(a.F for a in ld_archs) // 4:
        raise ConfigError(f"--size {size} leaves latent decoders a latent grid under 4 x 4",
                          hint="use --size 64 (f16 -> 4 x 4 latent) or more")
    grid_archs = grid_space(parse_int_list(grid_depths, "--grid-depths"))
    jobs = plan_jobs(fd_archs + ld_archs, seed_range(seeds, seed_start), grid_archs, seed_range(grid_seeds, seed_start))
    jobs = shard_jobs(jobs, shard_index, shard_count)
    if not jobs:
        raise ConfigError("nothing to train", hint="check --arch, --seeds, --grid-depths, --grid-seeds")
    return jobs
