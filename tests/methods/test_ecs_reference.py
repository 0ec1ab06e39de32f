"""ECS against its reference code on identical tensors (docs/methods.md, ECS, "Faithfulness").

The reference, ``sarashoouri/EfficientMTL`` (read at 6946429), carries no licence: nothing of it is in this
repository. These tests load it at run time from the checkout the ``MTLPRUNE_ECS_REF`` environment variable
names (the folder holding its ``Codes/``) and skip, naming that variable, where it is unset (CI).

How the reference is loaded:

- pure functions of the training scripts (``concrete_stretched``, ``get_num_layer_for_vit``) are compiled from
  the script's syntax tree alone: the scripts train at import, so they are never imported or run;
- modules of ``Codes/multimae`` are imported from their files under a private package name (its
  ``__init__`` is not run). They import ``entmax`` and ``einops`` at the top; where one is not installed a
  stub stands in whose functions raise when called: the tested code paths (the transformer ``Block``,
  ``Attention``, ``Mlp``, ``act_tensor_diff_per_batch``) call neither. The ConvNeXt head and the input
  adapter call ``einops.rearrange``, so their tests need the real ``einops`` and skip, naming it, without;
- inline script logic (the Step-1 gradient routing, the Step-2 support rule, the Step-3 activation penalty)
  is re-expressed below as an oracle, citing the script lines it follows
  (``Codes/Pascal_Train_VIT/human_parts/Step{1,2,3}.py``).

Tolerances: the thresholding, the shared forward at τ > 0, the head, the fixed-support and activation phases'
gradients are compared bit for bit (losses to a relative 1e-6); at τ = 0 the reference rebuilds
a_b + (a_t − a_b), equal to ours (no sharing) to 1e-6. The hard-concrete sample and dz/dα agree to 1e-6 (ours
computes log(1 − u) as log1p(−u): the same value up to a float32 rounding, measured ≤ 2.4e-7), and the gate
phase's gradients, which inherit that rounding, to 1e-4 of each tensor's largest entry (measured ≤ 1.7e-5);
with our z put into the reference's routing, δ's and the head's gradients are bit for bit.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlprune.engine.models.delta as delta_module
from mtlprune.engine.models.convnext_head import ConvNeXtHead
from mtlprune.engine.models.delta import DeltaSharedMTL, hard_concrete, share_activation
from mtlprune.engine.models.vit import ViTConfig, ViTEncoder
from mtlprune.engine.sparsity import apply_masks
from mtlprune.engine.tasks import make_losses, upsample_to
from mtlprune.engine.train import StepRunner, TrainCallback
from mtlprune.methods.ecs import Ecs, EcsParams
from mtlprune.spec import TrainSpec

SCRIPTS = Path("Codes", "Pascal_Train_VIT", "human_parts")
MULTIMAE = Path("Codes", "multimae")
PACKAGE = "_mtlprune_ecs_reference"  # the private name Codes/multimae is imported under
# The reference's hook points in a block (Step3.py:861-868) and its thresholded ones (multimae_utils_sparse).
HOOK_POINTS = ("norm1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.act", "mlp.fc2")
SHARE_POINTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
STRETCH = (-1.5, 1.5)  # args.concrete_lower / concrete_upper (Step1.py:256-257)
NORM = partial(nn.LayerNorm, eps=1e-6)  # multivit_base's norm_layer (multimae_sparse.py:1627)

# The toy: a 2-block ViT (the reference's module names) with ConvNeXt heads; the sub-task is `normal`.
DIM, DEPTH, HEADS, PATCH, EMBED = 16, 2, 2, 8, 128
BASE, SUB = "segment_semantic", "normal"


# ------------------------------------------------------------------------------------ the reference


@dataclass
class Reference:
    root: Path
    concrete_stretched: Callable[..., tuple[Tensor, Tensor]]  # Step1.py:441-452
    layer_step1: Callable[[str], int]  # get_num_layer_for_vit, Step1.py:524-540
    layer_step3: Callable[[str], int]  # get_num_layer_for_vit, Step3.py:706-723
    sparse: types.ModuleType  # multimae_utils_sparse: act_tensor_diff_per_batch, the sharing Block
    utils: types.ModuleType  # multimae_utils: the Block MultiViT trains with
    output_adapters: types.ModuleType | None  # None without einops
    input_adapters: types.ModuleType | None
    stubs: tuple[str, ...] = field(default=())

    def need_einops(self) -> None:
        if self.output_adapters is None:
            pytest.skip(
                "einops is not installed: the reference's ConvNeXtAdapter and input adapter call "
                "einops.rearrange (pip install einops to run this test)"
            )


def script_functions(path: Path, names: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Top-level functions of a reference script compiled from its syntax tree alone (never imported: the
    scripts train at import); their globals hold only ``torch``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names}
    missing = sorted(set(names) - set(found))
    assert not missing, f"{path}: no top-level function {missing} (a different revision of the reference?)"
    namespace: dict[str, Any] = {"torch": torch}
    module = ast.Module(body=[found[n] for n in names], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}


_CONSTANT_NODES = (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, ast.List, ast.Tuple, ast.Load)
_CONSTANT_NODES += (ast.Add, ast.Sub, ast.Mult, ast.USub)


def script_constants(path: Path) -> dict[str, Any]:
    """The constants a reference script assigns at its top level (``name = …`` or ``args.name = …`` from
    literals and arithmetic on them; the last assignment wins), and the constant keywords of top-level calls
    assigned to a name (``alpha_optimizer.lr``); read from the syntax tree alone."""
    out: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        name = ast.unparse(node.targets[0])
        expression = ast.Expression(node.value)
        if all(isinstance(n, _CONSTANT_NODES) for n in ast.walk(expression)):
            out[name] = eval(compile(expression, str(path), "eval"), {"__builtins__": {}})
        elif isinstance(node.value, ast.Call):
            for keyword in node.value.keywords:
                if keyword.arg and isinstance(keyword.value, ast.Constant):
                    out[f"{name}.{keyword.arg}"] = keyword.value.value
    return out


def _stub(name: str, functions: Sequence[str]) -> types.ModuleType:
    module = types.ModuleType(name)

    def make(function: str) -> Callable[..., Any]:
        def stub(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{name}.{function} is a test stub ({name} is not installed)")

        return stub

    for function in functions:
        setattr(module, function, make(function))
    return module


STUBS = {  # package → its modules the reference imports, with the names it imports from them
    "entmax": {"entmax": ("sparsemax", "entmax15", "entmax_bisect")},
    "einops": {
        "einops": ("rearrange", "repeat", "reduce"),
        "einops.layers": (),
        "einops.layers.torch": ("Rearrange",),
    },
}


@pytest.fixture(scope="module")
def ref(ecs_reference_root: Path) -> Iterator[Reference]:
    root = ecs_reference_root
    step1 = script_functions(root / SCRIPTS / "Step1.py", ["concrete_stretched", "get_num_layer_for_vit"])
    step3 = script_functions(root / SCRIPTS / "Step3.py", ["get_num_layer_for_vit"])
    stubbed = tuple(p for p in STUBS if importlib.util.find_spec(p) is None)
    with pytest.MonkeyPatch.context() as mp:
        for package in stubbed:
            for name, functions in STUBS[package].items():
                mp.setitem(sys.modules, name, _stub(name, functions))
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(root / MULTIMAE)]
        sys.modules[PACKAGE] = package
        sparse = importlib.import_module(f"{PACKAGE}.multimae_utils_sparse")
        utils = importlib.import_module(f"{PACKAGE}.multimae_utils")
        output_adapters = input_adapters = None
        if "einops" not in stubbed:
            output_adapters = importlib.import_module(f"{PACKAGE}.output_adapters")
            input_adapters = importlib.import_module(f"{PACKAGE}.input_adapters")
    try:
        yield Reference(
            root=root,
            concrete_stretched=step1["concrete_stretched"],
            layer_step1=step1["get_num_layer_for_vit"],
            layer_step3=step3["get_num_layer_for_vit"],
            sparse=sparse,
            utils=utils,
            output_adapters=output_adapters,
            input_adapters=input_adapters,
            stubs=stubbed,
        )
    finally:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class _QueuedUniform:
    """``torch`` as a reference function sees it, except that ``torch.zeros_like(a).uniform_()`` gives the
    next of the noise tensors it was made with: the reference's hard-concrete on our gates' noise."""

    def __init__(self, draws: Sequence[Tensor]) -> None:
        self.draws = list(draws)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def zeros_like(self, tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        u = self.draws.pop(0).reshape(tensor.shape).to(tensor.dtype)
        return types.SimpleNamespace(uniform_=lambda: u.clone())


def concrete_with(ref: Reference, alpha: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's ``concrete_stretched(alpha, l, r)`` with the uniform noise ``u`` patched in."""
    fn = ref.concrete_stretched
    patched = types.FunctionType(fn.__code__, {"torch": _QueuedUniform([u])}, fn.__name__, fn.__defaults__)
    return patched(alpha, *STRETCH)


