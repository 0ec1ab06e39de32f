"""A base network shared by several tasks through sparse weight deltas: the model of ECS (Shoouri et al.,
ICCV 2023), a multi-model method rather than a pruned multi-task network.

:class:`DeltaSharedMTL` holds a frozen base backbone ``W_b`` (trained for the base task), one weight delta
``δ_t`` per sub-task over every backbone parameter, and one head per task. The base task runs the base
backbone and its own head, unchanged. A sub-task ``t`` runs the same backbone modules with the weights
``W_b + g_t ⊙ δ_t`` (``torch.func.functional_call``: no copy of the backbone), where ``g_t`` is 1 once its
support is fixed, or the product of per-element and per-tensor hard-concrete gates
(:class:`HardConcreteGates`) while those are learned. The base backbone always runs in eval mode (it is
frozen: BatchNorm uses the base's running statistics in every task's pass, and nothing updates them).

Activations. Forward hooks at the *act points* compare a sub-task's activations with the base's on the same
input (the base pass runs first and records them):

- ``act_penalty`` (training): the sum of |a_t − a_b| over every act point is kept in :attr:`act_l1` for an
  L1 loss term (ECS's third phase);
- ``thresholds`` (evaluation): at the *sharing points* the sub-task's activation is replaced by
  ``a_b + δ`` with the entries of δ = a_t − a_b below the point's threshold in magnitude set to 0, which the
  reference uses to simulate activation sharing (its ``act_tensor_diff_per_batch``).

On the ViT (mtlprune.engine.models.vit, the reference's module names) the act points are ``norm1``,
``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.act`` and ``mlp.fc2`` of every block, and the sharing
points ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` (before the GELU) and ``mlp.fc2``, with one threshold per
block. On an architecture without those names (the CNNs) both are the output of every convolution and linear
layer of the backbone, with one threshold per such layer: a CNN adaptation of ours.

Accounting (docs/accounting.md): what is stored is the base backbone, the non-zeros of every δ_t (plus one
index bit per δ entry, reported apart) and every head; gates exist only while they are learned and leave
the model with :meth:`DeltaSharedMTL.remove_gates`. :meth:`standalone` builds one task's network as a plain
``MTLModel`` (its backbone with ``W_b + δ_t``), which the static cost counter and the tests use. The
data-dependent count of the shared forward (``flops_shared``, mtlprune.engine.costs.count_flops_shared)
watches :meth:`DeltaSharedMTL.forward` through :attr:`DeltaSharedMTL.observer` (:class:`ForwardObserver`):
told where each task's backbone pass and each thresholding starts, it compares every bilinear op of a
sub-task's pass with the base pass's.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtlprune.engine.models.mtl import PRUNABLE_TYPES, MTLModel

DELTA_PREFIX = "deltas."
ESCAPE = "__"  # a backbone parameter name's dots in a delta's key (module attribute names cannot hold dots)

# The reference's hook points in a ViT block (EfficientMTL Step 3) and its thresholded points (inference).
VIT_ACT_POINTS = ("norm1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.act", "mlp.fc2")
VIT_SHARE_POINTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_VIT_POINT = re.compile(r"^(?:.*\.)?(\d+)\.(" + "|".join(re.escape(p) for p in VIT_ACT_POINTS) + r")$")


def escape(name: str) -> str:
    return name.replace(".", ESCAPE)


def unescape(key: str) -> str:
    return key.replace(ESCAPE, ".")


# ------------------------------------------------------------------------------------- hard concrete


def hard_concrete(logits: Tensor, u: Tensor, stretch: tuple[float, float]) -> Tensor:
    """A stretched hard-concrete sample without temperature (Louizos et al. 2018 as the reference uses it):
    s = σ(log u − log(1 − u) + α), z = clamp(s·(r − l) + l, 0, 1); differentiable in α."""
    low, high = stretch
    s = torch.sigmoid(torch.log(u) - torch.log1p(-u) + logits)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def hard_concrete_mean(logits: Tensor, stretch: tuple[float, float]) -> Tensor:
    """The deterministic gate used at evaluation: clamp(σ(α)·(r − l) + l, 0, 1) (Louizos et al.'s test-time
    estimator; the reference evaluates its last stochastic sample instead)."""
    low, high = stretch
    return (torch.sigmoid(logits) * (high - low) + low).clamp(0.0, 1.0)


def open_probability(logits: Tensor, stretch: tuple[float, float]) -> Tensor:
    """P(z > 0) = σ(α − log(−l/r)): the expected L0 norm per gate (σ(α) for a symmetric stretch)."""
    low, high = stretch
    return torch.sigmoid(logits - math.log(-low / high))


class HardConcreteGates(nn.Module):
    """One sub-task's L0 gates over its delta: a logit per delta element and, with ``group_gates``, one per
    tensor (the reference's ``per_params_alpha``); the gate of an element is z_elem · z_tensor.

    The noise of training forward pass k is drawn from a generator seeded by (``seed``, k), with k counted
    in the buffer ``draws``: a pure function of the state dict, so a resumed run draws the same gates, and
    the last sample can be drawn again (:meth:`sample` with ``draw``). With ``remember`` the support of the
    delta as the last training pass used it, (z·z₂·δ ≠ 0), is kept in buffers (:attr:`support`): the
    reference's fixed support, taken before that step's update.
    """

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        init: float,
        stretch: tuple[float, float],
        seed: int,
        group_gates: bool = True,
        remember: bool = False,
    ) -> None:
        super().__init__()
        self.stretch = (float(stretch[0]), float(stretch[1]))
        self.elements = nn.ParameterDict(
            {escape(n): nn.Parameter(torch.full(tuple(s), float(init))) for n, s in shapes.items()}
        )
        self.tensors = nn.ParameterDict(
            {escape(n): nn.Parameter(torch.full((), float(init))) for n in shapes} if group_gates else {}
        )
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.int64))
        self.register_buffer("draws", torch.tensor(0, dtype=torch.int64))
        self.support = nn.Module()  # escaped name → bool buffer, with ``remember``
        if remember:
            for n, shape in shapes.items():
                self.support.register_buffer(escape(n), torch.zeros(tuple(shape), dtype=torch.bool))

    def remember(self, gates: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> None:
        """Keep (g·δ ≠ 0) of a training pass in :attr:`support` (a no-op without ``remember``)."""
        with torch.no_grad():
            for key, buffer in self.support.named_buffers(recurse=False):
                name = unescape(key)
                buffer.copy_((gates[name] != 0) & (delta[name] != 0))

    def last_support(self) -> dict[str, Tensor]:
        """The support kept by :meth:`remember`, by backbone parameter name."""
        return {unescape(k): b.clone() for k, b in self.support.named_buffers(recurse=False)}

    def names(self) -> list[str]:
        return [unescape(k) for k in self.elements]

    def _generator(self, draw: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed((int(self.seed) * 1_000_003 + draw) % (1 << 62))

    def sample(self, draw: int | None = None) -> dict[str, Tensor]:
        """Stochastic gates z_elem · z_tensor per backbone parameter name, for training forward ``draw``
        (default: the next one, which advances ``draws``)."""
        if draw is None:
            draw = int(self.draws)
            self.draws += 1
        device = next(iter(self.elements.values())).device
        generator = self._generator(draw, device)
        low, high = 1e-4, 1.0 - 1e-4  # the reference clamps u to [0.0001, 0.9999]
        gates = {}
        for key, alpha in self.elements.items():
            u = torch.rand(alpha.shape, generator=generator, device=device).clamp_(low, high)
            gate = hard_concrete(alpha, u, self.stretch)
            if key in self.tensors:
                u2 = torch.rand((), generator=generator, device=device).clamp_(low, high)
                gate = gate * hard_concrete(self.tensors[key], u2, self.stretch)
            gates[unescape(key)] = gate
        return gates

    def deterministic(self) -> dict[str, Tensor]:
        """The evaluation gates: each factor at its test-time estimate (:func:`hard_concrete_mean`)."""
        gates = {}
        for key, alpha in self.elements.items():
            gate = hard_concrete_mean(alpha, self.stretch)
            if key in self.tensors:
                gate = gate * hard_concrete_mean(self.tensors[key], self.stretch)
            gates[unescape(key)] = gate
        return gates

    def expected_l0(self) -> Tensor:
        """Σ P(z > 0) over every element and tensor gate: the L0 penalty before its coefficient."""
        total = sum(open_probability(a, self.stretch).sum() for a in self.elements.values())
        total = total + sum(open_probability(a, self.stretch).sum() for a in self.tensors.values())
        return total  # type: ignore[return-value]

    def logits(self) -> list[nn.Parameter]:
        return [*self.elements.values(), *self.tensors.values()]


# ----------------------------------------------------------------------------------------- the model


class ForwardObserver(Protocol):
    """What watches a forward of :class:`DeltaSharedMTL` from outside (the data-dependent FLOP count,
    mtlprune.engine.costs.count_flops_shared): told when each task's backbone pass (kind ``pass``, name the
    task; the base's runs first) and each thresholding at a sharing point (kind ``share``, name the point,
    with the activation being thresholded) starts and ends."""

    def enter(self, kind: str, name: str, output: Tensor | None) -> None: ...

    def leave(self, kind: str, name: str) -> None: ...


def act_points(backbone: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """(act points, sharing points) of a backbone: module name → layer index (one threshold per layer).

    The ViT's reference names when present (block index as the layer), else every conv and linear layer of
    the backbone in module order (the CNN adaptation; module docstring)."""
    penalty, sharing = {}, {}
    for name, _ in backbone.named_modules():
        match = _VIT_POINT.match(name)
        if match:
            penalty[name] = int(match.group(1))
            if match.group(2) in VIT_SHARE_POINTS:
                sharing[name] = int(match.group(1))
    if penalty:
        return penalty, sharing
    layers = [n for n, m in backbone.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    points = {n: i for i, n in enumerate(layers)}
    return points, dict(points)


class DeltaSharedMTL(MTLModel):
    """A frozen base backbone, a sparse weight delta per sub-task and one head per task (module docstring).

    Components: ``backbone`` (the base), ``delta/<task>`` (each sub-task's delta), ``head/<task>``. Its
    prunable set — what masks hold and the runner checks — is the deltas (every element of every backbone
    parameter per sub-task); the base and the heads are stored dense.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], base_task: str) -> None:
        super().__init__(backbone, heads)
        if base_task not in self.heads:
            raise ValueError(f"base task {base_task!r} has no head (tasks: {list(self.heads)})")
        self.base_task = base_task
        self.sub_tasks = tuple(t for t in self.tasks if t != base_task)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        base = dict(self.backbone.named_parameters())
        self.deltas = nn.ModuleDict(
            {
                t: nn.ParameterDict({escape(n): nn.Parameter(torch.zeros_like(p)) for n, p in base.items()})
                for t in self.sub_tasks
            }
        )
        self.gates = nn.ModuleDict()  # sub-task → HardConcreteGates while its gates are learned
        self.active_tasks: tuple[str, ...] | None = None  # the tasks a forward computes (None: all)
        self.act_penalty = False  # keep Σ|a_t − a_b| over the act points in act_l1 (training)
        self.act_l1: Tensor | None = None
        self.layer_thresholds: dict[int, float] = {}  # layer → activation-sharing threshold (evaluation)
        self.penalty_points, self.sharing_points = act_points(self.backbone)
        self.observer: ForwardObserver | None = None  # a cost counter watching a forward (never stored)
        self.backbone.eval()

    # ------------------------------------------------------------------------------------------ API

    def train(self, mode: bool = True) -> DeltaSharedMTL:
        super().train(mode)
        self.backbone.eval()  # frozen base: BN statistics of the base, no dropout, in every task's pass
        return self

    def components(self) -> dict[str, nn.Module]:
        return {
            "backbone": self.backbone,
            **{f"delta/{t}": d for t, d in self.deltas.items()},
            **{f"head/{t}": h for t, h in self.heads.items()},
        }

    def prunable_parameters(self) -> dict[str, nn.Parameter]:
        """Every delta tensor by full name (``deltas.<task>.<escaped backbone parameter name>``)."""
        return {f"{DELTA_PREFIX}{t}.{k}": p for t, d in self.deltas.items() for k, p in d.items()}

    def base_prunable(self) -> dict[str, nn.Parameter]:
        """The conv and linear weights of the base backbone and the heads: what a pruning method prunes."""
        return MTLModel.prunable_parameters(self)

    def component_of(self, param_name: str) -> str:
        if param_name.startswith(DELTA_PREFIX):
            task = param_name[len(DELTA_PREFIX) :].split(".", 1)[0]
            if task in self.deltas:
                return f"delta/{task}"
        return super().component_of(param_name)

    def task_path(self, param_name: str) -> tuple[str, ...]:
        component = self.component_of(param_name)
        if component.startswith("delta/"):
            return (component.removeprefix("delta/"),)
        return super().task_path(param_name)

    def delta(self, task: str) -> dict[str, nn.Parameter]:
        """A sub-task's delta by backbone parameter name."""
        return {unescape(k): p for k, p in self.deltas[task].items()}

    def delta_name(self, task: str, backbone_name: str) -> str:
        """The full parameter name of a delta tensor (as :meth:`prunable_parameters` names it)."""
        return f"{DELTA_PREFIX}{task}.{escape(backbone_name)}"

    def set_thresholds(self, thresholds: float | Sequence[float]) -> None:
        """Activation-sharing thresholds for evaluation: one for every layer, or one per layer in order."""
        layers = sorted(set(self.sharing_points.values()))
        if isinstance(thresholds, int | float):
            values = [float(thresholds)] * len(layers)
        else:
            values = [float(t) for t in thresholds]
            if len(values) != len(layers):
                raise ValueError(
                    f"{len(values)} thresholds for {len(layers)} sharing layers of this backbone"
                )
        self.layer_thresholds = dict(zip(layers, values, strict=True))

    def add_gates(self, task: str, gates: HardConcreteGates) -> None:
        self.gates[task] = gates.to(next(self.deltas[task].parameters()).device)

    def remove_gates(self, task: str | None = None) -> None:
        """Drop the gates of ``task`` (all when None): they are not part of what is stored."""
        for t in [task] if task is not None else list(self.gates):
            if t in self.gates:
                del self.gates[t]

    # -------------------------------------------------------------------------------------- forward

    def task_weights(self, task: str) -> dict[str, Tensor]:
        """The backbone weights task ``task`` runs with: W_b + g ⊙ δ (gates sampled in training mode)."""
        base = dict(self.backbone.named_parameters())
        if task == self.base_task:
            return dict(base)
        delta = self.delta(task)
        if task in self.gates:
            gates = self.gates[task]
            if self.training:
                g = gates.sample()
                gates.remember(g, delta)
            else:
                g = gates.deterministic()
            return {n: base[n] + g[n] * delta[n] for n in base}
        return {n: base[n] + delta[n] for n in base}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        tasks = self.active_tasks or self.tasks
        subs = [t for t in self.sub_tasks if t in tasks]
        sharing = not self.training and any(v > 0 for v in self.layer_thresholds.values())
        penalty = self.act_penalty and self.training
        record = (sharing or penalty) and bool(subs)
        outputs: dict[str, Tensor] = {}
        base_acts: dict[str, Tensor] = {}
        features = None
        if self.base_task in tasks or record:
            grad = torch.is_grad_enabled() and self.base_task in tasks
            with (
                self._hooks(self._recorder(base_acts) if record else None),
                torch.set_grad_enabled(grad),
                self._observed("pass", self.base_task),
            ):
                features = self.backbone(x)
            if self.base_task in tasks:
                outputs[self.base_task] = self.heads[self.base_task](features)
        self.act_l1 = None
        for task in subs:
            hook = None
            if penalty:
                hook = self._penalizer(base_acts)
            elif sharing:
                hook = self._sharer(base_acts)
            with self._hooks(hook), self._observed("pass", task):
                sub_features = self.task_features(task, x)
            outputs[task] = self.heads[task](sub_features)
        return {t: outputs[t] for t in self.tasks if t in outputs}

    def task_features(self, task: str, x: Tensor) -> Tensor:
        """The backbone's output as ``task`` runs it (W_b + g ⊙ δ_t through the base's modules), no
        activation sharing."""
        if task == self.base_task:
            return self.backbone(x)
        return functional_call(self.backbone, self.task_weights(task), (x,))

    # ------------------------------------------------------------------------------------ act hooks

    @contextmanager
    def _hooks(self, make: Callable[[str], Callable[..., Any] | None] | None) -> Iterator[None]:
        """Forward hooks from ``make(point name)`` (None: no hook there) on the backbone's act points, for
        the duration of one pass (never left on the modules, so copies of the model carry none)."""
        if make is None:
            yield
            return
        modules = dict(self.backbone.named_modules())
        handles = []
        for name in sorted(set(self.penalty_points) | set(self.sharing_points)):
            hook = make(name)
            if hook is not None:
                handles.append(modules[name].register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _recorder(store: dict[str, Tensor]) -> Callable[[str], Callable[..., Any]]:
        def make(name: str) -> Callable[..., Any]:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                store[name] = output.detach()

            return hook

        return make

    def _penalizer(self, base: Mapping[str, Tensor]) -> Callable[[str], Callable[..., Any] | None]:
        def make(name: str) -> Callable[..., Any] | None:
            if name not in self.penalty_points:
                return None

            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                term = (output - base[name]).abs().sum()
                self.act_l1 = term if self.act_l1 is None else self.act_l1 + term

            return hook

        return make

    def _sharer(self, base: Mapping[str, Tensor]) -> Callable[[str], Callable[..., Any] | None]:
        def make(name: str) -> Callable[..., Any] | None:
            tau = self.layer_thresholds.get(self.sharing_points.get(name, -1), 0.0)
            if name not in self.sharing_points or tau <= 0:
                return None

            def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
                with self._observed("share", name, output):
                    return share_activation(output, base[name], tau)

            return hook

        return make

    @contextmanager
    def _observed(self, kind: str, name: str, output: Tensor | None = None) -> Iterator[None]:
        """Tell :attr:`observer` (if any) that a ``pass`` (one task's backbone pass, ``name`` the task) or a
        ``share`` (the thresholding at sharing point ``name`` of ``output``) starts and ends."""
        observer = self.observer
        if observer is None:
            yield
            return
        observer.enter(kind, name, output)
        try:
            yield
        finally:
            observer.leave(kind, name)

    # ----------------------------------------------------------------------------------- export

    def standalone(self, task: str) -> MTLModel:
        """Task ``task``'s own network as a plain one-task ``MTLModel``: a copy of the backbone holding the
        weights it runs with (W_b + δ_t; the base's for the base task) and a copy of its head."""
        backbone = copy.deepcopy(self.backbone)
        was = self.training
        self.eval()  # deterministic gates, if any
        try:
            with torch.no_grad():
                weights = self.task_weights(task)
        finally:
            self.train(was)
        with torch.no_grad():
            for name, p in backbone.named_parameters():
                p.copy_(weights[name])
                p.requires_grad_(True)
        model = MTLModel(backbone, {task: copy.deepcopy(self.heads[task])}).train(self.training)
        model.backbone.eval()  # as the task runs it here: on the base's BN statistics
        return model


def share_activation(sub: Tensor, base: Tensor, threshold: float) -> Tensor:
    """a_b + δ with δ = a_t − a_b and every |δ| < threshold set to 0 (the reference's
    ``act_tensor_diff_per_batch``)."""
    diff = sub - base
    return base + torch.where(diff.abs() < threshold, torch.zeros_like(diff), diff)


def delta_layout(model: DeltaSharedMTL) -> dict[str, dict[str, int]]:
    """Per sub-task: the size of its delta (``params``) and its non-zeros (``nonzero``), from the weights."""
    out = {}
    for task in model.sub_tasks:
        tensors = list(model.deltas[task].values())
        out[task] = {
            "params": sum(p.numel() for p in tensors),
            "nonzero": sum(int(torch.count_nonzero(p.detach())) for p in tensors),
        }
    return out
