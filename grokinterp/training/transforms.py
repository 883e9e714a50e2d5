"""Gradient transforms: what happens to the gradients between ``backward()`` and the optimizer step.

A transform is an object with three methods:

* ``__call__(grads)`` — modify ``grads`` (``{name: gradient}``, the parameters' ``.grad`` tensors)
  **in place**, with tensor operations only (no ``.item()``, no host values: the step may be
  captured in a CUDA graph and replayed);
* ``state_dict() -> {key: tensor}`` and ``load_state_dict(state)`` — whatever it remembers from
  step to step (an EMA of past gradients, a window), saved with the optimizer at every flush so a
  resumed run continues bit-identically.

Transforms are registered by name and listed in ``TrainConfig.grad_transforms``; the trainer
builds them with ``factory(params, train_config)`` and applies them in that order. None are active
by default. Built in:

=================  ===================================================================================
name               transform
=================  ===================================================================================
``grokfast_ema``   Grokfast-EMA (Lee et al. 2024): ``g ← g + λ · ema``, ``ema ← α ema + (1 − α) g``
                   (:class:`GrokfastEMA`; ``grokfast_alpha``, ``grokfast_lamb``)
``grokfast_ma``    Grokfast-MA: ``g ← g + λ · mean(last w gradients)`` once ``w`` are seen
                   (:class:`GrokfastMA`; ``grokfast_window``, ``grokfast_lamb``)
``orthograd``      ⊥Grad (Prieto et al. 2025): each parameter's gradient without its component along
                   the parameter, rescaled to the original norm (:class:`OrthoGrad`)
=================  ===================================================================================

All three are tensor operations only (no host syncs), so they run inside the CUDA graph. There is
one registry (:data:`TRANSFORMS`; :data:`STACKED_TRANSFORMS` is the same dict) and each entry is
written once, over ``R ≥ 1`` runs with per-run settings (:class:`StackedGrokfastEMA`,
:class:`StackedGrokfastMA` — the window is the stack's —, :class:`StackedOrthoGrad`), whose state is
each run's state stacked ``[run, ...]``; a single run is a stack of one (``GrokfastEMA``,
``GrokfastMA``, ``OrthoGrad`` are those entries over a stack of one, for code that builds one
directly). A transform registered with a single-run factory, as below, trains runs alone.

Example:
    >>> class ClipNorm:                                                     # doctest: +SKIP
    ...     def __init__(self, params, tc): self.max_norm = 1.0
    ...     def __call__(self, grads): torch.nn.utils.clip_grad_norm_(list(grads.values()), self.max_norm)
    ...     def state_dict(self): return {}
    ...     def load_state_dict(self, state): pass
    >>> register_gradient_transform("clip_norm", ClipNorm)                  # doctest: +SKIP
    >>> make_config("tiny", grad_transforms=("clip_norm",))                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import ConfigError, RunError

__all__ = ["GradientTransform", "TRANSFORMS", "register_gradient_transform", "build_transforms",
           "check_transforms", "transform_state_tensors", "load_transform_state", "GrokfastEMA", "GrokfastMA",
           "OrthoGrad", "orthogonalize_", "STACKED_TRANSFORMS", "register_stacked_transform", "stacked_orthogonalize_",
           "StackedGrokfastEMA", "StackedGrokfastMA", "StackedOrthoGrad", "stackable_transform", "RunSlice"]


class GradientTransform(Protocol):
    def __call__(self, grads: dict[str, Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


Factory = Callable[[dict[str, torch.nn.Parameter], TrainConfig], GradientTransform]
StackedFactory = Callable[[dict[str, Tensor], list[TrainConfig]], GradientTransform]

#: The registry: every gradient transform by name, as ``factory(stacked_params, train_configs)`` over
#: a stack of ``R ≥ 1`` runs (a single run is a stack of one; :data:`STACKED_TRANSFORMS` names the same
#: dict). Parameters enter as ``{name: [run, ...]}`` views; the transform's ``__call__(grads)`` acts in
#: place on stacked gradients ``{name: [run, ...]}`` (tensor ops only) and its ``state_dict()`` /
#: ``load_state_dict(state)`` hold ``[run, ...]`` tensors: run ``r``'s slice ``[r]`` of each is what a
#: single run's state file holds under the same key.
TRANSFORMS: dict[str, StackedFactory] = {}
#: The same registry under its earlier name (there is only one).
STACKED_TRANSFORMS = TRANSFORMS


class _SingleRunOnly:
    """A transform registered with a single-run factory ``factory(named_params, train_config)`` (the
    extension API of earlier releases), over a stack of one: it gets the run's parameters and
    gradients as ``{name: tensor}`` (views of the stack's, the leading run axis dropped), and its
    state gains the run axis. Runs with such a transform train alone (``max_runs = 1``)."""

    max_runs = 1

    def __init__(self, factory: Factory):
        self.factory = factory

    def __call__(self, params: dict[str, Tensor], tcs: list[TrainConfig]) -> GradientTransform:
        if len(tcs) != 1:
            raise ConfigError(f"train.grad_transforms: {tcs[0].grad_transforms} include a transform without a "
                              f"stacked version; its runs train alone, got a stack of {len(tcs)}")
        return _OneRun(self.factory({k: v[0] for k, v in params.items()}, tcs[0]))


class _OneRun:
    """A single-run transform seen over a stack of one (:class:`_SingleRunOnly`)."""

    def __init__(self, inner: GradientTransform):
        self.inner = inner

    def __call__(self, grads: dict[str, Tensor]) -> None:
        self.inner({k: g[0] for k, g in grads.items()})

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.unsqueeze(0) for k, v in self.inner.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.inner.load_state_dict({k: v[0] for k, v in state.items()})


def register_gradient_transform(name: str, factory: Factory | None = None, *,
                                stacked: StackedFactory | None = None) -> None:
    """Make a transform available as a name in ``TrainConfig.grad_transforms``.

    Args:
        name: an identifier.
        factory: a single-run ``factory(named_params, train_config) -> transform`` (see the module
            docstring); it may read its settings from config fields. Without ``stacked``, runs with
            this transform train alone (a stack of one).
        stacked: the transform over stacks, ``factory(stacked_params, train_configs)``
            (:data:`TRANSFORMS`); when given, the registry keeps it (``factory`` is not needed).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"gradient transform name must be an identifier, got {name!r}")
    if stacked is None and factory is None:
        raise ConfigError(f"gradient transform {name!r}: give a factory or a stacked factory")
    TRANSFORMS[name] = stacked if stacked is not None else _SingleRunOnly(factory)  # type: ignore[arg-type]