# ------------------------------------------------------------------------------------------ the toy


def toy_model(seed: int = 0) -> DeltaSharedMTL:
    """A 2-block ViT base with every parameter non-trivial (norms and biases too) and ConvNeXt heads."""
    torch.manual_seed(seed)
    backbone = ViTEncoder(ViTConfig(dim=DIM, depth=DEPTH, heads=HEADS, patch=PATCH))
    heads = {BASE: ConvNeXtHead(DIM, 40, EMBED), SUB: ConvNeXtHead(DIM, 3, EMBED)}
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in [backbone, *heads.values()]:
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return DeltaSharedMTL(backbone, heads, BASE)


def randomise_delta(model: DeltaSharedMTL, scale: float, density: float = 1.0, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in model.delta(SUB).values():
            keep = torch.rand(d.shape, generator=gen) < density
            d.copy_(torch.randn(d.shape, generator=gen) * scale * keep)


def images(batch: int = 2, side: int = 16, seed: int = 3) -> Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def reference_backbone(
    ref: Reference, model: DeltaSharedMTL, weights: Mapping[str, Tensor], sharing: bool = False
) -> nn.Module:
    """Our ViT's patch embedding, positions and global token around the reference's blocks (the training
    ``multimae_utils.Block``, or with ``sharing`` the ``multimae_utils_sparse.Block``), holding ``weights``
    under the same key names; every parameter a leaf with a gradient (the reference's ``p``)."""
    net = copy.deepcopy(model.backbone)
    if sharing:
        blocks = [
            ref.sparse.Block(DIM, HEADS, 4.0, qkv_bias=True, norm_layer=NORM, layer_number=i)
            for i in range(DEPTH)
        ]
    else:
        blocks = [ref.utils.Block(DIM, HEADS, 4.0, qkv_bias=True, norm_layer=NORM) for _ in range(DEPTH)]
    net.encoder = nn.Sequential(*blocks)
    assert set(net.state_dict()) == set(model.backbone.state_dict())  # identical key names
    net.load_state_dict({n: w.detach().clone() for n, w in weights.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    return net


# ------------------------------------------------------------------------------ (a) hard concrete


@pytest.mark.parametrize("stretch", [STRETCH, (-0.1, 1.1)])
def test_a_the_hard_concrete_sample_and_its_gradient_equal_the_reference_s(ref, stretch):
    """``concrete_stretched`` (Step1.py:441-452) draws u from the global RNG: seeded identically, ours gets
    the same u, and z and dz/dα agree (1e-6) except on the clamp's edges (one-sided there)."""
    n, seed = 100_000, 1234
    alpha = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 16 - 8
    alpha[:1000] = 5.0  # the reference's initial logit
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z_ref, dz_ref = ref.concrete_stretched(alpha, *stretch)
        torch.manual_seed(seed)
        drawn = torch.zeros_like(alpha).uniform_()  # what the reference drew
        torch.manual_seed(seed)
        u = torch.rand(n)  # the same stream through torch.rand, as our gates draw
    assert torch.equal(drawn, u)
    u = u.clamp(1e-4, 1 - 1e-4)  # HardConcreteGates.sample's clamp, the reference's clamp_(0.0001, 0.9999)
    logits = alpha.clone().requires_grad_()
    z = hard_concrete(logits, u, stretch)
    z.sum().backward()  # each z_i depends on α_i alone: the gradient is dz_i/dα_i
    torch.testing.assert_close(z.detach(), z_ref, rtol=0, atol=1e-6)
    low, high = stretch
    t = torch.sigmoid(u.double().log() - (1 - u.double()).log() + alpha.double()) * (high - low) + low
    edge = ((t.abs() < 1e-5) | ((t - 1).abs() < 1e-5)).bool()
    assert int(edge.sum()) <= n // 10_000  # a null set in exact arithmetic
    torch.testing.assert_close(logits.grad[~edge], dz_ref[~edge], rtol=0, atol=1e-6)
    assert 0.2 < float((z_ref > 0).float().mean()) < 0.8 and 0.1 < float((dz_ref > 0).float().mean()) < 0.9


# ------------------------------------------------------------------------ (b) activation threshold


@pytest.mark.parametrize("threshold", [0.0, 0.15, 0.5])
@pytest.mark.parametrize("shape", [(3, 17, 48), (2, 8, 5, 6)])
def test_b_the_activation_delta_threshold_equals_the_reference_s(ref, threshold, shape):
    """``act_tensor_diff_per_batch`` (multimae_utils_sparse.py:47-63) and ``share_activation``: bit for bit,
    on token activations and on the CNN adaptation's (B, C, H, W) maps, with differences at ±τ, 0 and 1."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=gen)
    sub = base + torch.randn(shape, generator=gen) * 0.3
    base.view(-1)[:4] = torch.tensor([0.5 - threshold, 0.5 + threshold, 0.25, 0.0])
    sub.view(-1)[:4] = torch.tensor([0.5, 0.5, 0.25, 1.0])
    base_copy = base.clone()
    expected = ref.sparse.act_tensor_diff_per_batch(sub.clone(), base, threshold)
    assert torch.equal(base, base_copy)  # it writes into its first argument only
    ours = share_activation(sub, base, threshold)
    assert torch.equal(ours, expected)
    if threshold > 0:
        shared = (ours == base) & (sub != base)
        assert 0 < int(shared.sum()) < shared.numel()


# ------------------------------------------------------------------- (c) a block's shared forward


def _block_io(model: DeltaSharedMTL, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The sub-task's input and output of every block in a forward pass of ``model`` (the last pass)."""
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs[i], outputs[i] = args[0].detach(), output.detach()

        return record

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(model.backbone.encoder)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [inputs[i] for i in range(DEPTH)], [outputs[i] for i in range(DEPTH)]


@contextmanager
def _outputs(module: nn.Module, points: Sequence[str], prefix: str = "") -> Iterator[dict[str, Tensor]]:
    """Copies of the outputs of ``module``'s submodules ``points`` (as computed, before any later in-place
    change: the reference's thresholding writes into the output it is given), keyed ``prefix + point``."""
    store: dict[str, Tensor] = {}
    modules = dict(module.named_modules())

    def keep(key: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: Any, output: Tensor) -> None:
            store[key] = output.detach().clone()

        return hook

    handles = [modules[p].register_forward_hook(keep(prefix + p)) for p in points]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _reference_activations(blocks: Sequence[nn.Module], x: Tensor) -> dict[str, Tensor]:
    """The base's outputs at the hook points (named as Step3.py:861-868 names them) on input tokens x."""
    store: dict[str, Tensor] = {}
    handles = []
    for i, block in enumerate(blocks):
        modules = dict(block.named_modules())
        for point in HOOK_POINTS:

            def keep(module: nn.Module, args: Any, output: Tensor, key: str = f"encoder.{i}.{point}") -> None:
                store[key] = output

            handles.append(modules[point].register_forward_hook(keep))
    try:
        with torch.no_grad():
            for block in blocks:
                x = block(x)
    finally:
        for h in handles:
            h.remove()
    return store


@pytest.mark.parametrize("thresholds", [(0.0, 0.0), (0.15, 0.15), (0.05, 0.3)])
def test_c_a_transformer_block_s_shared_forward_equals_the_reference_s(ref, thresholds):
    """``multimae_utils_sparse.Block.forward(x, pretrained_outputs, threshold)`` (:768-786; Attention
    :319-353, Mlp :231-250) block by block against our sub-task pass with activation sharing, the same
    state dicts (same keys), the base's hooked activations as ``pretrained_outputs``, one τ per block."""
    model = toy_model().eval()
    randomise_delta(model, scale=0.1)
    model.active_tasks = (SUB,)
    model.set_thresholds(list(thresholds))
    x = images(side=32)
    sub_in, sub_out = _block_io(model, x)
    weights = model.task_weights(SUB)  # W_b + δ as our pass computes it
    base_in: list[Tensor] = []
    handle = model.backbone.encoder[0].register_forward_hook(lambda m, a, o: base_in.append(a[0].detach()))
    with torch.no_grad():
        model.backbone(x)
    handle.remove()
    base_net = reference_backbone(ref, model, dict(model.backbone.named_parameters()), sharing=True)
    sub_net = reference_backbone(ref, model, weights, sharing=True)
    pretrained = _reference_activations(list(base_net.encoder), base_in[0])
    with torch.no_grad():
        for i, block in enumerate(sub_net.encoder):
            tokens = sub_in[i]  # our sub-task pass's input to the block
            plain = block(tokens)  # pretrained_outputs None: the training forward
            with _outputs(block, SHARE_POINTS, prefix=f"encoder.{i}.") as seen:
                out = block(tokens, pretrained, list(thresholds))
            below = [(seen[k] - pretrained[k]).abs() < thresholds[i] for k in seen]
            share = sum(int(b.sum()) for b in below) / sum(b.numel() for b in below)
            if thresholds[i] > 0:
                assert torch.equal(out, sub_out[i])
                assert 0.0 < share < 1.0  # the threshold acted, not everywhere
                assert not torch.equal(out, plain)
            else:
                assert share == 0.0 and torch.equal(plain, sub_out[i])  # τ = 0: ours shares nothing
                # the reference rebuilds a_b + (a_t − a_b): equal up to a float32 rounding
                torch.testing.assert_close(out, sub_out[i], rtol=1e-6, atol=1e-6)


def test_c_the_training_block_and_the_sharing_block_equal_ours_without_sharing(ref):
    """Without pretrained outputs both reference blocks (multimae_utils.Block, MultiViT's in training, and
    multimae_utils_sparse.Block) compute our block's output bit for bit."""
    model = toy_model().eval()
    tokens = torch.randn(2, 17, DIM, generator=torch.Generator().manual_seed(4))
    ours = model.backbone.encoder[1]
    state = {
        k.removeprefix("encoder.1."): v
        for k, v in model.backbone.state_dict().items()
        if k.startswith("encoder.1.")
    }
    for block in (
        ref.utils.Block(DIM, HEADS, 4.0, qkv_bias=True, norm_layer=NORM),
        ref.sparse.Block(DIM, HEADS, 4.0, qkv_bias=True, norm_layer=NORM, layer_number=1),
    ):
        assert set(block.state_dict()) == set(ours.state_dict())
        block.load_state_dict(state)
        with torch.no_grad():
            assert torch.equal(block.eval()(tokens), ours(tokens))


# ------------------------------------------------------------------------------------- (d) the head


@pytest.mark.parametrize("grid", [(3, 5), (4, 4)])
def test_d_the_convnext_head_equals_the_reference_adapter(ref, grid):
    """``ConvNeXtAdapter`` (output_adapters.py:481-575; ConvNeXtBlock output_adapter_utils.py:19-57) with
    our head's weights (same keys), on the encoder's tokens, global token included as the reference's
    encoder returns it: bit for bit after our bilinear upsampling to the input size (the reference
    interpolates inside the head)."""
    ref.need_einops()
    channels, classes, patch = 24, 5, 16
    torch.manual_seed(5)
    adapter = ref.output_adapters.ConvNeXtAdapter(
        num_classes=classes, embed_dim=EMBED * 2, preds_per_patch=16, patch_size=patch, depth=2
    )
    adapter.init(dim_tokens_enc=channels)
    ours = ConvNeXtHead(channels, classes, EMBED * 2)
    assert set(adapter.state_dict()) == set(ours.state_dict())
    ours.load_state_dict(adapter.state_dict())
    gh, gw = grid
    tokens = torch.randn(2, gh * gw + 1, channels, generator=torch.Generator().manual_seed(6))
    info = {"image_size": (gh * patch, gw * patch), "tasks": {"rgb": {"start_idx": 0, "end_idx": gh * gw}}}
    with torch.no_grad():
        expected = adapter(tokens, info)
        # our encoder's output: the patch tokens as a (B, C, h, w) grid, the global token dropped
        grid_tokens = tokens[:, : gh * gw].transpose(1, 2).reshape(2, channels, gh, gw)
        out = upsample_to(ours(grid_tokens), expected)
    assert out.shape == expected.shape and torch.equal(out, expected)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
@pytest.mark.parametrize("side", [2, 4])
def test_d_the_vit_s_tokens_equal_the_reference_s_input_adapter_and_global_token(ref, side):
    """Patch embedding + fixed sin-cos positions (``PatchedInputAdapter``, input_adapters.py:27-120;
    ``build_2d_sincos_posemb``, multimae_utils.py:90-106) + the appended global token (MultiViT's
    process_input): our encoder's block-0 input at the reference's configured square image size."""
    ref.need_einops()
    model = toy_model()
    backbone = model.backbone
    adapter = ref.input_adapters.PatchedInputAdapter(
        num_channels=3, stride_level=1, patch_size_full=PATCH, image_size=side * PATCH
    )
    adapter.init(dim_tokens=DIM)
    adapter.proj.load_state_dict(backbone.input_adapters["rgb"].proj.state_dict())
    x = images(side=side * PATCH)
    seen: list[Tensor] = []
    handle = backbone.encoder[0].register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        backbone(x)
        expected = torch.cat([adapter(x), backbone.global_tokens.expand(2, -1, -1)], dim=1)
    handle.remove()
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- the three phases' losses


class _Recorder(TrainCallback):
    """One training call's state before its step, gradients before masking and clipping (after the
    backward) and after them (after the update), and the noise of its hard-concrete draws."""

    def __init__(self, model: DeltaSharedMTL) -> None:
        self.model = model
        self.before: dict[str, Any] = {}
        self.grads_backward: dict[str, Tensor] = {}
        self.grads_update: dict[str, Tensor] = {}
        self.after_delta: dict[str, Tensor] = {}
        self.scalars: dict[str, float] = {}
        self.noise: dict[int, Tensor] = {}

    def params(self) -> dict[str, Tensor]:
        out = {f"delta.{n}": p for n, p in self.model.delta(SUB).items()}
        out.update({f"head.{n}": p for n, p in self.model.heads[SUB].named_parameters()})
        if SUB in self.model.gates:
            gates = self.model.gates[SUB]
            out.update({f"alpha.{n}": gates.elements[delta_module.escape(n)] for n in gates.names()})
            out.update({f"alpha2.{n}": gates.tensors[delta_module.escape(n)] for n in gates.names()})
        return out

    def snapshot(self) -> None:
        self.before = {k: p.detach().clone() for k, p in self.params().items()}
        self.before["gates"] = self.model.gates[SUB] if SUB in self.model.gates else None  # noqa: SIM401

    def after_backward(self, step: int, runner: StepRunner) -> None:
        self.grads_backward = {k: p.grad.clone() for k, p in self.params().items() if p.grad is not None}

    def after_step(self, step: int, runner: StepRunner) -> None:
        self.grads_update = {k: p.grad.clone() for k, p in self.params().items() if p.grad is not None}
        self.after_delta = {n: p.detach().clone() for n, p in self.model.delta(SUB).items()}


class _Context:
    """What ``EcsWeights.train_task`` uses of a MethodContext: each training call is a StepRunner on one
    fixed batch with the masks held, recorded by a :class:`_Recorder`."""

    def __init__(self, model: DeltaSharedMTL, batch: dict[str, Tensor], finetune: TrainSpec) -> None:
        self.model, self.batch = model, batch
        self.spec = types.SimpleNamespace(finetune=finetune)
        self.target = 0.5
        self.masks: dict[str, Tensor] | None = None
        self.recorded: dict[str, Any] = {}
        self.calls: dict[str, _Recorder] = {}

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(1_000 + salt)

    def apply_masks(self, masks: Mapping[str, Tensor]) -> None:
        apply_masks(self.model.prunable_parameters(), masks)
        self.masks = {n: m.clone() for n, m in masks.items()}

    def record(self, **values: Any) -> None:
        self.recorded.update(values)

    def log(self, **scalars: Any) -> None:
        pass

    def train(
        self, spec: TrainSpec, *, phase: str, callbacks: Sequence[TrainCallback] = (), optimization=None
    ):
        recorder = _Recorder(self.model)
        runner = StepRunner(
            self.model,
            "nyuv2",
            spec,
            torch.device("cpu"),
            self.masks,
            callbacks=[*callbacks, recorder],
            optimization=optimization,
        )
        assert spec.steps == 1
        recorder.snapshot()
        with _recording_noise(recorder.noise):
            recorder.scalars = runner(self.batch, 0)
        self.calls[phase.split(":")[0]] = recorder
        return spec.steps


@contextmanager
def _recording_noise(store: dict[int, Tensor]) -> Iterator[None]:
    """Keep the uniform noise of every hard-concrete draw, by the logit tensor it was drawn for."""
    original = delta_module.hard_concrete

    def recording(logits: Tensor, u: Tensor, stretch: tuple[float, float]) -> Tensor:
        store[id(logits)] = u.detach().clone()
        return original(logits, u, stretch)

    delta_module.hard_concrete = recording
    try:
        yield
    finally:
        delta_module.hard_concrete = original


LAMBDA, ACT_C, ALPHA_CLIP = 2e-4, 1e-3, 1e-3  # identical on both sides; the clip small enough to act


@pytest.fixture(scope="module")
def phases(ref) -> dict[str, Any]:
    """Our ECS (``control: faithful``) trains the toy's sub-task one step per phase (gates, fixed support,
    activation L1) through its own ``train_task``, callbacks and parameter groups."""
    model = toy_model().train()
    randomise_delta(model, scale=0.05)  # mid-training deltas, so the gate logits get task gradients
    model.active_tasks = (SUB,)
    params = EcsParams(
        control="faithful",
        gate_init=0.3,  # gates between closed and open, so dz/dα is not 0 everywhere
        l0_penalty=LAMBDA,
        act_penalty=ACT_C,
        gate_max_grad_norm=ALPHA_CLIP,
    )
    method = Ecs(params)
    gen = torch.Generator().manual_seed(9)
    batch = {
        "input": images(),
        SUB: torch.randint(0, 255, (2, 3, 16, 16), generator=gen, dtype=torch.uint8),
    }
    finetune = TrainSpec(steps=3, lr=1e-2, lr_schedule="constant", optimizer="adam")
    ctx = _Context(model, batch, finetune)
    method.train_task(ctx, model, SUB, 0, [1, 1, 1])  # type: ignore[arg-type]
    return {"model": model, "ctx": ctx, "batch": batch, "loss": make_losses("nyuv2", [SUB])[SUB]}


def reference_head(run: Mapping[str, Any], state: Mapping[str, Tensor]) -> nn.Module:
    """The sub-task's head holding ``state`` (the reference's decoder p0 + p1), its parameters leaves."""
    head = copy.deepcopy(run["model"].heads[SUB])
    head.load_state_dict(state)
    head.train()
    for p in head.parameters():
        p.requires_grad_(True)
        p.grad = None
    return head


def task_loss(run: Mapping[str, Any], net: nn.Module, head: nn.Module) -> Tensor:
    """The sub-task's loss on the fixed batch. The reference scales its human-parts loss by 2
    (Step1.py:891); both sides here use the benchmark's loss, a documented deviation."""
    return run["loss"](head(net(run["batch"]["input"])), run["batch"][SUB])


def _split(before: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in before.items() if k.startswith(prefix)}


def _assert_grads(
    ours: Mapping[str, Tensor], expected: Mapping[str, Tensor], prefix: str, scale_tol: float = 0.0
) -> None:
    """Our gradients (``prefix + name``) equal ``expected``: bit for bit, or within ``scale_tol`` times the
    largest magnitude of each tensor."""
    for name, grad in expected.items():
        got, want = ours[prefix + name], grad.reshape(ours[prefix + name].shape)
        atol = scale_tol * float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=lambda m, n=prefix + name: f"{n}: {m}")


def reference_gates(
    ref: Reference, call: _Recorder, names: Sequence[str], ours: bool = False
) -> tuple[dict[str, Tensor], ...]:
    """(z, dz/dα, z₂, dz₂/dα₂) per parameter for one gate-phase pass: ``concrete_stretched`` on the noise our
    gates drew (the tensor gate first, as Step1.py:850-858 draws it); with ``ours`` z and z₂ are our own
    samples of that noise instead."""
    gates = call.before["gates"]
    z, dz, z2, dz2 = {}, {}, {}, {}
    for n in names:
        key = delta_module.escape(n)
        u, u2 = call.noise[id(gates.elements[key])], call.noise[id(gates.tensors[key])]
        alpha, alpha2 = call.before[f"alpha.{n}"], call.before[f"alpha2.{n}"].reshape(1)
        z2[n], dz2[n] = concrete_with(ref, alpha2, u2)
        z[n], dz[n] = concrete_with(ref, alpha, u)
        if ours:
            z[n], z2[n] = hard_concrete(alpha, u, STRETCH), hard_concrete(alpha2, u2.reshape(1), STRETCH)
    return z, dz, z2, dz2


def test_phase_1_gates_loss_and_routed_gradients_equal_the_reference_s(ref, phases):
    """Step 1 (Step1.py:840-932): p = p0 + z₂·z·p1 with both gates from ``concrete_stretched`` on our noise;
    loss = task + Σ_layers λ_l·l0_pen[l], l0_pen[l] = Σ σ(α − log(−l/r)) over the layer's element and
    tensor gates (layers by ``get_num_layer_for_vit`` of the DDP names); ∂p1 = ∂p·z·z₂,
    ∂α = ∂p·p1·z₂·dz/dα, ∂α₂ = Σ ∂p·p1·z·dz₂/dα₂ (+ the L0 term's), the logits' gradients clipped together
    to the norm limit, δ's and the head's not (the reference clips copies, p.grad).

    Its z differs from ours by a float32 rounding (test a), which the network amplifies: the gradients agree
    to 1e-4 of each tensor's largest entry; with our z in its formulas, δ's gradients are bit for bit."""
    model, call = phases["model"], phases["ctx"].calls["gates"]
    p0 = {n: q.detach() for n, q in model.backbone.named_parameters()}
    p1, alpha, alpha2 = (
        _split(call.before, "delta."),
        _split(call.before, "alpha."),
        _split(call.before, "alpha2."),
    )
    for ours in (True, False):
        z, dz, z2, dz2 = reference_gates(ref, call, list(p0), ours=ours)
        net = reference_backbone(ref, model, {n: p0[n] + (z2[n] * z[n]) * p1[n] for n in p0})  # Step1.py:878
        head = reference_head(phases, _split(call.before, "head."))
        task = task_loss(phases, net, head)
        task.backward()
        grad = {n: q.grad for n, q in net.named_parameters()}
        g_delta = {n: grad[n] * (z[n] * z2[n]) for n in p0}  # Step1.py:912
        if ours:
            _assert_grads(call.grads_backward, g_delta, "delta.")
            _assert_grads(call.grads_backward, {n: q.grad for n, q in head.named_parameters()}, "head.")
            continue
        g_alpha = {n: grad[n] * (p1[n] * z2[n]) * dz[n] for n in p0}  # :916-917
        g_alpha2 = {n: torch.sum(grad[n] * (p1[n] * z[n]) * dz2[n]) for n in p0}  # :920-921
    # the L0 term (Step1.py:834, 863-876, 925-929): λ per layer (uniform), 13 layers
    log_ratio = math.log(-STRETCH[0] / STRETCH[1])
    leaves = {n: alpha[n].clone().requires_grad_() for n in p0}
    leaves2 = {n: alpha2[n].reshape(1).clone().requires_grad_() for n in p0}
    l0_pen: list[Any] = [0] * 13
    for n in p0:
        ind = ref.layer_step1("module." + n)
        l0_pen[ind] += torch.sigmoid(leaves[n] - log_ratio).sum()
        l0_pen[ind] += torch.sigmoid(leaves2[n] - log_ratio).sum()
    l0 = sum(LAMBDA * pen for pen in l0_pen if not isinstance(pen, int))
    l0.backward()
    g_alpha = {n: g_alpha[n] + leaves[n].grad for n in p0}
    g_alpha2 = {n: g_alpha2[n] + leaves2[n].grad for n in p0}
    assert call.scalars["loss"] == pytest.approx(float(task.detach()) + float(l0.detach()), rel=1e-6)
    assert call.scalars["extra.l0"] == pytest.approx(float(l0.detach()), rel=1e-6)
    tol = 1e-4
    _assert_grads(call.grads_backward, g_delta, "delta.", tol)
    _assert_grads(call.grads_backward, g_alpha, "alpha.", tol)
    _assert_grads(call.grads_backward, g_alpha2, "alpha2.", tol)
    _assert_grads(call.grads_backward, {n: q.grad for n, q in head.named_parameters()}, "head.", tol)
    # the clip (Step1.py:930-932): the logits' gradients together; δ's and the head's untouched
    norm = float(
        torch.linalg.vector_norm(torch.stack([g.norm() for g in [*g_alpha.values(), *g_alpha2.values()]]))
    )
    assert norm > ALPHA_CLIP  # the clip acts in this test
    scale = ALPHA_CLIP / (norm + 1e-6)  # torch's clip_grad_norm_, which the reference calls
    _assert_grads(call.grads_update, {n: g * scale for n, g in g_alpha.items()}, "alpha.", tol)
    _assert_grads(call.grads_update, {n: g * scale for n, g in g_alpha2.items()}, "alpha2.", tol)
    _assert_grads(call.grads_update, g_delta, "delta.", tol)
    assert all(
        torch.equal(call.grads_update[k], g) for k, g in call.grads_backward.items() if "alpha" not in k
    )


def reference_support(p0: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Step2.py:570-590 (and again Step3.py:739-757): nonzero_mask[n] = (saved model[n] − p0[n]) ≠ 0, where
    the saved model holds the weights its last training pass ran with."""
    return {n: (saved[n] - p0[n]) != 0 for n in p0}


def test_f_the_faithful_support_is_the_reference_s_step_2_mask(ref, phases):
    """``control: faithful``: the support our gate phase leaves equals the reference's Step-2 mask of the
    weights the last gate pass ran with (p0 + z₂·z·p1, p1 before that step's update, as the reference's
    checkpoint holds them), and the delta the fixed phase starts from is the raw updated p1 on it (the
    reference reloads p1, Step2.py:596-604, and multiplies it by the mask, :952-957)."""
    model, ctx = phases["model"], phases["ctx"]
    call = ctx.calls["gates"]
    p0 = {n: q.detach() for n, q in model.backbone.named_parameters()}
    z, _, z2, _ = reference_gates(ref, call, list(p0))
    saved = {n: p0[n] + (z2[n] * z[n]) * call.before[f"delta.{n}"] for n in p0}
    mask = reference_support(p0, saved)
    for n in p0:
        assert torch.equal(ctx.masks[model.delta_name(SUB, n)], mask[n]), n
    kept = sum(int(m.sum()) for m in mask.values())
    assert 0 < kept < sum(m.numel() for m in mask.values())  # some gates closed, some open
    fixed = ctx.calls["fixed"].before
    for n in p0:  # the fixed phase's start: the raw p1 after the gate step, on the mask
        assert torch.equal(fixed[f"delta.{n}"], torch.where(mask[n], call.after_delta[n], 0.0)), n


def test_f_an_entry_absorbed_by_rounding_is_the_one_difference_of_the_support_rules():
    """A documented deviation (docs/methods.md, ECS, "Faithfulness"): the reference's mask is (p0 + z·δ) −
    p0 ≠ 0 in float32, so a gated delta too small to change its weight (|z·δ| below half an ulp of p0)
    drops out; ours keeps the support z·δ ≠ 0 of the gated delta itself."""
    p0, gated = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1e-9, 1e-3, 1e-9])
    assert reference_support({"w": p0}, {"w": p0 + gated})["w"].tolist() == [False, True, True]
    assert (gated != 0).tolist() == [True, True, True]


def test_phase_2_fixed_support_loss_and_gradients_equal_the_reference_s(ref, phases):
    """Step 2 (Step2.py:940-989): p = p0 + mask·p1, loss = the task loss alone (no L0, no gates),
    ∂p1 = ∂p·mask: bit for bit."""
    model, ctx = phases["model"], phases["ctx"]
    call = ctx.calls["fixed"]
    assert call.before["gates"] is None and not model.gates
    assert not any(k.startswith("extra.") for k in call.scalars)
    p0 = {n: q.detach() for n, q in model.backbone.named_parameters()}
    raw = ctx.calls["gates"].after_delta  # the reference keeps the raw p1; the mask hides the rest
    mask = {n: ctx.masks[model.delta_name(SUB, n)] for n in p0}
    p = {n: p0[n] + mask[n] * raw[n] for n in p0}  # Step2.py:957
    for n in p0:  # the weights our pass ran with (W_b + δ, δ zero off the mask): the same, bit for bit
        assert torch.equal(p0[n] + call.before[f"delta.{n}"], p[n]), n
    net = reference_backbone(ref, model, p)
    head = reference_head(phases, _split(call.before, "head."))
    task = task_loss(phases, net, head)
    task.backward()
    grad = {n: q.grad for n, q in net.named_parameters()}
    assert call.scalars["loss"] == float(task.detach())
    _assert_grads(call.grads_update, {n: grad[n] * mask[n] for n in p0}, "delta.")
    _assert_grads(call.grads_update, {n: q.grad for n, q in head.named_parameters()}, "head.")


def reference_act_penalty(
    ref: Reference, base_net: nn.Module, sub_net: nn.Module, x: Tensor, forward: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Step3.py:861-888 and 992-1030: forward hooks at ``encoder.i.{norm1, attn.qkv, attn.proj, mlp.fc1,
    mlp.act, mlp.fc2}`` of the base (run under no_grad) and of the sub-task network, whose pass is
    ``forward(x)`` (returned); per hook name Σ|a_base − a_sub| into slot get_num_layer_for_vit(name) − 1 of
    13; Σ_l c_l·slot_l with c uniform (act_diff_l0_pen_per_layer_task)."""
    points = {f"encoder.{i}.{point}" for i in range(DEPTH) for point in HOOK_POINTS}
    seen: dict[str, dict[str, Tensor]] = {"base": {}, "sub": {}}

    def keep(side: str, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            seen[side][name] = output

        return hook

    handles = [
        module.register_forward_hook(keep(side, name))
        for side, net in (("base", base_net), ("sub", sub_net))
        for name, module in net.named_modules()
        if name in points
    ]
    try:
        with torch.no_grad():
            base_net(x)
        out = forward(x)
    finally:
        for h in handles:
            h.remove()
    assert set(seen["base"]) == set(seen["sub"]) == points
    layers: list[Any] = [0] * 13  # the reference's 13 coefficient slots
    for name, base in seen["base"].items():
        layer = ref.layer_step3(name)  # 13 for every hook name (the "module." strip misfires): harmless
        layers[layer - 1] = layers[layer - 1] + (base - seen["sub"][name]).abs().sum()
    return sum(ACT_C * term for term in layers), out


def test_g_the_activation_penalty_over_the_six_hook_points_equals_the_reference_s(ref):
    """The Step-3 L1 term on the toy: our ``act_l1`` (the sub-task's pass beside the base's) times the
    coefficient equals the reference's hooked sum over all six points of every block."""
    model = toy_model().train()
    randomise_delta(model, scale=0.05, density=0.3)
    model.active_tasks = (SUB,)
    model.act_penalty = True
    x = images()
    model(x)
    ours = ACT_C * model.act_l1
    base_net = reference_backbone(ref, model, dict(model.backbone.named_parameters()))
    sub_net = reference_backbone(ref, model, model.task_weights(SUB))
    expected, _ = reference_act_penalty(ref, base_net, sub_net, x, sub_net)
    assert float(expected.detach()) > 0
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_phase_3_activation_l1_loss_and_gradients_equal_the_reference_s(ref, phases):
    """Step 3 (Step3.py:958-1058): p = p0 + mask·p1 with the mask rebuilt from the Step-2 weights
    (:739-757), loss = task + Σ_l c_l·L1_l (the reference's hooked sum, one forward pass), ∂p1 = ∂p·mask."""
    model, ctx = phases["model"], phases["ctx"]
    call = ctx.calls["act"]
    p0 = {n: q.detach() for n, q in model.backbone.named_parameters()}
    p1 = _split(call.before, "delta.")
    step2 = {n: p0[n] + ctx.masks[model.delta_name(SUB, n)] * p1[n] for n in p0}
    mask = reference_support(p0, step2)
    for n in p0:  # the mask we hold is the one Step 3 rebuilds
        assert torch.equal(ctx.masks[model.delta_name(SUB, n)], mask[n]), n
    p = {n: p0[n] + mask[n] * p1[n] for n in p0}  # Step3.py:985
    base_net = reference_backbone(ref, model, p0)
    sub_net = reference_backbone(ref, model, p)
    head = reference_head(phases, _split(call.before, "head."))
    penalty, out = reference_act_penalty(
        ref, base_net, sub_net, phases["batch"]["input"], lambda x: head(sub_net(x))
    )
    task = phases["loss"](out, phases["batch"][SUB])
    (task + penalty).backward()
    grad = {n: q.grad for n, q in sub_net.named_parameters()}
    assert call.scalars["extra.act_l1"] == pytest.approx(float(penalty.detach()), rel=1e-6)
    assert call.scalars["loss"] == pytest.approx(float((task + penalty).detach()), rel=1e-6)
    _assert_grads(call.grads_update, {n: grad[n] * mask[n] for n in p0}, "delta.")
    _assert_grads(call.grads_update, {n: q.grad for n, q in head.named_parameters()}, "head.")


def test_the_defaults_and_parameter_groups_are_the_reference_s(ref, phases):
    """Our defaults are the constants of the reference's scripts (human parts; Step1.py:250-259, 506, 629,
    645, 786; Step3.py: act_diff_l0_pen_per_layer_task; multimae_utils_sparse.py:47 the default τ), the gate
    logits' AdamW takes torch's default weight decay as the reference's ``optim.AdamW(lr=0.1)`` does, and
    every delta and head tensor is in the decay group exactly when the reference's no-decay substrings
    (Step1.py:629-637; its parameter names, DDP prefix and all) leave it there."""
    step1 = script_constants(ref.root / SCRIPTS / "Step1.py")
    step3 = script_constants(ref.root / SCRIPTS / "Step3.py")
    p = EcsParams()
    assert p.gate_init == step1["args.alpha_init"]
    assert tuple(p.stretch) == (step1["args.concrete_lower"], step1["args.concrete_upper"])
    assert p.l0_penalty == step1["args.sparsity_pen"] and step1["args.sparsity_penalty_per_layer"] is None
    assert p.gate_max_grad_norm == step1["args.max_grad_norm"]
    assert p.delta_weight_decay == step1["args.weight_decay"]
    assert p.gate_lr == step1["alpha_optimizer.lr"]
    assert p.gate_weight_decay == torch.optim.AdamW([torch.zeros(1)], lr=0.1).defaults["weight_decay"]
    assert {float(c) for c in step3["args.act_diff_l0_pen_per_layer_task"].split(",")} == {p.act_penalty}
    assert p.act_threshold == ref.sparse.act_tensor_diff_per_batch.__defaults__[0]
    model = phases["model"]
    method = Ecs(p)
    optimization = method.groups(model, SUB)
    groups = {g.name: {id(q) for q in g.params} for g in optimization.groups}
    assert optimization.algorithm == "adamw" and optimization.eps == step1["args.adam_epsilon"]
    named = [(f"module.{n}", q) for n, q in model.delta(SUB).items()]
    named += [(f"module.output_adapters.{SUB}.{n}", q) for n, q in model.heads[SUB].named_parameters()]
    for name, q in named:
        decays = not any(nd in name for nd in step1["no_decay"])
        assert (id(q) in groups["decay"]) == decays and (id(q) in groups["no_decay"]) != decays, name
