"""Training many synthetic models: one process per CPU core, and many seeds of one architecture
in one launch (``torch.func``) — the GPU path.

The pool's models of one architecture differ only in their seed: the same layers, the same
shapes. Stacking their weights (``torch.func.stack_module_state``) and running the network once
under ``torch.func.vmap`` trains M models with one kernel launch per layer instead of M, which is
what makes a GPU worth using for thousands of small models (DESIGN §2; paper 001 trains 5760).

Each model is trained exactly as :func:`fpt.synth.train.train_one` trains it alone: the same
initialisation (seeded by ``model_seed``), the same per-model batch and validation draws, the
same loss, Adam (element-wise, so one Adam over stacked weights is M independent Adams) and the
same stop rules (target, plateau, cap), checked per model. A model that stops is taken out of
the stack (its optimiser state with it), so finished models cost nothing more. Results match
the one-model path up to float rounding (grouped kernels sum in another order); the tests
compare the two.

Cost accounting: ``ModelRecord.wall_s`` of a grouped model is the group's time until that model
stopped, divided by the group's size — the amortised share, so pool summaries stay comparable.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from fpt.devices import autocast_context
from fpt.synth.nets import build_model
from fpt.errors import ConfigError
from fpt.synth.space import ArchSpec, parse_arch_id
from fpt.synth.train import (GATE_SLACK, CropBank, Job, ModelRecord, TrainConfig, at_target, constant_mse, model_seed,
                              plateau_update, train_one, training_record)


class _Stack:
    """M models of one architecture as stacked tensors, trained together."""

    def __init__(self, spec: ArchSpec, seeds: Sequence[int], cfg: TrainConfig, device: torch.device):
        models = []
        for seed in seeds:
            torch.manual_seed(model_seed(spec.id, seed))  # the init train_one draws
            models.append(build_model(spec, cfg.width, cfg.kernel))
        self.base = copy.deepcopy(models[0]).to("meta")  # structure only; weights come from the stack
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=cfg.lr)

        def one(p: dict, b: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = functional_call(self.base, (p, b), (x,))
            aux = getattr(self.base, "aux_loss", None)  # VQ: set during this call, read in it
            return y, (aux if aux is not None else y.new_zeros(()))

        self._forward = vmap(one)

    def forward(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (M, B, ...) -> outputs (M, B, ...) and per-model auxiliary losses (M,)."""
        self.base.train(train)
        if train:
            return self._forward(self.params, self.buffers, x)
        with torch.no_grad():
            return self._forward(self.params, self.buffers, x)

    def state(self, i: int) -> dict[str, np.ndarray]:
        """Model i's state dict, as ``train_one`` returns it (float32 numpy)."""
        out = {k: v[i].detach().float().cpu().contiguous().numpy() for k, v in {**self.params, **self.buffers}.items()}
        order = self.base.state_dict().keys()
        return {k: out[k] for k in order}

    def keep(self, rows: list[int]) -> None:
        """Drop every model but ``rows``, with their Adam moments."""
        idx = torch.as_tensor(rows, device=next(iter(self.params.values())).device)
        old = self.opt
        new_params = {k: v.detach()[idx].clone().requires_grad_() for k, v in self.params.items()}
        self.opt = torch.optim.Adam(list(new_params.values()), lr=old.param_groups[0]["lr"])
        for (k, p_old), p_new in zip(self.params.items(), new_params.values()):
            st = old.state.get(p_old)
            if st:
                self.opt.state[p_new] = {"step": st["step"].clone() if torch.is_tensor(st["step"]) else st["step"],
                                         "exp_avg": st["exp_avg"][idx].clone(),
                                         "exp_avg_sq": st["exp_avg_sq"][idx].clone()}
        self.params = new_params
        self.buffers = {k: v[idx].clone() for k, v in self.buffers.items()}