def register_stacked_transform(name: str, factory: StackedFactory) -> None:
    """Register the stacked ``factory(stacked_params, train_configs)`` under ``name`` (:data:`TRANSFORMS`)."""
    register_gradient_transform(name, stacked=factory)


def stackable_transform(name: str) -> bool:
    """Whether the transform ``name`` trains runs in stacks of more than one."""
    return name in TRANSFORMS and getattr(TRANSFORMS[name], "max_runs", None) != 1


def check_transforms(tc: TrainConfig) -> list[StackedFactory]:
    """The factories of ``tc.grad_transforms``; :class:`ConfigError` naming the field if one is unknown."""
    out = []
    for name in tc.grad_transforms:
        if name not in TRANSFORMS:
            known = ", ".join(sorted(TRANSFORMS)) or "none registered"
            raise ConfigError(f"train.grad_transforms: unknown gradient transform {name!r}; known: {known}")
        out.append(TRANSFORMS[name])
    return out


def build_transforms(params: dict[str, Tensor], tcs: list[TrainConfig]) -> list[GradientTransform]:
    """The configured transforms of a stack (``params`` ``{name: [run, ...]}``, one train config per
    run; the list of names is the stack's), in order (an empty list by default)."""
    return [factory(params, tcs) for factory in check_transforms(tcs[0])]


