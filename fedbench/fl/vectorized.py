"""The vectorised engine: all clients selected in a round train together, as one batched model.

The exact engine (:mod:`fedbench.fl.engine`) trains the round's K clients one after another,
each with batch-16 matmuls; at that size kernel-launch and Python overhead cost as much as the
arithmetic. Here the K clients' trainable tensors are stacked (:class:`StackedState`: one
contiguous ``[K, *shape]`` stack per tensor, all in one buffer) and each local step is taken by
all of them at once: the frozen base multiplies all ``K x B`` rows in one matmul (it is shared,
never copied), the stacked tensors (LoRA factors, heads, trainable Linear weights) act with
batched matmuls (``bmm``), and one fused AdamW call updates every client.

What stays the same as the exact engine: client selection, dropout and fault draws; the byte
counts (each client's update is encoded and decoded on its own); validation and aggregation;
evaluation; the row contract and the checkpoint (``state_dict``, inherited). Each client's
batches are the exact engine's batches too: the shuffle seeds are drawn from torch's global RNG
in the same order (client by client, epoch by epoch). What differs is float rounding (``bmm``
over transposed stacks, torch's fused AdamW kernel), so accuracies are close to, not equal to,
the exact engine's; the README gives the measured distance on the tutorial.

Clients of unequal size are handled by ordering them by number of local steps: at every step
the clients still training are a prefix of the stack, and rows past a client's last batch of
an epoch are padding with zero loss weight.

Two step implementations:

* :class:`BatchedMLPStep` -- hand-written forward/backward for the tutorial MLP (plain or
  LoRA-wrapped bias-free Linear layers, Linear head), no autograd;
* :class:`StackedModules` -- any model whose trainable parameters all live in ``LoRALinear``,
  ``nn.Linear`` or ``nn.LayerNorm`` modules and whose forward treats batch rows independently
  (the tutorial MLP; BERT-family encoders with lora, adapter, bitfit or head_only): those
  modules are swapped for stacked versions during training and autograd computes every
  client's gradients from the sum of their losses.

Anything else (prompt or prefix tokens, embeddings under full fine-tuning) cannot be stacked
this way and is refused before training with a :class:`~fedbench.config.ConfigError`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbench.config import ConfigError
from fedbench.fl.engine import Engine
from fedbench.fl.local import shuffled_order
from fedbench.fl.state import FlatParams, Payload
from fedbench.methods.lora import LoRALinear

log = logging.getLogger("fedbench")
aten = torch.ops.aten

ENGINES = ("exact", "vectorized")


# --------------------------------------------------------------------------------------------
# The round's batches
# --------------------------------------------------------------------------------------------
@dataclass
class StepBatch:
    """One local step of the ``m`` clients still training: ``B`` rows each, client-major."""

    m: int
    B: int
    x: torch.Tensor  # [m * B, ...]
    y: torch.Tensor  # [m * B]
    w: torch.Tensor | None  # [m * B, 1] loss weight per row (1/rows or 0 for padding); None: all 1/B
    # [m * B, C]: -w * onehot(y), i.e. d(per-client mean loss)/d(log-probabilities) (if C is known)
    target: torch.Tensor | None = None


class RoundPlan:
    """Every local step of the round's clients, gathered up front.

    ``clients`` are ``(x, y)`` of the selected clients in selection order. The shuffles are drawn
    here, in the exact engine's order, so this must be built exactly when the exact engine would
    train (after the downlink, before evaluation).
    """

    def __init__(self, clients: list[tuple[torch.Tensor, torch.Tensor]], epochs: int, batch_size: int,
                 num_classes: int | None = None) -> None:
        sizes = [len(y) for _, y in clients]
        orders = [[shuffled_order(n) for _ in range(epochs)] for n in sizes]  # the exact engine's draws
        per_epoch = [-(-n // batch_size) for n in sizes]
        steps = [e * epochs for e in per_epoch]
        # Longest first (stable): the clients still training at any step are a prefix.
        self.perm = sorted(range(len(clients)), key=lambda k: -steps[k])
        self.steps = [steps[k] for k in self.perm]
        self.batches_per_client = self.steps
        K, T, bs = len(clients), max(steps), batch_size
        offsets = np.cumsum([0] + [sizes[k] for k in self.perm])
        pad_row = int(offsets[-1])  # index of an all-zero row appended to the data
        idx = torch.full((T, K, bs), pad_row, dtype=torch.long)
        rows = torch.zeros((T, K), dtype=torch.long)
        for j, k in enumerate(self.perm):
            n = sizes[k]
            full = torch.full((per_epoch[k] * bs,), -1, dtype=torch.long)
            for e in range(epochs):
                full[:n] = orders[k][e] + int(offsets[j])
                grid = full.view(per_epoch[k], bs)
                t0 = e * per_epoch[k]
                idx[t0:t0 + per_epoch[k], j] = torch.where(grid >= 0, grid, pad_row)
                counts = torch.full((per_epoch[k],), bs, dtype=torch.long)
                counts[-1] = n - (per_epoch[k] - 1) * bs
                rows[t0:t0 + per_epoch[k], j] = counts
        xs = [clients[k][0] for k in self.perm]
        ys = [clients[k][1] for k in self.perm]
        x_all = torch.cat([*xs, xs[0].new_zeros((1, *xs[0].shape[1:]))])
        y_all = torch.cat([*ys, ys[0].new_zeros(1)])
        X, Y = x_all[idx], y_all[idx]  # [T, K, bs, ...]
        # loss weight of every row: 1/rows of its batch, 0 for padding
        W = (torch.arange(bs) < rows.unsqueeze(-1)).float() / rows.clamp(min=1).unsqueeze(-1).float()
        target = None
        if num_classes is not None:  # -w * onehot(y), all steps at once
            target = torch.zeros((T, K, bs, num_classes)).scatter_(3, Y.unsqueeze(-1), -W.unsqueeze(-1))
        self.batches: list[StepBatch] = []
        for t in range(T):
            m = sum(1 for s in self.steps if s > t)
            r = rows[t, :m]
            B = int(r.max())
            xt, yt = X[t, :m, :B], Y[t, :m, :B]
            w = None
            if bool((r != B).any()):
                w = W[t, :m, :B].reshape(m * B, 1)
            tg = None if target is None else target[t, :m, :B].reshape(m * B, num_classes)
            self.batches.append(StepBatch(m, B, xt.reshape(m * B, *xt.shape[2:]).contiguous(),
                                          yt.reshape(m * B).contiguous(), w, tg))


# --------------------------------------------------------------------------------------------
# Stacked state and optimizer
# --------------------------------------------------------------------------------------------
class StackedState:
    """K copies of a :class:`FlatParams` state, one contiguous ``[K, *shape]`` stack per tensor.

    Stacks lie one after another in one buffer ``W`` ("parameter-major"), so one AdamW call
    updates everything while every stack is contiguous (``bmm`` into a stack with a batch
    stride of P, as a ``[K, P]`` layout would give, is several times slower). Names in
    ``transposed`` (2-D tensors) are stored transposed: LoRA's ``A [in, r]`` as ``[r, in]`` makes
    its products wide instead of 4 columns narrow. ``G`` (gradients) and the AdamW moments
    have the same layout; :meth:`load` and :meth:`export` convert from and to payload layout.
    """

    def __init__(self, state: FlatParams, K: int, transposed: frozenset[str] = frozenset()) -> None:
        self.state, self.K = state, K
        self.transposed = frozenset(n for n in transposed if n in state.names)
        self.shapes = {n: (tuple(reversed(s)) if n in self.transposed else s)
                       for n, s in zip(state.names, state.shapes)}
        self.bounds = {n: (K * lo, K * hi) for n, lo, hi in zip(state.names, state.offsets, state.offsets[1:])}
        P = state.numel
        self.W = torch.empty(K * P, dtype=state.flat.dtype)
        self.G = torch.zeros_like(self.W)
        self.exp_avg = torch.zeros_like(self.W)
        self.exp_avg_sq = torch.zeros_like(self.W)
        self._denom = torch.empty_like(self.W)
        self._step_t = torch.zeros((), dtype=torch.float32)

    def views(self, t: torch.Tensor, m: int | None = None) -> dict[str, torch.Tensor]:
        """Name -> ``[m, *shape]`` stack (the first m clients) inside a buffer laid out like ``W``."""
        m = self.K if m is None else m
        out = {}
        for n, (lo, hi) in self.bounds.items():
            shape = self.shapes[n]
            out[n] = t[lo:hi].view(self.K, *shape)[:m]
        return out

    def load(self, start: torch.Tensor) -> None:
        """Every client starts from ``start`` (a flat vector in payload layout); fresh moments."""
        src = self.state.views(start)
        for n, v in self.views(self.W).items():
            s = src[n].t() if n in self.transposed else src[n]
            v.copy_(s.unsqueeze(0).expand_as(v))
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()

    def export(self, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Client k's tensors as one flat vector in payload layout."""
        out = torch.empty(self.state.numel, dtype=self.W.dtype) if out is None else out
        dst = self.state.views(out)
        for n, v in self.views(self.W).items():
            dst[n].copy_(v[k].t() if n in self.transposed else v[k])
        return out

    def step(self, m: int, t, opt, start: torch.Tensor | None = None, mu: float = 0.0,
             fused: bool = True) -> None:
        """AdamW step number t for the first m clients (plus FedProx's term if mu > 0).

        ``fused``: torch's fused CPU AdamW kernel (one pass over memory instead of seven; rounds
        slightly differently from the single-tensor AdamW the exact engine replays).
        """
        if m == self.K:
            parts = [(self.W, self.G, self.exp_avg, self.exp_avg_sq, self._denom, None)]
        else:  # the clients still training are a prefix of every stack
            parts = []
            for n, (lo, hi) in self.bounds.items():
                sl = slice(lo, lo + m * ((hi - lo) // self.K))
                parts.append((self.W[sl], self.G[sl], self.exp_avg[sl], self.exp_avg_sq[sl], self._denom[sl], n))
        if mu > 0:
            for p, g, *_, name in parts:
                g.add_(p - self._start_stacked(start, name, p.numel()), alpha=mu)
        if fused:
            if isinstance(t, torch.Tensor):
                step_t = t
            else:
                step_t = self._step_t
                step_t.fill_(t)
            torch._fused_adamw_([q[0] for q in parts], [q[1] for q in parts], [q[2] for q in parts],
                                [q[3] for q in parts], [], [step_t] * len(parts), lr=opt.lr,
                                beta1=opt.beta1, beta2=opt.beta2, weight_decay=opt.weight_decay,
                                eps=opt.eps, amsgrad=False, maximize=False)
            return
        t = int(t)
        for p, g, ea, es, d, _ in parts:
            adamw_step(p, g, ea, es, d, t, opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)

    def _start_stacked(self, start: torch.Tensor, name: str | None, numel: int) -> torch.Tensor:
        """``start`` broadcast to the stacked layout (cached per round for FedProx)."""
        if getattr(self, "_start_key", None) is not start:
            buf = torch.empty_like(self.W)
            src = self.state.views(start)
            for n, v in self.views(buf).items():
                s = src[n].t() if n in self.transposed else src[n]
                v.copy_(s.unsqueeze(0).expand_as(v))
            self._start_key, self._start_buf = start, buf
        if name is None:
            return self._start_buf
        lo, _ = self.bounds[name]
        return self._start_buf[lo:lo + numel]


def adamw_step(p, g, exp_avg, exp_avg_sq, denom, step: int, lr: float, beta1: float, beta2: float,
               eps: float, weight_decay: float) -> None:
    """torch's single-tensor AdamW (as :class:`fedbench.fl.optim.FlatAdamW`), on rows [m, P]."""
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2**0.5).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)


