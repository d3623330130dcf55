"""The architecture space of synthetic generative models and its stable, readable ids.

Frequency-distribution (FD) models, paper 001 §III-B: a shallow auto-encoder with K down/up
blocks and five per-block options:

====  ==========================================  ======================
code  meaning                                     values (id token)
====  ==========================================  ======================
K     down/up blocks                              1, 2        (K1, K2); 3 (K3) by request
L     conv layers per up block                    1, 2        (L1, L2)
S     order of norm/act w.r.t. the conv           post = conv-norm-act, pre = norm-act-conv
U     upsampling                                  nearest, bilinear, deconv (stride-2 transposed conv)
A     activation                                  none, relu, sigmoid, tanh
N     normalisation                               none, bn (batch), in (instance)
====  ==========================================  ======================

2 x 2 x 2 x 3 x 4 x 3 = 288 architectures, id ``K2-L1-post-deconv-relu-bn``.

Extension (not in the paper): K = 3, a x8 up-sampling stack like the f8 decoders of latent
diffusion models, whose periodic traces (periods 8, 4, 2) the paper's K <= 2 models never leave.
It is opt-in (``fd_space(blocks=(1, 2, 3))``, ``fpt synth --blocks 1,2,3``), so the paper's
288-architecture space, its ablations and FFD tables are unchanged by default.

Grid generators, paper 000 §4: noise-to-noise nets of D blocks (transposed conv then conv),
D in {3, 4, 5}; id ``grid-D4``.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass

from fpt.errors import ConfigError

FD_FAMILY = "fd"
GRID_FAMILY = "grid"

K_VALUES = (1, 2)          # the paper's space
EXTENDED_K_VALUES = (3,)   # opt-in extension
L_VALUES = (1, 2)
S_VALUES = ("post", "pre")
U_VALUES = ("nearest", "bilinear", "deconv")
A_VALUES = ("none", "relu", "sigmoid", "tanh")
N_VALUES = ("none", "bn", "in")
GRID_DEPTHS = (3, 4, 5)


_FD_RE = re.compile(
    r"^K(?P<K>\d+)-L(?P<L>\d+)-(?P<S>[a-z]+)-(?P<U>[a-z]+)-(?P<A>[a-z]+)-(?P<N>[a-z]+)$"
)
_GRID_RE = re.compile(r"^grid-D(?P<D>\d+)$")


@dataclass(frozen=True)
class ArchSpec:
    """One synthetic architecture. FD models use K, L, S, U, A, N; grid generators use depth."""

    family: str
    K: int = 0
    L: int = 0
    S: str = ""
    U: str = ""
    A: str = ""
    N: str = ""
    depth: int = 0

    def __post_init__(self) -> None:
        if self.family == FD_FAMILY:
            for name, value, allowed in (
                ("K", self.K, K_VALUES + EXTENDED_K_VALUES), ("L", self.L, L_VALUES), ("S", self.S, S_VALUES),
                ("U", self.U, U_VALUES), ("A", self.A, A_VALUES), ("N", self.N, N_VALUES),
            ):
                if value not in allowed:
                    raise ConfigError(f"architecture option {name}={value!r} is not one of {allowed}")
        elif self.family == GRID_FAMILY:
            if not isinstance(self.depth, int) or not 1 <= self.depth <= 8:
                raise ConfigError(f"grid generator depth {self.depth!r} must be an integer in 1..8")
        else:
            raise ConfigError(f"unknown model family {self.family!r}", hint="use 'fd' or 'grid'")

    @property
    def id(self) -> str:
        if self.family == GRID_FAMILY:
            return f"grid-D{self.depth}"
        return f"K{self.K}-L{self.L}-{self.S}-{self.U}-{self.A}-{self.N}"

    @property
    def is_grid(self) -> bool:
        return self.family == GRID_FAMILY

    def __str__(self) -> str:
        return self.id


def parse_arch_id(s: str) -> ArchSpec:
    """Inverse of ``ArchSpec.id``; also accepts a model id ``<arch>/s<seed>`` (seed dropped)."""
    text = s.strip().split("/")[0]
    m = _FD_RE.match(text)
    if m:
        return ArchSpec(FD_FAMILY, K=int(m["K"]), L=int(m["L"]), S=m["S"], U=m["U"], A=m["A"], N=m["N"])
    m = _GRID_RE.match(text)
    if m:
        return ArchSpec(GRID_FAMILY, depth=int(m["D"]))
    raise ConfigError(
        f"not an architecture id: {s!r}",
        hint="expected e.g. 'K2-L1-post-deconv-relu-bn' or 'grid-D4'",
    )


def fd_space(blocks: tuple[int, ...] = K_VALUES) -> list[ArchSpec]:
    """Frequency-distribution architectures with K in ``blocks``, in a fixed order.

    The default is the paper's 288; each extra K value adds 144.
    """
    allowed = K_VALUES + EXTENDED_K_VALUES
    bad = [k for k in blocks if k not in allowed]
    if bad or not blocks:
        raise ConfigError(f"block counts {list(blocks)} must be a non-empty subset of {list(allowed)}")
    return [
        ArchSpec(FD_FAMILY, K=k, L=l, S=s, U=u, A=a, N=n)
        for k, l, s, u, a, n in itertools.product(sorted(set(blocks)), L_VALUES, S_VALUES, U_VALUES, A_VALUES, N_VALUES)
    ]


def is_paper_space(arch: ArchSpec | str) -> bool:
    """Whether an FD architecture is in the paper's 288 (False for grid generators and K = 3)."""
    spec = parse_arch_id(arch) if isinstance(arch, str) else arch
    return spec.family == FD_FAMILY and spec.K in K_VALUES