class RunSlice:
    """One run's view of a stacked transform's state (so its keys are those of a single run): its
    ``state_dict()`` is run ``r``'s slice; ``load_state_dict`` collects run ``r``'s tensors into
    ``collect`` (``{key: {run: tensor}}``), which the caller stacks and loads once every run is read."""

    def __init__(self, transform: GradientTransform, r: int, collect: dict[str, dict[int, Tensor]] | None = None):
        self.transform, self.r, self.collect = transform, r, collect

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v[self.r] for k, v in self.transform.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        assert self.collect is not None
        for k, v in state.items():
            self.collect.setdefault(k, {})[self.r] = v


def _prefix(i: int, name: str) -> str:
    return f"transform/{i}.{name}/"


def transform_state_tensors(transforms: list[GradientTransform], names: tuple[str, ...]) -> dict[str, Tensor]:
    """Each transform's ``state_dict()`` under ``transform/<position>.<name>/<key>``."""
    out: dict[str, Tensor] = {}
    for i, (t, name) in enumerate(zip(transforms, names)):
        for key, val in t.state_dict().items():
            out[_prefix(i, name) + key] = val
    return out


def load_transform_state(transforms: list[GradientTransform], names: tuple[str, ...],
                         tensors: dict[str, Tensor], where: str) -> None:
    """Give each transform back what :func:`transform_state_tensors` saved; unknown keys raise :class:`RunError`."""
    known = {_prefix(i, n) for i, n in enumerate(names)}
    stray = [k for k in tensors if k.startswith("transform/") and not any(k.startswith(pre) for pre in known)]
    if stray:
        raise RunError(f"{where}: state of gradient transform(s) not in this run's config: {stray[:3]}")
    for i, (t, name) in enumerate(zip(transforms, names)):
        pre = _prefix(i, name)
        state = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
        try:
            t.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise RunError(f"{where}: cannot restore the state of gradient transform {name!r} ({e})") from None


# -- built-in transforms ------------------------------------------------------------------------------
def _check_state(state: dict[str, Tensor], own: dict[str, Tensor]) -> None:
    """Every key of ``own`` present in ``state`` with the same shape and dtype, and nothing else."""
    if set(state) != set(own):
        raise KeyError(f"expected keys {sorted(own)[:4]}..., got {sorted(state)[:4]}...")
    for k, t in own.items():
        if tuple(state[k].shape) != tuple(t.shape) or state[k].dtype != t.dtype:
            raise ValueError(f"{k}: expected shape {list(t.shape)} {t.dtype}, got {list(state[k].shape)} "
                             f"{state[k].dtype}")


class _StatefulTransform:
    """Base of the built-in transforms: the state is a dict of tensors updated in place."""

    state: dict[str, Tensor]

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _check_state(state, self.state)
        with torch.no_grad():
            for k, t in self.state.items():
                t.copy_(state[k])


class _StackOfOne(_StatefulTransform):
    """A single run's transform that is its stacked version over a stack of one run: the parameters
    and gradients enter as ``[1, ...]`` views, and the state is the run's slice of the stacked state
    (views: the keys, shapes and dtypes of a single run's state, loaded in place)."""

    @staticmethod
    def _stacked_class() -> Callable[[dict[str, Tensor], list[TrainConfig]], _StatefulTransform]:
        raise NotImplementedError  # pragma: no cover

    def __init__(self, params: dict[str, torch.nn.Parameter], tc: TrainConfig):
        self.stack = self._stacked_class()({k: p.detach().unsqueeze(0) for k, p in params.items()}, [tc])
        self.state = {k: v[0] for k, v in self.stack.state.items()}

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> None:
        self.stack({k: g.unsqueeze(0) for k, g in grads.items()})


