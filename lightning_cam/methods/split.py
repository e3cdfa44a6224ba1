"""Split a network at the target layer into a *body* (input -> A) and a *head* (A -> logits).

Every method needs ``A = L(x)`` once; LIFT-CAM, Ablation-CAM and the Shapley
reference also need the head evaluated on other activations (the zero
reference, ablated or masked channels). Splitting the traced graph lets them
rerun only the part after ``L`` — for ResNet's ``layer4`` that is an average
pool and a linear layer, a tiny fraction of a forward pass.

The split uses ``torch.fx`` with every module a leaf except the ancestors of
``L`` (so tracing touches as little user code as possible; leaf modules still
run their own Python at call time). Models that ``torch.fx`` cannot trace fall
back to forward hooks: the body stops the forward right after ``L`` and the
head reruns the whole model with ``L``'s output replaced (correct, but the
upstream part is recomputed on every head call).
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_map

from lightning_cam.layers import candidate_layers
from lightning_cam.methods.readout import plan_readout
from lightning_cam.outputs import OutputTransform, float_logits

__all__ = ["SplitModel", "split_model"]


@dataclass
class SplitModel:
    """``body(x) -> (A, crossings)`` and ``head(A_rows, crossings_rows) -> logits``.

    ``crossings`` are the values computed before ``L`` that the head also
    needs (e.g. a skip connection around an intermediate layer); batched ones
    are indexed with the same rows as ``A`` via :meth:`select`.
    """

    layer_name: str
    body: Callable[[torch.Tensor], tuple[torch.Tensor, tuple]]
    head: Callable[..., torch.Tensor]
    traced: bool
    batched_crossings: tuple[bool, ...] = field(default_factory=tuple)
    dtype: torch.dtype = torch.float32  # dtype of the layer's output, which the head expects
    output_transform: OutputTransform | None = None  # model output -> scores (lightning_cam.outputs)
    batch: int = 0  # B, the images of the explained batch (0: unknown)
    #: per input shape, the head run on the token rows it reads (:mod:`lightning_cam.methods.readout`); shared by copies
    readout_plans: dict = field(default_factory=dict)

    def plan_readout(self, activation: torch.Tensor, crossings: tuple) -> None:
        """Plan (once per shape) to run the head on the token rows its classifier reads."""
        key = _shape_key(activation, crossings, self.batched_crossings)
        if key not in self.readout_plans:
            self.readout_plans[key] = plan_readout(self.head, activation, crossings, self.batched_crossings)

    def select(self, crossings: tuple, index: torch.Tensor) -> tuple:
        """Pick rows ``index`` of every batched crossing value (others as they are)."""
        return tuple(c[index] if batched else c for c, batched in zip(crossings, self.batched_crossings))

    def run_head(self, activations: torch.Tensor, crossings: tuple, index: torch.Tensor) -> torch.Tensor:
        """Head on rows ``activations`` whose images are ``index`` into the batch."""
        if activations.dtype != self.dtype:
            activations = activations.to(self.dtype)  # half-precision models
        elif activations.is_leaf and activations.requires_grad:
            activations = activations.clone()  # heads may start with an in-place ReLU (DenseNet)
        rows = self.select(crossings, index)
        plan = self.readout_plans.get(_shape_key(activations, crossings, self.batched_crossings)) if self.readout_plans else None
        out = plan.run(activations, *rows) if plan is not None and plan.applies() else self.head(activations, *rows)
        return self.scores(out, index)

    def scores(self, out: object, index: torch.Tensor) -> torch.Tensor:
        """The scores in the head's output ``out`` of rows ``index``.

        ``output_transform`` sees the B images in order: where the rows are whole copies of the
        batch (LIFT-CAM's ``[actual; reference]``, ``index = [0..B-1; 0..B-1]``) it is applied to
        each copy on its own, so a transform that depends on the images (e.g. one multiplying by
        a (B, 1) tensor) gets the right rows.
        """
        copies = _whole_copies(index, self.batch) if self.output_transform is not None else 1
        if copies == 1:
            return float_logits(out, self.output_transform)
        size = self.batch
        parts = [
            float_logits(tree_map(lambda t, i=i: t[i * size : (i + 1) * size] if _rows_of(t, index) else t, out), self.output_transform)
            for i in range(copies)
        ]
        if any(part.shape[0] != size for part in parts):  # an output type the tree utilities cannot open: as a whole
            return float_logits(out, self.output_transform)
        return torch.cat(parts)


def _rows_of(value: object, index: torch.Tensor) -> bool:
    """``value`` is a tensor with one row per row of ``index``."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == index.shape[0]


def _whole_copies(index: torch.Tensor, batch: int) -> int:
    """``n`` when ``index`` is ``n > 1`` copies of ``0..batch-1`` in order, else 1."""
    rows = index.shape[0]
    if batch <= 0 or rows <= batch or rows % batch:
        return 1
    order = torch.arange(batch, device=index.device)
    return rows // batch if bool((index.view(-1, batch) == order).all()) else 1


def _shape_key(activation: torch.Tensor, crossings: tuple, batched: Sequence[bool]) -> tuple:
    """Everything a readout plan depends on: shapes past the batch dimension, dtype, device."""
    parts = [
        tuple(c.shape[1:] if b else c.shape) if isinstance(c, torch.Tensor)
        else c if isinstance(c, (bool, int, float, str, type(None))) else type(c)  # e.g. attn_mask=None, is_causal=False
        for c, b in zip(crossings, batched)
    ]
    return (tuple(activation.shape[1:]), activation.dtype, activation.device, tuple(parts))


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def split_model(model: nn.Module, layer_name: str) -> SplitModel:
    """Split ``model`` at the module named ``layer_name`` (see module docstring).

    Splits are cached per model and layer; the cache key includes the identity
    of every submodule, so replacing a module (e.g. a new classifier) retraces.
    """
    fingerprint = (layer_name, tuple((name, id(m)) for name, m in model.named_modules()))
    cached = _CACHE.setdefault(model, {})
    if fingerprint not in cached:
        if len(cached) >= 8:
            cached.clear()
        cached[fingerprint] = _split_model(model, layer_name)
    return dataclasses.replace(cached[fingerprint])


def _split_model(model: nn.Module, layer_name: str) -> SplitModel:
    try:
        graph_module = _trace(model, layer_name)
    except _LayerUsage:
        raise
    except Exception as error:  # noqa: BLE001 - any tracing failure -> hook fallback
        warnings.warn(
            f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error}); "
            "lightning-cam falls back to forward hooks, which recompute the layers before "
            f"{layer_name!r} whenever the head is re-evaluated (slower, same results).",
            stacklevel=3,
        )
        return _hook_split(model, layer_name)
    return _graph_split(graph_module, layer_name)


