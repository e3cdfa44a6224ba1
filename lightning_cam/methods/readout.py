"""Run a transformer head on the token rows its classifier reads, not on every token.

Split at the last block's first norm (the default ViT layer), the head runs
that block's attention, MLP and the final norm on all N tokens, but the
classifier reads the class token alone (``x[:, 0]``; DeiT-distilled also
``x[:, 1]``). Attention mixes tokens only through its keys and values: row
``r`` of its output needs the keys and values of every token but the query of
row ``r`` only, and every later operation (residual additions, layer norms,
MLPs, layer scales) acts on each token by itself. So the head can compute the
keys and values of all tokens and everything else for the read rows only: on
ViT-B/16 at 224 px that is 2 of the block's 12 ``d x d`` products per token,
the same numbers up to float rounding (the tests compare logits, gradients and
DeepLIFT multipliers with the full head).

:func:`plan_readout` reads the head's ``torch.fx`` graph once per input shape:
which rows of each value the output needs (reverse data flow), which nodes can
run on those rows (whitelisted attention modules and token-wise operations),
and returns ``None`` when nothing would be saved (average pooling, Swin, CNNs).
Anything not recognised runs on every row. The split traces timm ``Block`` and
torchvision ``EncoderBlock`` into the graph, so a layer in an earlier block
still gets the last block's attention on the read rows. Only eval-mode heads are run this way (dropout
in training mode draws per element).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["ReadoutPlan", "plan_readout"]

Rows = tuple[int, ...]

# Broadcasting elementwise operations: every tensor argument is aligned with the output.
_BROADCAST: set[Callable] = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
}
# Token-wise functions of their first argument (the others are parameters).
_FIRST_ARGUMENT: set[Callable] = {
    F.linear, F.gelu, F.relu, F.silu, F.dropout, torch.sigmoid, torch.tanh, torch.relu,
}
_ACTIVATIONS = (
    nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU, nn.ReLU6, nn.Hardtanh,
)
_TIMM_TOKENWISE = {
    "timm.layers.layer_scale.LayerScale", "timm.layers.drop.DropPath", "timm.layers.norm.LayerNorm",
    "timm.layers.mlp.Mlp", "timm.layers.mlp.GluMlp", "timm.layers.mlp.SwiGLU",
}
_TIMM_ATTENTION = "timm.layers.attention.Attention"
_TIMM_ATTENTION_PARTS = ("attn_dim", "num_heads", "head_dim", "scale", "qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop")


def _qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _tokenwise_module(module: nn.Module) -> bool:
    """Output row ``r`` (dim 1 of a (B, N, C) input) depends on input row ``r`` only."""
    kind = type(module)
    if kind in (nn.Linear, nn.Identity, nn.Dropout) or kind in _ACTIVATIONS:
        return True
    if isinstance(module, nn.LayerNorm) and (kind is nn.LayerNorm or _qualname(module) in _TIMM_TOKENWISE):
        return len(module.normalized_shape) == 1
    if kind.forward is nn.Sequential.forward:  # nn.Sequential and subclasses such as torchvision's MLPBlock
        return all(_tokenwise_module(child) for child in module.children())
    if _qualname(module) in _TIMM_TOKENWISE:
        if getattr(module, "chunk_dim", -1) != -1:  # GluMlp splitting along another dimension
            return False
        return all(_tokenwise_module(child) for child in module.children())
    return False


@dataclass
class _Attention:
    """An attention node that can compute the output rows of some queries only."""

    module: nn.Module
    kind: str  # "timm" or "mha"


def _attention_kind(module: nn.Module, node: fx.Node, values: dict[fx.Node, object]) -> str | None:
    """``"timm"`` / ``"mha"`` for a self-attention call this module can run on some query rows."""
    kwargs = {key: values.get(v, v) if isinstance(v, fx.Node) else v for key, v in node.kwargs.items()}
    if _qualname(module) == _TIMM_ATTENTION and all(hasattr(module, a) for a in _TIMM_ATTENTION_PARTS):
        plain = len(node.args) == 1 and kwargs.get("attn_mask") is None and not kwargs.get("is_causal", False)
        return "timm" if plain and set(kwargs) <= {"attn_mask", "is_causal"} else None
    if type(module).forward is nn.MultiheadAttention.forward and module.batch_first:
        same = len(node.args) == 3 and node.args[0] is node.args[1] is node.args[2]
        plain = set(kwargs) <= {"need_weights"} and kwargs.get("need_weights") is False
        return "mha" if same and plain else None
    return None


def _timm_attention_rows(attention: nn.Module, x: torch.Tensor, rows: Rows) -> torch.Tensor:
    """timm ``Attention.forward`` (no mask) for the queries ``rows`` only: (B, len(rows), C)."""
    batch, tokens, _ = x.shape
    width, heads, head_dim = attention.attn_dim, attention.num_heads, attention.head_dim
    weight, bias = attention.qkv.weight, attention.qkv.bias
    read = x[:, list(rows)]
    query = F.linear(read, weight[:width], None if bias is None else bias[:width])
    key_value = F.linear(x, weight[width:], None if bias is None else bias[width:])
    query = query.reshape(batch, len(rows), heads, head_dim).transpose(1, 2)
    key, value = key_value.reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    query, key = attention.q_norm(query), attention.k_norm(key)
    # timm's fused path uses sdpa's default scale, its other path ``attention.scale`` (the same unless changed)
    scale = None if getattr(attention, "fused_attn", True) else attention.scale
    out = F.scaled_dot_product_attention(query, key, value, scale=scale)
    out = attention.norm(out.transpose(1, 2).reshape(batch, len(rows), width))
    gate = getattr(attention, "gate", None)
    if gate is not None:
        out = out * gate(read).sigmoid()
    return attention.proj_drop(attention.proj(out))


@dataclass
class ReadoutPlan:
    """Which head nodes run on which token rows (see the module docstring)."""

    graph_module: fx.GraphModule
    rows: dict[fx.Node, Rows]  # nodes computed on these rows only (dim 1)
    tokens: dict[fx.Node, int]  # full token count of every node's output that has one
    ndim: dict[fx.Node, int]
    attention: dict[fx.Node, _Attention]
    readouts: dict[fx.Node, int]  # getitem(x, (:, i)) nodes -> i
    modules: tuple[nn.Module, ...]

    def applies(self) -> bool:
        """Only in eval mode (dropout in training mode is drawn per element)."""
        return not any(module.training for module in self.modules)

    def run(self, *args: object) -> object:
        return _RowInterpreter(self).run(*args)


class _RowInterpreter(fx.Interpreter):
    def __init__(self, plan: ReadoutPlan) -> None:
        super().__init__(plan.graph_module, garbage_collect_values=True)
        self.plan = plan

    def run_node(self, node: fx.Node) -> object:
        plan = self.plan
        if node in plan.readouts and node.args[0] in plan.rows:
            source = node.args[0]
            return self.env[source][:, plan.rows[source].index(plan.readouts[node])]
        rows = plan.rows.get(node)
        if rows is None:
            return super().run_node(node)
        if node in plan.attention:
            attention = plan.attention[node]
            x = self.env[node.args[0]]
            if attention.kind == "timm":
                return _timm_attention_rows(attention.module, x, rows)
            return attention.module(x[:, list(rows)], x, x, need_weights=False)
        if node.op == "call_function" and node.target is operator.getitem:  # element 0 of the MHA tuple
            return self.env[node.args[0]][node.args[1]]
        first = node.args[0] if node.args else None
        aligned = lambda a: self._aligned(a, node, rows) if (a is first or node.target in _BROADCAST) else self.env[a]  # noqa: E731
        args = fx.node.map_arg(node.args, aligned)
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self.env[a])
        if node.op == "call_module":
            return self.fetch_attr(node.target)(*args, **kwargs)
        return node.target(*args, **kwargs)

    def _aligned(self, source: fx.Node, node: fx.Node, rows: Rows) -> object:
        """``source``'s value on ``rows`` along the axis that broadcasts to ``node``'s token axis."""
        value = self.env[source]
        plan = self.plan
        if source in plan.rows:
            have = plan.rows[source]
            return value if have == rows else value[:, [have.index(r) for r in rows]]
        axis = _token_axis(plan.ndim.get(source, 0), plan.ndim[node])
        if axis is None or not isinstance(value, torch.Tensor) or value.shape[axis] == 1:
            return value
        return value.index_select(axis, torch.tensor(rows, device=value.device))


def _token_axis(source_ndim: int, output_ndim: int) -> int | None:
    """Axis of a broadcast operand that lines up with the output's dim 1 (None: it has none)."""
    axis = 1 - (output_ndim - source_ndim)
    return axis if axis >= 0 else None


