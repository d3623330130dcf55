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

Latent decoders (extension, not in the papers; DESIGN §2b): auto-encoders shaped like the
decoders of today's text-to-image models — a narrow latent at 1/F, then log2(F) up-stages, each
an up-sampler followed by a block, and a final norm -> act -> conv to RGB (the layout of the SD /
VQGAN decoders' last stage). Opt-in (``ld_space()``, ``fpt synth --ld-arch 'LD-*'``); ids start
with ``LD-`` so no paper pattern (``K*``) ever selects them.

====  ==========================================  ======================
code  meaning                                     values (id token)
====  ==========================================  ======================
F     down/up factor                              f8 (SD, LDM, PixArt), f16 (VQGAN)
Z     latent channels                             z4 (SD 1.x / 2.x / XL); z8, z16 by request (SD3 / FLUX: 16)
U     up-sampler                                  nearest (nearest x2 + 3x3 conv, as SD / VQGAN),
                                                  shuffle (3x3 conv to 4C + pixel-shuffle), deconv (4x4/2)
R     block                                       res (GN-act-conv x2 + skip, a ResNet block), plain (GN-act-conv)
N     normalisation                               gn (GroupNorm, 4 channels per group), none
A     activation                                  silu (= Swish), gelu
Q     bottleneck                                  ae (continuous), vq (codebook, straight-through)
====  ==========================================  ======================

2 x 3 x 2 x 2 x 2 x 2 = 96 architectures at z4, id ``LD-f8-z4-nearest-res-gn-silu-ae``.
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

LD_FAMILY = "ld"
LD_F_VALUES = (8, 16)
LD_Z_VALUES = (4,)              # the default space
EXTENDED_LD_Z_VALUES = (8, 16)  # by request
LD_U_VALUES = ("nearest", "shuffle", "deconv")
LD_R_VALUES = ("res", "plain")
LD_N_VALUES = ("gn", "none")
LD_A_VALUES = ("silu", "gelu")
LD_Q_VALUES = ("ae", "vq")


_FD_RE = re.compile(
    r"^K(?P<K>\d+)-L(?P<L>\d+)-(?P<S>[a-z]+)-(?P<U>[a-z]+)-(?P<A>[a-z]+)-(?P<N>[a-z]+)$"
)
_GRID_RE = re.compile(r"^grid-D(?P<D>\d+)$")
_LD_RE = re.compile(
    r"^LD-f(?P<F>\d+)-z(?P<Z>\d+)-(?P<U>[a-z]+)-(?P<R>[a-z]+)-(?P<N>[a-z]+)-(?P<A>[a-z]+)-(?P<Q>[a-z]+)$"
)


@dataclass(frozen=True)
class ArchSpec:
    """One synthetic architecture. FD models use K, L, S, U, A, N; grid generators use depth;
    latent decoders use F, Z, U, R, N, A, Q (U, N, A with the LD_* values)."""

    family: str
    K: int = 0
    L: int = 0
    S: str = ""
    U: str = ""
    A: str = ""
    N: str = ""
    depth: int = 0
    F: int = 0
    Z: int = 0
    R: str = ""
    Q: str = ""

    def __post_init__(self) -> None:
        if self.family == FD_FAMILY:
            for name, value, allowed in (
                ("K", self.K, K_VALUES + EXTENDED_K_VALUES), ("L", self.L, L_VALUES), ("S", self.S, S_VALUES),
                ("U", self.U, U_VALUES), ("A", self.A, A_VALUES), ("N", self.N, N_VALUES),
            ):
                if value not in allowed:
                    raise ConfigError(f"architecture option {name}={value!r} is not one of {allowed}")
        elif self.family == LD_FAMILY:
            for name, value, allowed in (
                ("F", self.F, LD_F_VALUES), ("Z", self.Z, LD_Z_VALUES + EXTENDED_LD_Z_VALUES),
                ("U", self.U, LD_U_VALUES), ("R", self.R, LD_R_VALUES), ("N", self.N, LD_N_VALUES),
                ("A", self.A, LD_A_VALUES), ("Q", self.Q, LD_Q_VALUES),
            ):
                if value not in allowed:
                    raise ConfigError(f"latent-decoder option {name}={value!r} is not one of {allowed}")
        elif self.family == GRID_FAMILY:
            if not isinstance(self.depth, int) or not 1 <= self.depth <= 8:
                raise ConfigError(f"grid generator depth {self.depth!r} must be an integer in 1..8")
        else:
            raise ConfigError(f"unknown model family {self.family!r}", hint="use 'fd', 'grid' or 'ld'")

    @property
    def id(self) -> str:
        if self.family == GRID_FAMILY:
            return f"grid-D{self.depth}"
        if self.family == LD_FAMILY:
            return f"LD-f{self.F}-z{self.Z}-{self.U}-{self.R}-{self.N}-{self.A}-{self.Q}"
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
    m = _LD_RE.match(text)
    if m:
        return ArchSpec(LD_FAMILY, F=int(m["F"]), Z=int(m["Z"]), U=m["U"], R=m["R"], N=m["N"], A=m["A"], Q=m["Q"])
    raise ConfigError(
        f"not an architecture id: {s!r}",
        hint="expected e.g. 'K2-L1-post-deconv-relu-bn', 'grid-D4' or 'LD-f8-z4-nearest-res-gn-silu-ae'",
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


def ld_space(factors_: tuple[int, ...] = LD_F_VALUES, latents: tuple[int, ...] = LD_Z_VALUES) -> list[ArchSpec]:
    """Latent-decoder architectures (extension) with F in ``factors_`` and Z in ``latents``, fixed order."""
    bad = [f for f in factors_ if f not in LD_F_VALUES] + [z for z in latents if z not in LD_Z_VALUES + EXTENDED_LD_Z_VALUES]
    if bad or not factors_ or not latents:
        raise ConfigError(f"latent-decoder factors {list(factors_)} / latents {list(latents)}: "
                          f"use F in {list(LD_F_VALUES)}, Z in {list(LD_Z_VALUES + EXTENDED_LD_Z_VALUES)}")
    return [
        ArchSpec(LD_FAMILY, F=f, Z=z, U=u, R=r, N=n, A=a, Q=q)
        for f, z, u, r, n, a, q in itertools.product(sorted(set(factors_)), sorted(set(latents)), LD_U_VALUES,
                                                     LD_R_VALUES, LD_N_VALUES, LD_A_VALUES, LD_Q_VALUES)
    ]


def select_ld_archs(pattern: str, latents: tuple[int, ...] = LD_Z_VALUES) -> list[ArchSpec]:
    """Latent-decoder architectures whose id matches any comma-separated fnmatch ``pattern``;
    ``"none"`` or empty gives none. Raises ConfigError when a pattern matches nothing."""
    pats = [p.strip() for p in (pattern or "").split(",") if p.strip() and p.strip().lower() != "none"]
    if not pats:
        return []
    chosen = [a for a in ld_space(latents=latents) if any(fnmatch.fnmatchcase(a.id, p) for p in pats)]
    if not chosen:
        raise ConfigError(
            f"no latent-decoder architecture matches {pattern!r}",
            hint="ids look like 'LD-f8-z4-nearest-res-gn-silu-ae'; e.g. --ld-arch 'LD-f8-*'",
        )
    return chosen


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
    U = "deconv" (their upsampler) and "D" = depth. Latent decoders: the shared keys (K = number
    of up-stages, L = 1 or 2 convs per block, S = "pre", U, A, N) plus "F", "Z", "R", "Q".
    """
    if isinstance(spec, str):
        spec = parse_arch_id(spec)
    if spec.family == LD_FAMILY:
        return {"family": LD_FAMILY, "K": str(spec.F.bit_length() - 1), "L": "2" if spec.R == "res" else "1",
                "S": "pre", "U": spec.U, "A": spec.A, "N": spec.N, "D": "-",
                "F": str(spec.F), "Z": str(spec.Z), "R": spec.R, "Q": spec.Q}
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