class _LayerUsage(ValueError):
    """The target layer runs zero times or more than once in ``forward``."""


# Transformer blocks traced into the graph rather than called as one module, so that a head that
# starts in an earlier block still shows the last block's attention to the read-out planner.
_INLINED_BLOCKS = {"timm.models.vision_transformer.Block", "torchvision.models.vision_transformer.EncoderBlock"}


class _AncestorTracer(fx.Tracer):
    def __init__(self, layer_name: str) -> None:
        super().__init__()
        parts = layer_name.split(".")
        self.layer_name = layer_name
        self.ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.layer_name:
            return True
        if f"{type(m).__module__}.{type(m).__qualname__}" in _INLINED_BLOCKS:
            return False  # their attention shows in the head graph (methods/readout.py)
        return module_qualified_name not in self.ancestors


def _trace(model: nn.Module, layer_name: str) -> fx.GraphModule:
    tracer = _AncestorTracer(layer_name)
    graph = tracer.trace(model)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if len(calls) != 1:
        _raise_usage(model, layer_name, len(calls))
    return fx.GraphModule(tracer.root, graph)


def _raise_usage(model: nn.Module, layer_name: str, count: int) -> None:
    if count == 0:
        raise _LayerUsage(
            f"Target layer {layer_name!r} never runs in {type(model).__name__}.forward, so it "
            f"cannot be explained. Layers that run: {', '.join(candidate_layers(model)[:40])}"
        )
    raise _LayerUsage(
        f"Target layer {layer_name!r} runs {count} times in one forward of {type(model).__name__} "
        "(a module reused in several places, e.g. a shared ReLU); its output is not one feature "
        "map. Choose a layer that runs once, e.g. the enclosing block."
    )