# --------------------------------------------------------------------------------------------
# Hand-written batched step for the tutorial MLP
# --------------------------------------------------------------------------------------------
class _BLayer:
    __slots__ = ("base", "W", "Wt", "w_name", "lora", "mod", "a_name", "b_name", "a_train", "b_train", "scale")


class BatchedMLPStep:
    """Forward + backward of K stacked tutorial MLPs sharing one frozen base, no autograd.

    Frozen Linear weights multiply all ``m*B`` rows at once with ``mm``; trainable ones (LoRA
    factors, the head, Linear weights under full fine-tuning) are ``[m, ...]`` stacks used with
    ``bmm``. Covers what :class:`~fedbench.models.tutorial_mlp_fast.TutorialMLPStep` covers.
    """

    def __init__(self, layers: list[_BLayer], head_w: str, head_b: str, lowest: int, num_classes: int) -> None:
        self.layers, self.head_w, self.head_b, self.lowest = layers, head_w, head_b, lowest
        self.num_classes = num_classes

    @classmethod
    def build(cls, model: nn.Module, state: FlatParams) -> BatchedMLPStep | None:
        from fedbench.fl.feature_cache import HeadModel
        from fedbench.models.tutorial_mlp import TutorialMLPModule

        if type(model) not in (TutorialMLPModule, HeadModel) or getattr(model, "head_name", "head") != "head":
            return None
        if type(model.head) is not nn.Linear or model.head.bias is None:
            return None
        model_layers = model.layers if type(model) is TutorialMLPModule else []
        names = set(state.names)
        if not {"head.weight", "head.bias"} <= names:
            return None
        used = {"head.weight", "head.bias"}
        layers = []
        for i, mod in enumerate(model_layers):
            L = _BLayer()
            if isinstance(mod, LoRALinear):
                base, prefix = mod.base, f"layers.{i}.base."
                L.lora, L.scale, L.mod = True, mod.scale, mod
                L.a_name, L.b_name = f"layers.{i}.lora_A", f"layers.{i}.lora_B"
                L.a_train, L.b_train = L.a_name in names, L.b_name in names  # e.g. FFA-LoRA: B only
                used.update(n for n in (L.a_name, L.b_name) if n in names)
            elif type(mod) is nn.Linear:
                base, prefix = mod, f"layers.{i}."
                L.lora = False
            else:
                return None
            if type(base) is not nn.Linear or base.bias is not None:
                return None
            L.base = base
            L.W, L.Wt = base.weight, base.weight.t()
            L.w_name = prefix + "weight" if prefix + "weight" in names else None
            if L.w_name:
                used.add(L.w_name)
            layers.append(L)
        if used != names:
            return None
        trains = [i for i, L in enumerate(layers) if (L.lora and (L.a_train or L.b_train)) or L.w_name]
        return cls(layers, "head.weight", "head.bias", min(trains) if trains else len(layers),
                   model.head.out_features)

    def refresh(self) -> None:
        """Re-read the frozen weights (a method's server protocol may merge into them)."""
        for L in self.layers:
            L.W = L.base.weight
            L.Wt = L.W.t()

    def transposed(self) -> frozenset[str]:
        """The LoRA ``A`` factors, which this step wants stored as ``[r, in]``."""
        return frozenset(L.a_name for L in self.layers if L.lora and L.a_train)

    def __call__(self, P: dict[str, torch.Tensor], G: dict[str, torch.Tensor], b: StepBatch,
                 loss_out: torch.Tensor | None = None) -> torch.Tensor:
        """Loss per client [m] (into ``loss_out`` if given); writes the gradients into the
        ``[m, ...]`` stacks ``G``.

        ``P``/``G`` come from a :class:`StackedState` built with :meth:`transposed`: LoRA's A
        is ``At [m, r, in]``; ``xaT = At h^T`` is kept as ``[m, r, B]`` (wide products only).
        """
        m, B = b.m, b.B
        h = b.x
        inputs, mids = [], []
        factors = []  # per LoRA layer: (At [m, r, in], B [m, r, out]), frozen ones shared
        for L in self.layers:
            if L.lora:
                At = P[L.a_name] if L.a_train else L.mod.lora_A.t().unsqueeze(0).expand(m, -1, -1)
                Bf = P[L.b_name] if L.b_train else L.mod.lora_B.unsqueeze(0).expand(m, -1, -1)
                factors.append((At, Bf))
            else:
                factors.append(None)
        for L, fac in zip(self.layers, factors):
            inputs.append(h)
            h3 = h.view(m, B, -1)
            z = torch.bmm(h3, P[L.w_name].transpose(1, 2)).view(m * B, -1) if L.w_name else h.mm(L.Wt)
            if L.lora:
                xaT = torch.bmm(fac[0], h3.transpose(1, 2))  # [m, r, B]
                mids.append(xaT)
                z.view(m, B, -1).baddbmm_(xaT.transpose(1, 2), fac[1], alpha=L.scale)
            else:
                mids.append(None)
            h = z.relu_()
        hw, hb = P[self.head_w], P[self.head_b]
        h3 = h.view(m, B, -1)
        logits = torch.baddbmm(hb.unsqueeze(1), h3, hw.transpose(1, 2))
        C = logits.shape[-1]
        logp = torch._log_softmax(logits.view(m * B, C), 1, False)
        # loss_k = sum over k's rows of -w log p[y]; its gradient wrt the logits is log-softmax's
        # backward applied to -w onehot(y) (the plan's ``target``, built with this head's C)
        loss = torch.sum(logp.mul(b.target).view(m, B * C), 1, out=loss_out)
        g = torch._log_softmax_backward_data(b.target, logp, 1, logp.dtype)
        g3 = g.view(m, B, C)
        torch.sum(g3, 1, out=G[self.head_b])
        torch.bmm(g3.transpose(1, 2), h3, out=G[self.head_w])
        if self.lowest == len(self.layers):
            return loss
        gh = torch.bmm(g3, hw).view(m * B, -1)
        out = h
        for i in range(len(self.layers) - 1, self.lowest - 1, -1):
            L = self.layers[i]
            gz = aten.threshold_backward(gh, out, 0)
            h_in = inputs[i]
            gz3, hin3 = gz.view(m, B, -1), h_in.view(m, B, -1)
            gxaT = None
            if L.lora:
                At, Bf = factors[i]
                gxaT = torch.bmm(Bf, gz3.transpose(1, 2)).mul_(L.scale)  # [m, r, B]
                if L.b_train:
                    G[L.b_name].baddbmm_(mids[i], gz3, beta=0, alpha=L.scale)
                if L.a_train:
                    torch.bmm(gxaT, hin3, out=G[L.a_name])
            if L.w_name:
                torch.bmm(gz3.transpose(1, 2), hin3, out=G[L.w_name])
            if i > self.lowest:
                gh = torch.bmm(gz3, P[L.w_name]).view(m * B, -1) if L.w_name else gz.mm(L.W)
                if gxaT is not None:
                    gh.view(m, B, -1).baddbmm_(gxaT.transpose(1, 2), factors[i][0])
            out = h_in
        return loss