class GrokfastEMA(_StackOfOne):
    """Grokfast-EMA gradient filter (Lee et al. 2024, ``gradfilter_ema``): amplify the slow gradient.

    Args:
        params: the named parameters (state is kept per parameter, on its device).
        tc: reads ``grokfast_alpha`` (``α``) and ``grokfast_lamb`` (``λ``).

    Notes:
        Per parameter, with ``g_t`` the gradient of step ``t``:
        ``ema_0 = g_0``, ``ema_t = α · ema_{t−1} + (1 − α) · g_t``, and the optimizer receives
        ``g_t + λ · ema_t`` (their code: the EMA starts from the first gradient, is updated
        before it is used, and covers every parameter with a gradient). The same float operations
        in the same order as their code (``ema · α + g · (1 − α)``, then ``g + ema · λ``; at the
        first step ``ema`` is ``g_0`` itself), chosen on the device by ``torch.where`` so the first
        step needs no host-side branch (CUDA graphs). Written once: this is
        :class:`StackedGrokfastEMA` over a stack of one run.
    """

    @staticmethod
    def _stacked_class():
        return StackedGrokfastEMA


class GrokfastMA(_StackOfOne):
    """Grokfast-MA gradient filter (Lee et al. 2024, ``gradfilter_ma`` with ``filter_type="mean"``,
    ``warmup=True``): amplify the mean of the last ``w`` gradients.

    Args:
        params: the named parameters.
        tc: reads ``grokfast_window`` (``w``) and ``grokfast_lamb`` (``λ``).

    Notes:
        Per parameter: ``g_t ← g_t + λ · (1/w) Σ_{i=t−w+1..t} g_i`` once ``w`` gradients have been
        seen (their warm-up: the gradient passes unchanged before that). The window is a ring
        buffer ``[w, ...]`` and its sum a float64 running sum (add the newest, subtract the one
        it replaces), so a step costs ``O(#params)`` whatever ``w``; their code re-sums a deque
        in float32 every step, which agrees to float32 rounding (tested). Memory: ``w`` copies of
        the parameters. Written once: this is :class:`StackedGrokfastMA` over a stack of one run.
    """

    @staticmethod
    def _stacked_class():
        return StackedGrokfastMA


def orthogonalize_(w: Tensor, g: Tensor, eps: float = 1e-30) -> None:
    """⊥Grad on one parameter, in place: remove from ``g`` its component along ``w``, keep its norm.

    Notes:
        ``g⊥ = g − (w·g / (w·w + ε)) w``, then ``g ← g⊥ · ‖g‖ / (‖g⊥‖ + ε)`` with ``ε = 1e-30``
        (Prieto et al. 2025; the rescaling to the original norm is their released ``OrthoGrad``'s,
        the paper's equation is the projection). A zero parameter (a bias at initialisation)
        leaves ``g`` as it is.
    """
    # torch.dot is BLAS's, whose rounding depends on where the vectors start in memory: w, a view of
    # the trainer's flat row, is read from a copy of its own (aligned as a parameter of its own always
    # was); g is the gradient where autograd wrote it (the single-run step projects before it gathers
    # the gradients into the flat row, training/step.py), so the bits are those of earlier releases.
    wf, gf = w.detach().reshape(-1).clone(), g.reshape(-1)
    proj = torch.dot(wf, gf) / (torch.dot(wf, wf) + eps)
    g_orth = gf - proj * wf
    gf.copy_(g_orth * (gf.norm() / (g_orth.norm() + eps)))


class OrthoGrad(_StackOfOne):
    """⊥Grad (Prieto et al. 2025) as a gradient transform: every parameter's gradient made
    orthogonal to the parameter (:func:`orthogonalize_`). Stateless. The optimizer
    ``ortho_adamw`` (⊥AdamW) applies the same projection inside AdamW's step. Written once: this is
    :class:`StackedOrthoGrad` over a stack of one run."""

    @staticmethod
    def _stacked_class():
        return StackedOrthoGrad