class _Recorder(fx.Interpreter):
    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__(graph_module, garbage_collect_values=False)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node) -> object:
        value = super().run_node(node)
        self.values[node] = value
        return value


def plan_readout(head: object, activation: torch.Tensor, crossings: Sequence[object], batched: Sequence[bool]) -> ReadoutPlan | None:
    """Plan the head ``head(activation, *crossings)`` on read rows only; ``None`` if nothing is saved.

    Runs the head once on the first image to learn every value's shape.
    """
    if not isinstance(head, fx.GraphModule):
        return None
    one = [c[:1] if b else c for c, b in zip(crossings, batched)]
    recorder = _Recorder(head)
    with torch.no_grad():
        recorder.run(activation[:1], *one)
    values = recorder.values
    nodes = list(head.graph.nodes)
    shape = {n: tuple(v.shape) for n, v in values.items() if isinstance(v, torch.Tensor)}
    tokens = {n: s[1] for n, s in shape.items() if len(s) >= 3}
    ndim = {n: len(s) for n, s in shape.items()}

    demand: dict[fx.Node, Rows | None] = {}  # None: every row
    rows: dict[fx.Node, Rows] = {}
    attention: dict[fx.Node, _Attention] = {}
    readouts: dict[fx.Node, int] = {}
    ALL = None

    def merge(node: fx.Node, need: Rows | None) -> None:
        if node not in demand:
            demand[node] = need
        elif demand[node] is not ALL:
            demand[node] = ALL if need is ALL else tuple(sorted(set(demand[node]) | set(need)))

    for node in reversed(nodes):
        if node.op == "output":
            for a in node.all_input_nodes:
                merge(a, ALL)
            continue
        need = demand.get(node, ())  # () : nobody reads it
        index = _readout_index(node, tokens)
        if index is not None:
            readouts[node] = index
            merge(node.args[0], (index,))
            continue
        runs_on_rows = need is not ALL and len(need) > 0
        module = head.get_submodule(node.target) if node.op == "call_module" else None
        kind = _attention_kind(module, node, values) if module is not None else None
        if kind is not None:
            if runs_on_rows:
                rows[node] = need
                attention[node] = _Attention(module, kind)
            for a in node.all_input_nodes:
                merge(a, ALL)
            continue
        if runs_on_rows and _tokenwise(node, module, ndim, tokens, values):
            rows[node] = need
            first = node.args[0]
            for a in node.all_input_nodes:
                # rows of operands that carry the token axis; a size-1 axis broadcasts (computed whole)
                aligned = (a is first or node.target in _BROADCAST) and tokens.get(a) == tokens[node]
                merge(a, need if aligned else ALL)
            continue
        if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0 and node.args[0] in values:
            if isinstance(values[node.args[0]], tuple):  # element 0 of an attention's (output, weights)
                merge(node.args[0], need)
                if runs_on_rows:
                    rows[node] = need
                continue
        for a in node.all_input_nodes:
            merge(a, ALL if need != () else ())

    # An element of an attention's output tuple runs on rows only if the attention does.
    for node in [n for n in rows if n.op == "call_function" and n.target is operator.getitem]:
        if node.args[0] not in attention:
            del rows[node]
    if not rows:
        return None
    modules = tuple(head.get_submodule(n.target) for n in nodes if n.op == "call_module")
    return ReadoutPlan(head, rows, tokens, ndim, attention, readouts, modules)


