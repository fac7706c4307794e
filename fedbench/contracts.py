"""The plug-in contracts: what a model, method, dataset, strategy, codec or privacy mechanism
offers the engine, and what an experiment tracker offers the run.

Every component is a dataclass registered with :func:`fedbench.registry.register`; its fields are
its settings and their defaults (the only place they live), and it derives from one of the base
classes below. The engine and the run call components only through the methods documented here;
each optional hook has a default, so a component implements just what it needs.

Order of calls in a run (the tutorial's random-stream order)::

    data = DataConfig.build(num_clients, seed)            # FederatedData
    model = ModelConfig.build()                           # a FedModel (nn.Module), frozen
    method.inject(model); model.attach_head()
    names = method.trainable(model)                       # what trains == what is sent
    protocol = method.server_protocol(model, state)       # None: encode + strategy.aggregate
    each round: codec.encode/decode, strategy.aggregate, state_dict() into the checkpoint

``check_compatible(components, fl)`` runs on every component after all are built from the
config and before anything trains, so cross-component refusals (labels that do not fit the head,
a method the architecture cannot host) are one line before any work.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contracts stay importable without torch
    import torch
    from torch import nn

    from fedbench.data import FederatedData
    from fedbench.fl.state import FlatParams

    Payload = dict[str, torch.Tensor]
    Message = dict[str, tuple[torch.Tensor, ...]]


class Stateful:
    """State that later rounds depend on (optimizer moments, error-feedback residuals) and that a
    checkpoint must hold for a bit-exact resume: ``(tensors, JSON-able metadata)``."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what :meth:`state_dict` returned (no state: nothing to do)."""


class Component:
    """Base of every registered component (a dataclass of settings)."""

    def check_compatible(self, components: dict[str, Any], fl: Any) -> None:
        """Refuse, with a :class:`~fedbench.errors.ConfigError`, a combination that cannot run.
        ``components`` maps ``model``, ``method``, ``data``, ``strategy`` to their instances."""


@runtime_checkable
class FedModel(Protocol):
    """What a built model (an ``nn.Module``) exposes. ``architecture`` is the key methods look
    up their per-architecture defaults by (as peft's target-module tables); a model knows no
    methods. ``forward`` takes the data's inputs and returns logits."""

    architecture: str
    head_name: str

    def attach_head(self) -> None:
        """Create the task head; called after the method injected its modules."""

    def block_names(self) -> list[str]:
        """Module names of the model's blocks (layers), bottom to top."""


class ModelConfig(Component):
    """A model's settings. ``architecture`` names the module family ``build`` returns (``mlp``,
    ``bert``); ``token_ids`` says whether its forward pass takes token ids."""

    architecture: ClassVar[str] = ""
    token_ids: ClassVar[bool] = False

    def build(self) -> nn.Module:
        raise NotImplementedError

    def has_biases(self) -> bool:
        """Whether the backbone's layers add biases (BitFit trains them)."""
        return False

    def num_blocks(self) -> int:
        """How many blocks :meth:`FedModel.block_names` will list."""
        raise NotImplementedError

    def linear_width(self) -> int | None:
        """The narrowest width (in or out) of the backbone's Linear layers, known from the
        settings (a LoRA rank above it adds nothing and is refused); None: not known."""
        return None