# -- stacked transforms: R runs at once, per-run settings ------------------------------------------------------
def _runs(values: list[float], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Per-run values ``[run]`` shaped to broadcast over ``like [run, ...]`` (rounded from float64 once)."""
    t = torch.tensor(values, dtype=dtype or like.dtype, device=like.device)
    return t.view(-1, *[1] * (like.ndim - 1))


def stacked_orthogonalize_(params: dict[str, Tensor], grads: dict[str, Tensor], eps: float = 1e-30) -> None:
    """:func:`orthogonalize_` on every run of a stack at once, in place: ``params`` and ``grads`` are
    ``{name: [run, ...]}``; each run's parameter tensor is treated as the single run's."""
    for k, g in grads.items():
        R = g.shape[0]
        if R == 1:  # a single run: torch.dot (BLAS) as ever, so its bits are those of earlier releases
            orthogonalize_(params[k][0], g[0], eps)
            continue
        w, gf = params[k].detach().reshape(R, -1), g.reshape(R, -1)
        proj = (w * gf).sum(1, keepdim=True) / ((w * w).sum(1, keepdim=True) + eps)
        g_orth = gf - proj * w
        scale = gf.norm(dim=1, keepdim=True) / (g_orth.norm(dim=1, keepdim=True) + eps)
        g.copy_((g_orth * scale).view_as(g))


#: Elements of one chunk of runs in the CPU passes of :class:`StackedGrokfastEMA` over a whole stack:
#: a few runs at a time, so what one operation writes is still in the cache for the next.
CHUNK_ELEMENTS = 1 << 16


def _flat_rows(views: dict[str, Tensor]) -> Tensor | None:
    """The ``[run, n]`` tensor that ``views`` (``{name: [run, ...]}``) tile in order, row by row, when
    they are views of one (the stacked trainer's flat parameter and its gradient); else ``None``."""
    vs = list(views.values())
    base = vs[0]._base if vs else None
    if base is None or base.ndim != 2 or not base.is_contiguous():
        return None
    R, n = base.shape
    off = base.storage_offset()
    for v in vs:
        if (v._base is not base or v.ndim < 1 or v.shape[0] != R or v.stride(0) != n or v.storage_offset() != off
                or not v[0].is_contiguous()):
            return None
        off += v[0].numel()
    return base if off - base.storage_offset() == n else None


class StackedGrokfastEMA(_StatefulTransform):
    """:class:`GrokfastEMA` over a stack, with per-run ``grokfast_alpha`` and ``grokfast_lamb``: the same
    float operations in the same order per run; state ``ema/<name> [run, ...]`` and ``steps [run]``.

    Where the parameters and the gradients are views of one ``[run, n_params]`` tensor (the stacked
    trainer's), the state is one such tensor too and each step runs over whole rows, a few runs at a
    time on CPU (:data:`CHUNK_ELEMENTS`): the same elementwise operations, so the same bits."""

    def __init__(self, params: dict[str, Tensor], tcs: list[TrainConfig]):
        self.alpha, self.one_minus_alpha, self.lamb = {}, {}, {}
        self.state = {}
        flat = _flat_rows(params)
        self.flat_ema = None if flat is None else torch.zeros(flat.shape, dtype=flat.dtype, device=flat.device)
        off = 0
        for k, p in params.items():
            self.alpha[k] = _runs([tc.grokfast_alpha for tc in tcs], p)
            self.one_minus_alpha[k] = _runs([1 - tc.grokfast_alpha for tc in tcs], p)
            self.lamb[k] = _runs([tc.grokfast_lamb for tc in tcs], p)
            if self.flat_ema is None:
                self.state[f"ema/{k}"] = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
            else:  # views of the flat state, in the parameters' order
                size = p[0].numel()
                self.state[f"ema/{k}"] = self.flat_ema[:, off:off + size].view(p.shape)
                off += size
        p0 = next(iter(params.values()))
        self.state["steps"] = torch.zeros(len(tcs), dtype=torch.int64, device=p0.device)
        if self.flat_ema is not None:
            self.rows = {name: _runs([getattr(tc, f) if f != "oma" else 1 - tc.grokfast_alpha for tc in tcs],
                                     self.flat_ema)
                         for name, f in (("alpha", "grokfast_alpha"), ("oma", "oma"), ("lamb", "grokfast_lamb"))}

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> None:
        first = self.state["steps"] == 0
        flat = None if self.flat_ema is None else _flat_rows(grads)
        if flat is not None and flat.shape == self.flat_ema.shape:
            R, n = flat.shape
            step = max(1, CHUNK_ELEMENTS // n) if flat.device.type == "cpu" else R
            a, oma, lamb = self.rows["alpha"], self.rows["oma"], self.rows["lamb"]
            for r0 in range(0, R, step):
                r1 = min(R, r0 + step)
                g, ema = flat[r0:r1], self.flat_ema[r0:r1]
                ema.copy_(torch.where(first[r0:r1, None], g, ema) * a[r0:r1] + g * oma[r0:r1])
                g.add_(ema * lamb[r0:r1])
        else:
            for k, g in grads.items():
                ema = self.state[f"ema/{k}"]
                ema.copy_(torch.where(first.view(-1, *[1] * (g.ndim - 1)), g, ema) * self.alpha[k]
                          + g * self.one_minus_alpha[k])
                g.add_(ema * self.lamb[k])
        self.state["steps"].add_(1)


class StackedGrokfastMA(_StatefulTransform):
    """:class:`GrokfastMA` over a stack, per-run ``grokfast_lamb``; the window ``w`` is the stack's
    (``grokfast_window`` is part of the stack key: it sets the state's shape). State
    ``buffer/<name> [run, w, ...]``, ``sum/<name> [run, ...]`` (float64), ``steps [run]``."""

    def __init__(self, params: dict[str, Tensor], tcs: list[TrainConfig]):
        windows = {int(tc.grokfast_window) for tc in tcs}
        if len(windows) != 1:
            raise ConfigError(f"train.grokfast_window: the runs of a stack need one window, got {sorted(windows)}")
        self.window = windows.pop()
        self.lamb = {}
        self.state = {}
        for k, p in params.items():
            self.lamb[k] = _runs([tc.grokfast_lamb for tc in tcs], p)
            self.state[f"buffer/{k}"] = torch.zeros((p.shape[0], self.window, *p.shape[1:]), dtype=p.dtype,
                                                    device=p.device)
            self.state[f"sum/{k}"] = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        p0 = next(iter(params.values()))
        self.state["steps"] = torch.zeros(len(tcs), dtype=torch.int64, device=p0.device)
        self.rows = torch.arange(len(tcs), device=p0.device)

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> None:
        steps = self.state["steps"]
        slot = self.rows * self.window + torch.remainder(steps, self.window)  # [run] rows of buffer [run · w, ...]
        full = (steps + 1 >= self.window).to(torch.float32)
        for k, g in grads.items():
            buf, total = self.state[f"buffer/{k}"], self.state[f"sum/{k}"]
            flat = buf.view(-1, *buf.shape[2:])
            old = flat.index_select(0, slot)
            total.add_(g.double() - old.double())
            flat.index_copy_(0, slot, g)
            on = full.view(-1, *[1] * (g.ndim - 1)).to(g.dtype) * self.lamb[k]
            g.add_((total / self.window).to(g.dtype) * on)
        steps.add_(1)


class StackedOrthoGrad(_StatefulTransform):
    """:class:`OrthoGrad` over a stack (:func:`stacked_orthogonalize_`). Stateless."""

    def __init__(self, params: dict[str, Tensor], tcs: list[TrainConfig]):
        self.params = params
        self.state = {}

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> None:
        stacked_orthogonalize_(self.params, grads)


register_stacked_transform("grokfast_ema", StackedGrokfastEMA)
register_stacked_transform("grokfast_ma", StackedGrokfastMA)
register_stacked_transform("orthograd", StackedOrthoGrad)