def _readout_index(node: fx.Node, tokens: dict[fx.Node, int]) -> int | None:
    """``i`` for ``x[:, i]`` on a token tensor ``x`` (i >= 0 after wrapping)."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None
    source, index = node.args
    if source not in tokens or not isinstance(index, tuple) or len(index) != 2:
        return None
    first, second = index
    if first != slice(None, None, None) or not isinstance(second, int) or isinstance(second, bool):
        return None
    return second % tokens[source]


def _tokenwise(node: fx.Node, module: nn.Module | None, ndim: dict, tokens: dict, values: dict) -> bool:
    """``node`` computes each token row from the same row of its inputs (and can be run on a subset)."""
    if node not in tokens:
        return False
    if module is not None:
        return _tokenwise_module(module) and len(node.args) == 1 and not node.kwargs
    if node.op != "call_function":
        return False
    if node.target in _BROADCAST:
        if node.kwargs:  # operands are aligned by position only
            return False
        for a in node.all_input_nodes:
            axis = _token_axis(ndim.get(a, 0), ndim[node])
            if axis is not None and _shape_at(values.get(a), axis) not in (1, tokens[node]):
                return False
        return True
    if node.target in _FIRST_ARGUMENT:
        return all(a is node.args[0] or a not in tokens for a in node.all_input_nodes)
    if node.target is F.layer_norm:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        return isinstance(normalized, (tuple, list)) and len(normalized) == 1 and all(
            a is node.args[0] or a not in tokens for a in node.all_input_nodes
        )
    return False


def _shape_at(value: object, axis: int) -> int | None:
    """Size of ``value`` along ``axis`` (None for non-tensors)."""
    return int(value.shape[axis]) if isinstance(value, torch.Tensor) and value.dim() > axis else None