# --------------------------------------------------------------------------------------------
# Generic: stacked modules + autograd
# --------------------------------------------------------------------------------------------
class _StackedLinear(nn.Module):
    """Stands in for an ``nn.Linear`` with trainable tensors: a stacked ``[K, out, in]`` weight
    used with ``bmm`` (or the shared frozen weight over all rows) plus a stacked, shared or no
    bias."""

    def __init__(self, orig: nn.Linear, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 owner: StackedModules):
        super().__init__()
        self.orig = [orig]  # not a submodule: keep the model's parameter list unchanged
        self.weight_st, self.bias_st, self.owner = weight, bias, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        xs = x.reshape(m, -1, x.shape[-1])
        if self.weight_st is None:
            out = F.linear(xs, orig.weight, orig.bias if self.bias_st is None else None)
        elif self.bias_st is None and orig.bias is not None:
            out = torch.baddbmm(orig.bias.view(1, 1, -1), xs, self.weight_st[:m].transpose(1, 2))
        else:
            out = torch.bmm(xs, self.weight_st[:m].transpose(1, 2))
        if self.bias_st is not None:
            out = out + self.bias_st[:m].unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class _StackedLayerNorm(nn.Module):
    """Stands in for an ``nn.LayerNorm`` whose affine weight and/or bias train."""

    def __init__(self, orig: nn.LayerNorm, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 owner: StackedModules):
        super().__init__()
        self.orig = [orig]
        self.weight_st, self.bias_st, self.owner = weight, bias, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        y = F.layer_norm(x, orig.normalized_shape, None, None, orig.eps)
        ys = y.reshape(m, -1, *orig.normalized_shape)
        w = orig.weight if self.weight_st is None else self.weight_st[:m].unsqueeze(1)
        b = orig.bias if self.bias_st is None else self.bias_st[:m].unsqueeze(1)
        if w is not None:
            ys = ys * w
        if b is not None:
            ys = ys + b
        return ys.reshape(x.shape)