def _graph_split(gm: fx.GraphModule, layer_name: str) -> SplitModel:
    nodes = list(gm.graph.nodes)
    layer_node = next(n for n in nodes if n.op == "call_module" and n.target == layer_name)
    downstream: set[fx.Node] = set()
    for node in nodes:
        if node is layer_node or any(a in downstream or a is layer_node for a in node.all_input_nodes):
            if node is not layer_node:
                downstream.add(node)
    output_node = next(n for n in nodes if n.op == "output")
    if output_node not in downstream:
        raise _LayerUsage(f"The model's output does not depend on the target layer {layer_name!r}.")
    # Shape values computed before L that the head uses are recomputed in the head; the body keeps
    # its own copy too (other shape values computed with them may stay in the body).
    after_layer = set(downstream)
    downstream |= _pulled_shapes(downstream, layer_node)

    # Values from the body that the head needs (get_attr nodes are re-read in the head).
    crossings: list[fx.Node] = []
    for node in nodes:
        if node in downstream:
            for a in node.all_input_nodes:
                if a not in downstream and a is not layer_node and a.op != "get_attr" and a not in crossings:
                    crossings.append(a)

    body_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node in after_layer or node.op == "output":
            continue
        env[node] = body_graph.node_copy(node, lambda n: env[n])
    body_graph.output((env[layer_node], tuple(env[c] for c in crossings)))
    body = fx.GraphModule(gm, body_graph)
    body.graph.eliminate_dead_code()
    body.recompile()

    head_graph = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {layer_node: head_graph.placeholder("activation")}
    for i, c in enumerate(crossings):
        head_env[c] = head_graph.placeholder(f"crossing_{i}")
    for node in nodes:
        if node in downstream:
            for a in node.all_input_nodes:
                if a.op == "get_attr" and a not in head_env:
                    head_env[a] = head_graph.node_copy(a, lambda n: head_env[n])
            head_env[node] = head_graph.node_copy(node, lambda n: head_env[n])
    head = fx.GraphModule(gm, head_graph)

    split = SplitModel(layer_name=layer_name, body=_checked_body(body, layer_name), head=head, traced=True)
    return split


_SHAPE_ARITHMETIC = {operator.getitem, operator.mul, operator.floordiv, operator.add, operator.sub, operator.truediv, operator.neg}


def _shape_derived(node: fx.Node) -> bool:
    """``t.shape``, ``t.size()``, ``t.dim()`` and integer arithmetic on them (e.g. ``B, H, W, C = x.shape``)."""
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape":
        return True
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target in _SHAPE_ARITHMETIC:
        inputs = node.all_input_nodes
        return bool(inputs) and all(_shape_derived(a) for a in inputs)
    return False


def _pulled_shapes(downstream: set[fx.Node], layer_node: fx.Node) -> set[fx.Node]:
    """Shape values computed before ``L`` that the head uses: recomputed in the head from their
    (batched) tensor, so that the head also runs on more rows than the body (``[A; A']``)."""
    pulled: set[fx.Node] = set()
    work = [a for n in downstream for a in n.all_input_nodes]
    while work:
        node = work.pop()
        if node in downstream or node in pulled or node is layer_node or not _shape_derived(node):
            continue
        pulled.add(node)
        work.extend(node.all_input_nodes)
    return pulled


def _checked_body(body: Callable, layer_name: str) -> Callable:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        activation, crossings = body(x)
        _check_activation(activation, layer_name)
        return activation, tuple(crossings)

    return run


def _check_activation(activation: object, layer_name: str) -> None:
    if not isinstance(activation, torch.Tensor) or activation.dim() not in (3, 4):
        shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
        raise ValueError(
            f"Target layer {layer_name!r} outputs {shape}; CAM methods need a (B, K, h, w) feature map, "
            "channels-last (B, h, w, K) or tokens (B, N, K). Choose a convolutional layer, a block, "
            "or a transformer block's first norm."
        )


class _StopForward(Exception):
    pass


def _hook_split(model: nn.Module, layer_name: str) -> SplitModel:
    layer = model.get_submodule(layer_name)
    model_ref = weakref.ref(model)  # the split is cached per model: no strong reference back

    def body(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        model = model_ref()
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: object, output: torch.Tensor) -> None:
            captured.append(output)
            raise _StopForward

        handle = layer.register_forward_hook(capture)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            _raise_usage(model, layer_name, 0)
        _check_activation(captured[0], layer_name)
        return captured[0], (x,)

    def head(activation: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        model = model_ref()
        calls = [0]
        grad_enabled = torch.is_grad_enabled()

        def replace(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            torch.set_grad_enabled(grad_enabled)  # record the graph only after L
            return activation

        handle = layer.register_forward_hook(replace)
        try:
            torch.set_grad_enabled(False)
            out = model(x)
        finally:
            torch.set_grad_enabled(grad_enabled)
            handle.remove()
        if calls[0] != 1:
            _raise_usage(model, layer_name, calls[0])
        return out

    return SplitModel(layer_name=layer_name, body=body, head=head, traced=False)


def batched_flags(crossings: Sequence[object], batch_size: int) -> tuple[bool, ...]:
    """Which crossing values carry the batch in their first dimension."""
    return tuple(isinstance(c, torch.Tensor) and c.dim() > 0 and c.shape[0] == batch_size for c in crossings)
