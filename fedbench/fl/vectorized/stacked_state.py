"""The K selected clients' trainable state, stacked (:class:`StackedState`), and the AdamW step
that updates all of them at once."""

from __future__ import annotations

import torch

from fedbench.fl.state import FlatParams


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
        self.shapes = {
            n: (tuple(reversed(s)) if n in self.transposed else s) for n, s in zip(state.names, state.shapes)
        }
        self.bounds = {
            n: (K * lo, K * hi) for n, lo, hi in zip(state.names, state.offsets, state.offsets[1:])
        }
        P = state.numel
        # on the model's device (device=); exported client states are CPU payloads
        self.W = torch.empty(K * P, dtype=state.flat.dtype, device=state.flat.device)
        self.G = torch.zeros_like(self.W)
        self.exp_avg = torch.zeros_like(self.W)
        self.exp_avg_sq = torch.zeros_like(self.W)
        self._denom = torch.empty_like(self.W)
        self._step_t = torch.zeros((), dtype=torch.float32, device=state.flat.device)
        # FedProx: ``start`` broadcast to this layout, cached for the start vector it was built from
        self._start_key = None
        self._start_buf: torch.Tensor | None = None

    def views(self, t: torch.Tensor, m: int | None = None) -> dict[str, torch.Tensor]:
        """Name -> ``[m, *shape]`` stack (the first m clients) inside a buffer laid out like ``W``."""
        m = self.K if m is None else m
        out = {}
        for n, (lo, hi) in self.bounds.items():
            shape = self.shapes[n]
            out[n] = t[lo:hi].view(self.K, *shape)[:m]
        return out

    def _fill(self, buf: torch.Tensor, start: torch.Tensor | list[torch.Tensor]) -> None:
        """Write ``start`` (one flat vector in payload layout for every client, or a list of K,
        one per stacked row) into ``buf`` (laid out like ``W``)."""
        if isinstance(start, torch.Tensor):
            src = self.state.views(start)
            for n, v in self.views(buf).items():
                s = src[n].t() if n in self.transposed else src[n]
                v.copy_(s.unsqueeze(0).expand_as(v))
            return
        srcs = [self.state.views(x) for x in start]
        for n, v in self.views(buf).items():
            for k, src in enumerate(srcs):
                v[k].copy_(src[n].t() if n in self.transposed else src[n])

    def load(self, start: torch.Tensor | list[torch.Tensor]) -> None:
        """The clients start from ``start`` (a flat vector in payload layout, or one per stacked
        row); fresh moments."""
        self._fill(self.W, start)
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()

    def export(self, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Client k's tensors as one flat vector in payload layout."""
        out = torch.empty(self.state.numel, dtype=self.W.dtype) if out is None else out  # CPU
        dst = self.state.views(out)
        for n, v in self.views(self.W).items():
            dst[n].copy_(v[k].t() if n in self.transposed else v[k])
        return out

    def step(
        self, m: int, t, opt, start: torch.Tensor | None = None, mu: float = 0.0, fused: bool = True
    ) -> None:
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
                parts.append(
                    (self.W[sl], self.G[sl], self.exp_avg[sl], self.exp_avg_sq[sl], self._denom[sl], n)
                )
        if mu > 0:
            for p, g, *_, name in parts:
                g.add_(p - self._start_stacked(start, name, p.numel()), alpha=mu)
        if fused:
            if isinstance(t, torch.Tensor):
                step_t = t
            else:
                step_t = self._step_t
                step_t.fill_(t)
            torch._fused_adamw_(
                [q[0] for q in parts],
                [q[1] for q in parts],
                [q[2] for q in parts],
                [q[3] for q in parts],
                [],
                [step_t] * len(parts),
                lr=opt.lr,
                beta1=opt.beta1,
                beta2=opt.beta2,
                weight_decay=opt.weight_decay,
                eps=opt.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        t = int(t)
        for p, g, ea, es, d, _ in parts:
            adamw_step(p, g, ea, es, d, t, opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)

    def _start_stacked(self, start, name: str | None, numel: int) -> torch.Tensor:
        """``start`` (as :meth:`load` takes it) in the stacked layout (cached per round for FedProx)."""
        if self._start_key is not start:
            buf = torch.empty_like(self.W)
            self._fill(buf, start)
            self._start_key, self._start_buf = start, buf
        if name is None:
            return self._start_buf
        lo, _ = self.bounds[name]
        return self._start_buf[lo : lo + numel]


def adamw_step(
    p,
    g,
    exp_avg,
    exp_avg_sq,
    denom,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
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