class _StackedLoRA(nn.Module):
    """Stands in for a ``LoRALinear``: shared frozen base over all rows, stacked A and B (or
    either one, the other frozen and shared, as FFA-LoRA trains B only)."""

    def __init__(self, orig: LoRALinear, A: torch.Tensor | None, Bm: torch.Tensor | None, owner: StackedModules):
        super().__init__()
        self.orig = [orig]
        self.A, self.Bm, self.owner = A, Bm, [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig, m = self.orig[0], self.owner[0].m
        base = F.linear(x, orig.base.weight, orig.base.bias)
        xs = x.reshape(m, -1, x.shape[-1])
        A = orig.lora_A if self.A is None else self.A[:m]  # a frozen factor is shared
        Bm = orig.lora_B if self.Bm is None else self.Bm[:m]
        lora = torch.matmul(torch.matmul(xs, A), Bm) * orig.scale
        return base + lora.reshape(base.shape)


class StackedModules:
    """Swap each module holding trainable tensors for a stacked stand-in while clients train.

    Covered: ``LoRALinear`` (A and B train), ``nn.Linear`` and ``nn.LayerNorm`` (any of their
    tensors train; frozen ones stay shared). The stand-ins' tensors are leaves whose data are
    views of the stacked state and whose ``.grad`` are views of its gradient, so
    ``sum(losses).backward()`` writes every client's gradient in place. The model's forward
    must keep rows independent and client-major (row ``k*B + b`` belongs to client k).
    """

    def __init__(self, model: nn.Module, state: FlatParams, stacked: StackedState) -> None:
        self.model, self.m = model, stacked.K
        names = set(state.names)
        Wv, Gv = stacked.views(stacked.W), stacked.views(stacked.G)

        def leaf(name):
            if name not in names:
                return None
            t = torch.empty(0)
            t.data = Wv[name]
            t.requires_grad_(True)
            t.grad = Gv[name]
            return t

        self.swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        covered: set[str] = set()
        for mod_name, mod in model.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            own = [pre + n for n, _ in mod.named_parameters(recurse=False)]
            if isinstance(mod, LoRALinear):
                a, b = pre + "lora_A", pre + "lora_B"
                if a not in names and b not in names:
                    continue
                stand_in = _StackedLoRA(mod, leaf(a), leaf(b), self)
                covered.update(n for n in (a, b) if n in names)
            elif type(mod) in (nn.Linear, nn.LayerNorm) and any(p in names for p in own):
                cls = _StackedLinear if type(mod) is nn.Linear else _StackedLayerNorm
                stand_in = cls(mod, leaf(pre + "weight"), leaf(pre + "bias"), self)
                covered.update(p for p in own if p in names)
            else:
                continue
            parent_name, _, child = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            self.swaps.append((parent, child, mod, stand_in))
        self.missing = sorted(names - covered)

    @contextlib.contextmanager
    def installed(self):
        for parent, child, _, stand_in in self.swaps:
            setattr(parent, child, stand_in)
        try:
            yield
        finally:
            for parent, child, orig, _ in self.swaps:
                setattr(parent, child, orig)

    def __call__(self, P, G, b: StepBatch) -> torch.Tensor:
        self.m = b.m
        with torch.enable_grad():
            logits = self.model(b.x)
            logp = F.log_softmax(logits.float(), dim=-1)
            nll = -logp.gather(1, b.y.unsqueeze(1))
            loss = nll.view(b.m, b.B).mean(1) if b.w is None else (nll * b.w).view(b.m, b.B).sum(1)
            loss.sum().backward()
        return loss.detach()


def why_not_stackable(model: nn.Module, state: FlatParams) -> str | None:
    """None if the vectorised engine can train this model/method, else the reason."""
    probe = StackedState(state, 1)
    missing = StackedModules(model, state, probe).missing
    if missing:
        return (f"cannot stack trainable parameters {missing[:3]}{'...' if len(missing) > 3 else ''} "
                "(stacked: LoRALinear, nn.Linear, nn.LayerNorm); use fl.engine=exact")
    return None


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
class VectorizedEngine(Engine):
    """Same interface and row contract as :class:`~fedbench.fl.engine.Engine`; trains the round's
    clients at once. ``fl.fast_step`` picks the hand-written batched step where the model has one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.step = None  # the exact engine's per-client step is not used here
        reason = why_not_stackable(self.model, self.state)
        if reason is not None:
            raise ConfigError("fl.engine", reason, "vectorized")
        self._stacked: StackedState | None = None
        self._mlp_step = BatchedMLPStep.build(self.model, self.state) if self.fl.fast_step else None
        self.fused_adamw = True

    def _stack(self, K: int) -> StackedState:
        if self._stacked is None or self._stacked.K != K:
            transposed = self._mlp_step.transposed() if self._mlp_step is not None else frozenset()
            self._stacked = StackedState(self.state, K, transposed)
        return self._stacked

    def train_selected(self, clients: list[tuple[torch.Tensor, torch.Tensor]], start_flat: torch.Tensor,
                       mu: float = 0.0) -> tuple[list[torch.Tensor], list[float]]:
        """Train the clients from ``start_flat``: (their final flat states, their mean batch losses),
        in the given order."""
        fl = self.fl
        mlp = self._mlp_step
        plan = RoundPlan(clients, fl.local_epochs, fl.batch_size, mlp.num_classes if mlp is not None else None)
        K, T = len(clients), len(plan.batches)
        st = self._stack(K)
        st.load(start_flat)
        full_P, full_G = st.views(st.W), st.views(st.G)
        losses = torch.zeros((T, K))
        step_numbers = torch.arange(1, T + 1, dtype=torch.float32)
        self.model.train()
        if mlp is not None:
            mlp.refresh()
        generic = None if mlp is not None else StackedModules(self.model, self.state, st)
        ctx = generic.installed() if generic is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for t, b in enumerate(plan.batches):
                m = b.m
                if m == K:
                    P, G = full_P, full_G
                else:
                    P, G = st.views(st.W, m), st.views(st.G, m)
                if generic is not None:
                    st.G.zero_()
                    losses[t, :m] = generic(P, G, b)
                else:
                    mlp(P, G, b, losses[t, :m])
                st.step(m, step_numbers[t], self.opt, start_flat, mu, fused=self.fused_adamw)
        means = (losses.double().sum(0) / torch.tensor(plan.steps, dtype=torch.float64)).tolist()
        finals, out_losses = [None] * K, [0.0] * K
        for j, k in enumerate(plan.perm):
            finals[k] = st.export(j)
            out_losses[k] = means[j]
        return finals, out_losses

    def train_clients(self, selected: list[int], start: Payload, mu: float):
        """All selected clients at once (see :meth:`train_selected`); yields what
        :meth:`Engine.train_clients` yields."""
        self.state.load(start)
        start_flat = self.state.flat.clone()
        clients = [self.data.clients[cid] for cid in selected]
        finals, losses = self.train_selected(clients, start_flat, mu)
        for i, cid in enumerate(selected):
            yield i, cid, len(clients[i][1]), self.state.views(finals[i]), losses[i]


# --------------------------------------------------------------------------------------------
# Choosing the engine
# --------------------------------------------------------------------------------------------
def make_engine(spec, model: nn.Module, state: FlatParams, data, faults=None) -> Engine:
    """The run's engine: ``fl.engine`` (``exact``, the default, or ``vectorized``), with the
    backbone's features cached when ``fl.feature_cache`` (default true) and the method allows
    it (see :mod:`fedbench.fl.feature_cache`)."""
    from fedbench.fl.faults import FaultPlan
    from fedbench.fl.feature_cache import cache_features, why_not_cacheable

    fl = spec.fl
    kind = getattr(fl, "engine", "exact")
    if kind not in ENGINES:
        raise ConfigError("fl.engine", f"must be one of: {', '.join(ENGINES)}", kind)
    if getattr(fl, "feature_cache", True):
        reason = why_not_cacheable(model, state)
        if reason is None:
            model, data = cache_features(model, data, chunk=fl.eval_batch_size)
            log.info("only the head trains: backbone features are computed once per row and cached")
        elif all(n.startswith(getattr(model, "head_name", "head") + ".") for n in state.names):
            log.info("only the head trains, but its features are not cached: %s", reason)
    cls = VectorizedEngine if kind == "vectorized" else Engine
    extra = {"method": spec.method} if "method" in getattr(Engine, "__dataclass_fields__", {}) else {}
    return cls(model=model, state=state, data=data, fl=fl, strategy=spec.strategy,
               codec_up=spec.compression_up, codec_down=spec.compression_down,
               faults=faults if faults is not None else FaultPlan.from_config(fl.faults), **extra)
