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
the exact engine's; docs/engines.md gives the measured distance on the tutorial.

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

One job per module (each imports only those above it in this list):

* :mod:`.plan` -- the round's batches (:class:`StepBatch`, :class:`RoundPlan`);
* :mod:`.stacked_state` -- the stacked trainable state and its AdamW step
  (:class:`StackedState`, :func:`adamw_step`);
* :mod:`.mlp_kernel` -- the hand-written batched MLP step (:class:`BatchedMLPStep`);
* :mod:`.stacked_modules` -- autograd over stacked modules (:class:`StackedModules`,
  :func:`why_not_stackable`);
* :mod:`.engine` -- :class:`VectorizedEngine`;
* :mod:`.factory` -- :func:`make_engine`, which picks the exact or the vectorised engine and the
  feature cache for a run.
"""

from fedbench.fl.vectorized.engine import VectorizedEngine
from fedbench.fl.vectorized.factory import ENGINES, make_engine
from fedbench.fl.vectorized.mlp_kernel import BatchedMLPStep
from fedbench.fl.vectorized.plan import RoundPlan, StepBatch
from fedbench.fl.vectorized.stacked_modules import StackedModules, why_not_stackable
from fedbench.fl.vectorized.stacked_state import StackedState, adamw_step

__all__ = [
    "ENGINES",
    "BatchedMLPStep",
    "RoundPlan",
    "StackedModules",
    "StackedState",
    "StepBatch",
    "VectorizedEngine",
    "adamw_step",
    "make_engine",
    "why_not_stackable",
]