def grid_space(depths=GRID_DEPTHS) -> list[ArchSpec]:
    """Grid generators, one architecture per depth."""
    return [ArchSpec(GRID_FAMILY, depth=int(d)) for d in depths]


def select_archs(pattern: str, *, include_grid: bool = False,
                 blocks: tuple[int, ...] = K_VALUES) -> list[ArchSpec]:
    """FD architectures (K in ``blocks``) whose id matches any comma-separated fnmatch ``pattern``.

    With ``include_grid`` the default grid generators are candidates too. Raises ConfigError
    when nothing matches, so a typo in ``--arch`` is not a silent empty run.
    """
    pats = [p.strip() for p in (pattern or "*").split(",") if p.strip()] or ["*"]
    candidates = fd_space(blocks) + (grid_space() if include_grid else [])
    chosen = [a for a in candidates if any(fnmatch.fnmatchcase(a.id, p) for p in pats)]
    if not chosen:
        raise ConfigError(
            f"no architecture matches {pattern!r}",
            hint="ids look like 'K2-L1-post-deconv-relu-bn'; e.g. --arch 'K1-*-deconv-*'",
        )
    return chosen


def factors(spec: ArchSpec | str) -> dict[str, str]:
    """Categorical factors of an architecture (for NMI / ablations).

    FD: {"K","L","S","U","A","N"} plus "family"; grid generators get "-" for the FD factors,
    U = "deconv" (their upsampler) and "D" = depth.
    """
    if isinstance(spec, str):
        spec = parse_arch_id(spec)
    if spec.is_grid:
        return {"family": GRID_FAMILY, "K": "-", "L": "-", "S": "-", "U": "deconv", "A": "-", "N": "-",
                "D": str(spec.depth)}
    return {"family": FD_FAMILY, "K": str(spec.K), "L": str(spec.L), "S": spec.S, "U": spec.U,
            "A": spec.A, "N": spec.N, "D": "-"}


#: The paper's ablation sub-spaces (paper 001 Table II): name -> predicate on FD specs.
ABLATIONS: dict[str, object] = {
    "w/o K": lambda a: a.K == 1,
    "w/o L": lambda a: a.L == 1,
    "w/o S": lambda a: a.S == "post",
    "w/o U": lambda a: a.U == "bilinear",
    "w/o A": lambda a: a.A == "none",
    "w/o N": lambda a: a.N == "none",
}