def train_group(spec: ArchSpec, seeds: Sequence[int], bank: CropBank, cfg: TrainConfig = TrainConfig(),
                device: torch.device | str = "cpu") -> list[tuple[dict[str, np.ndarray], ModelRecord]]:
    """Train one model per seed of ``spec`` together; returns [(state, record)] in ``seeds`` order."""
    device = torch.device(device)
    if bank.size != cfg.size:
        raise ConfigError(f"crop bank holds {bank.size}-px crops but the config asks for {cfg.size}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError("a group needs distinct seeds")
    t0 = time.perf_counter()
    m_all = len(seeds)
    stack = _Stack(spec, seeds, cfg, device)
    base_seeds = [model_seed(spec.id, s) for s in seeds]
    gens = [torch.Generator().manual_seed(s + 1) for s in base_seeds]
    crops, n = bank.crops, len(bank)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    grid = spec.is_grid
    if grid:
        probe = stack.base.noise_shape(cfg.batch, cfg.size, cfg.size)
        val_shape = stack.base.noise_shape(cfg.val_batch, cfg.size, cfg.size)
        val = torch.stack([torch.randn(val_shape, generator=torch.Generator().manual_seed(s + 2)) for s in base_seeds])
    else:
        draws = [torch.randint(0, n, (min(cfg.val_batch, n),), generator=torch.Generator().manual_seed(s + 2))
                 for s in base_seeds]
        val = torch.stack([crops[d] for d in draws])
    val = val.to(device)
    baselines = [float("nan")] * m_all if grid else [constant_mse(v) for v in val]

    def batch(rows: list[int]) -> torch.Tensor:
        if grid:
            return torch.stack([torch.randn(probe, generator=gens[r]) for r in rows]).to(device)
        return torch.stack([crops[torch.randint(0, n, (cfg.batch,), generator=gens[r])] for r in rows]).to(device)

    def losses(x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective per model, monitored value per model), both (M,)."""
        with autocast_context(device, use_amp and train):
            y, aux = stack.forward(x, train)
        dims = tuple(range(1, y.ndim))
        if grid:
            mag = y.float().abs().mean(dim=dims)
            return torch.log(mag / cfg.grid_target).square(), mag
        mse = (y.float() - x.float()).square().mean(dim=dims)
        return mse + aux.float(), mse

    active = list(range(m_all))          # rows of the stack -> index into seeds
    results: dict[int, tuple[dict[str, np.ndarray], ModelRecord]] = {}
    best = [math.inf] * m_all
    stale = [0] * m_all
    final = [float("nan")] * m_all
    plateau = cfg.patience > 0 and not grid
    step = 0
    while active and step < cfg.max_steps:
        stack.opt.zero_grad(set_to_none=True)
        objective, monitored = losses(batch(active), True)
        # the sum's gradient w.r.t. model i's weights is model i's own loss gradient
        scaler.scale(objective.sum()).backward()
        scaler.step(stack.opt)
        scaler.update()
        step += 1
        if step % cfg.check_every and step != cfg.max_steps:
            continue
        mon = monitored.detach().float().cpu().tolist()
        held: list[float] | None = None
        done: list[int] = []
        for row, i in enumerate(active):
            close = at_target(mon[row], grid, cfg, GATE_SLACK[grid])
            if not (close or step == cfg.max_steps or plateau):
                continue
            if held is None:  # one held-out pass for the whole stack (eval mode, as train_one)
                held = losses(val[active], False)[1].cpu().tolist()
            final[i] = held[row]
            if at_target(final[i], grid, cfg) or step == cfg.max_steps:
                done.append(row)
            elif plateau:
                best[i], stale[i] = plateau_update(final[i], best[i], stale[i], baselines[i], cfg)
                if stale[i] >= cfg.patience:
                    done.append(row)
        if done:
            elapsed = time.perf_counter() - t0
            for row in done:
                i = active[row]
                results[i] = (stack.state(row), training_record(
                    spec, seeds[i], cfg, device, steps=step, loss=final[i], reached=at_target(final[i], grid, cfg),
                    wall_s=elapsed / m_all, baseline=baselines[i], group=m_all))
            rows = [r for r in range(len(active)) if r not in done]
            active = [active[r] for r in rows]
            if active:
                stack.keep(rows)
    return [results[i] for i in range(m_all)]


# ------------------------------------------------------------------------------ many jobs

_WORKER_BANK: CropBank | None = None


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    # a worker must not turn the parent's Ctrl-C into a traceback; the parent stops it
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def group_jobs(jobs: Sequence[Job], group: int) -> list[list[Job]]:
    """Runs of consecutive jobs of one architecture, each cut to at most ``group`` models: the
    units :func:`train_group` trains together (``plan_jobs`` lists an
    architecture's seeds together, so a pool of S seeds per architecture makes groups of S)."""
    if group < 1:
        raise ConfigError(f"group must be >= 1, got {group}")
    chunks: list[list[Job]] = []
    for job in jobs:
        last = chunks[-1] if chunks else None
        if last is not None and last[0][0].id == job[0].id and len(last) < group:
            last.append(job)
        else:
            chunks.append([job])
    return chunks


def _train_chunk(chunk: Sequence[Job], bank: CropBank, cfg: TrainConfig,
                 device: torch.device | str) -> list[tuple[dict[str, np.ndarray], ModelRecord]]:
    if len(chunk) == 1:
        return [train_one(chunk[0][0], chunk[0][1], bank, cfg, device)]
    return train_group(chunk[0][0], [s for _, s in chunk], bank, cfg, device)


def _worker_train(args: tuple[str, list[int], TrainConfig]) -> list[tuple[dict[str, np.ndarray], ModelRecord]]:
    arch_id, seeds, cfg = args
    assert _WORKER_BANK is not None
    spec = parse_arch_id(arch_id)
    return _train_chunk([(spec, s) for s in seeds], _WORKER_BANK, cfg, "cpu")


def train_many(jobs: Sequence[Job], bank: CropBank, cfg: TrainConfig, *, device: str | torch.device = "cpu",
               workers: int = 1, threads_per_worker: int = 1, group: int = 1,
               on_done: Callable[[dict[str, np.ndarray], ModelRecord], None] | None = None) -> Iterator[tuple[dict[str, np.ndarray], ModelRecord]]:
    """Train ``jobs``, yielding (state, record) as each finishes (completion order).

    ``group > 1`` trains up to that many seeds of one architecture together in one launch
    (:func:`train_group`): the way to fill a GPU with small models. ``workers > 1`` (CPU
    only) runs one process per worker, forked so they share the crop bank copy-on-write; each
    uses ``threads_per_worker`` torch threads.
    """
    device = torch.device(device)
    if workers > 1 and device.type != "cpu":
        raise ConfigError("--workers > 1 is for CPU training", hint="on a GPU use --workers 1 (and --group)")
    chunks = group_jobs(jobs, group)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _train_chunk(chunk, bank, cfg, device)
        return
    import multiprocessing as mp

    global _WORKER_BANK
    _WORKER_BANK = bank
    ctx = mp.get_context("fork")
    pool = ctx.Pool(workers, initializer=_worker_init, initargs=(threads_per_worker,))
    try:
        for results in pool.imap_unordered(_worker_train, [(c[0][0].id, [s for _, s in c], cfg) for c in chunks]):
            yield from results
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _WORKER_BANK = None