class Method(Component):
    """A fine-tuning method. It does not know about rounds; it marks what trains."""

    def inject(self, model: nn.Module) -> None:
        """Add the method's modules (adapters, prompts) to the frozen backbone. Default: none."""

    def trainable(self, model: nn.Module) -> list[str]:
        """Names of the parameters that train and are communicated, in ``named_parameters`` order."""
        raise NotImplementedError

    def server_protocol(
        self, model: nn.Module, state: FlatParams, population: Population | None = None
    ) -> ServerProtocol | None:
        """How the server sends and aggregates this method's state, or None for the engine's
        default (encode the global payload; the strategy averages the decoded updates).
        ``population``: the clients (how many, the run's seed, their links), for methods whose
        clients differ (heterogeneous LoRA ranks)."""
        return None

    def has_server_protocol(self) -> bool:
        """Whether :meth:`server_protocol` will return a protocol, known from the settings alone
        (so that a combination it cannot run is refused before any model is built)."""
        return False

    def peft_adapter(self, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """The trained method in PEFT's format, ``(adapter_config, adapter tensors)`` with PEFT's
        key names, or None when PEFT has no counterpart. Used by :mod:`fedbench.peft_export`."""
        return None


class ServerProtocol:
    """A method's own server side (e.g. exact LoRA aggregation merges the mean update into the
    base weights; heterogeneous LoRA ranks send each client its own slice). The engine calls
    :meth:`downlink` and :meth:`aggregate` instead of its default two steps, :meth:`to_wire` /
    :meth:`from_wire` around each uplink message, evaluates inside :meth:`evaluation`, and
    checkpoints the protocol's state (as :class:`Stateful`). Defaults: nothing extra."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def downlink(
        self, global_payload: Payload, codec: Codec, selected: list[int], round: int, wire: Any
    ) -> tuple[list[Payload], list[Any]]:
        """(the payload each selected client starts from, the :class:`~fedbench.fl.wire.Sizes`
        of what each was sent), both aligned with ``selected``."""
        raise NotImplementedError

    def aggregate(
        self,
        global_payload: Payload,
        updates: list[tuple[int, Payload]],
        strategy: Strategy,
        codec: Codec,
        round: int,
        clients: list[int],
        wire: Any,
    ) -> Payload:
        """The next global payload from ``(samples, decoded update)`` pairs of ``clients``."""
        raise NotImplementedError

    def to_wire(self, payload: Payload, client: int) -> Payload:
        """What ``client`` sends of its trained payload (default: all of it)."""
        return payload

    def from_wire(self, payload: Payload, client: int) -> Payload:
        """A decoded uplink payload back in the global layout (default: as it is)."""
        return payload

    def evaluation(self):
        """A context in which the live model is the global model (default: it already is)."""
        import contextlib

        return contextlib.nullcontext()

    def row(self) -> dict:
        """Extra columns for the round's metrics row (e.g. ``merge_rank``)."""
        return {}

    def finite(self) -> bool:
        """False once the protocol's own state (e.g. merged weights) holds non-finite values."""
        return True


class DataConfig(Component):
    """A dataset and its client partition. ``token_ids``: inputs are token ids (text)."""

    token_ids: ClassVar[bool] = False
    num_classes: int

    @property
    def input_dim(self) -> int | None:
        """The width of dense feature inputs (None: the inputs are not feature vectors)."""
        return None

    def build(self, num_clients: int, seed: int) -> FederatedData:
        raise NotImplementedError


class Strategy(Component, Stateful):
    """Server aggregation: decoded client updates -> the next global payload.

    ``weighted_mean``: aggregate() is the sample-weighted mean (a linear map), which lets exact
    LoRA aggregation send stacked factors. ``proximal_mu`` > 0 asks clients for FedProx's term.
    """

    weighted_mean: ClassVar[bool] = False

    @property
    def proximal_mu(self) -> float:
        return 0.0

    def aggregate(self, global_payload: Payload, updates: list[tuple[int, Payload]]) -> Payload:
        raise NotImplementedError


class Codec(Component, Stateful):
    """The simulated wire: a payload becomes the tensors that are really sent, and back.

    ``key`` names the sender's stream (a client id, or ``"server"``) for codecs with per-sender
    state (error feedback). ``delta = True``: the engine sends the client's change
    ``w_k - w_start`` instead of its weights; such codecs keep per-receiver state the downlink
    does not have, so they are uplink-only.
    """

    delta: ClassVar[bool] = False

    def encode(self, payload: Payload, key: Any = None) -> Message:
        raise NotImplementedError

    def decode(self, message: Message, key: Any = None) -> Payload:
        raise NotImplementedError


class Privacy(Component, Stateful):
    """A privacy mechanism (``privacy=``): what a client does to its change before encoding it,
    what the server does with the decoded changes, and the accounting of what that releases.

    ``sends_change``: under this mechanism every client sends its change ``w_k - w_start`` (after
    :meth:`client`), whatever the codec; False (``privacy=none``) leaves the engine untouched.
    The engine calls :meth:`client` for each reporting client, then :meth:`aggregate` once per
    round, then reads :meth:`epsilon`; :meth:`summary` goes into ``summary.json``.
    """

    sends_change: ClassVar[bool] = False

    def client(self, change: Payload, round: int, client: int, streams: Any) -> tuple[Payload, Message]:
        """(the change to encode, side information sent beside it, counted as uplink bytes)."""
        return change, {}

    def aggregate(
        self, start: Payload, updates: list[tuple[int, int, Payload]], round: int, streams: Any
    ) -> Payload | None:
        """From ``(client, samples, update)`` triples (updates are weights, ``start`` + decoded
        change): the one pseudo-update the strategy aggregates in place of the clients' updates,
        or None to let the strategy aggregate the clients' updates as usual."""
        return None

    def epsilon(self, round: int) -> float:
        """Cumulative epsilon after ``round`` rounds (NaN: no accounting). The one ``math.nan``
        object, as the run-folder reader fills a missing column, so that rows of two runs
        without accounting compare equal as dicts (NaN == NaN is false; identity is not)."""
        return math.nan

    def summary(self, round: int) -> dict:
        """What ``summary.json`` records under ``privacy`` (empty: nothing)."""
        return {}


class Link:
    """One client's link and device (``fedbench.fl.system``): Mbps = 10^6 bits/s."""

    __slots__ = ("down_mbps", "up_mbps", "latency_ms", "compute_scale")

    def __init__(self, down_mbps: float, up_mbps: float, latency_ms: float, compute_scale: float) -> None:
        self.down_mbps, self.up_mbps = float(down_mbps), float(up_mbps)
        self.latency_ms, self.compute_scale = float(latency_ms), float(compute_scale)

    def __repr__(self) -> str:
        return (
            f"Link(down_mbps={self.down_mbps}, up_mbps={self.up_mbps}, "
            f"latency_ms={self.latency_ms}, compute_scale={self.compute_scale})"
        )


class System(Component):
    """The simulated system (``system=``): each client's link and device, for the clock.

    ``active = False`` (``system=none``): no clock; rows' ``sim_*`` columns are NaN. Otherwise
    :meth:`link` gives client ``client``'s :class:`Link`, a pure function of (seed, client), so
    a population of any size costs nothing until a client is asked for. ``device_gflops`` is the
    reference device's training speed (FLOP/s / 1e9), scaled per client by ``compute_scale``;
    ``deadline_s`` (null: none) drops the clients that cannot finish a round in time.
    """

    active: ClassVar[bool] = False
    device_gflops: float = 0.0
    deadline_s: float | None = None

    def link(self, client: int, seed: int) -> Link:
        raise NotImplementedError


class Population:
    """The clients a run draws from: how many, the run's seed, and their system (links)."""

    def __init__(self, num_clients: int, seed: int, system: System | None = None) -> None:
        self.num_clients, self.seed, self.system = int(num_clients), int(seed), system

    def link(self, client: int) -> Link | None:
        if self.system is None or not self.system.active:
            return None
        return self.system.link(client, self.seed)


class Tracker(Component):
    """An experiment tracker that also receives a run's rows (``logger=``; several at once with
    ``logger=[csv,tensorboard,mlflow]``). The run folder's own files (metrics.csv/parquet,
    summary.json) are written whatever the trackers do: :mod:`fedbench.trackers` calls these
    hooks, and a hook that raises becomes one warning line and drops that tracker, never the run.
    ``run`` is a :class:`fedbench.trackers.TrackedRun` (folder, name, config, resume state)."""

    def open(self, run: Any) -> None:
        """Called once before the first round of this process (after a resume too)."""

    def log_row(self, row: dict) -> None:
        """One metrics row (the run-folder contract's columns), as the round ends."""

    def close(self, status: str, summary: dict) -> None:
        """Called once when the run ends: ``status`` as summary.json records it."""


GROUP_BASES: dict[str, type] = {
    "model": ModelConfig,
    "method": Method,
    "data": DataConfig,
    "strategy": Strategy,
    "codec": Codec,
    "privacy": Privacy,
    "system": System,
    "logger": Tracker,
}
