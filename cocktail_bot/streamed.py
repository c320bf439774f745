"""Run a transformers module whose weights stay in the checkpoint, one module's own weights resident at a time.

The module is built with its parameters on the meta device (no memory, no initialisation; buffers stay real,
since non-persistent ones such as rotary frequencies are computed at construction and never saved). A
forward pre-hook on every module that owns parameters reads them from the checkpoint (``Checkpoint``, local
files by offset or a Hub source by range reads) in the compute dtype, and a forward hook drops them again. So
the resident weights are those of the module running (one linear layer, one embedding) and of its parents that
own parameters themselves, whatever the model's size and with no list of architectures: the model's own
``forward`` runs unchanged. A model that touches a parameter outside its owner's forward, or whose checkpoint
names do not map onto its parameters (transformers renames or fuses some on load), cannot run this way: the
error says so and the caller loads it whole instead. ``resident=True`` is the same module with every weight
read once per model and kept (a GPU the model fits in): the hooks then do nothing.

Several batches run as one *wave*: each in its own thread, the threads in lockstep at every hook (a barrier),
so each module's weights are read once per wave rather than once per batch, while every batch keeps its own
forward pass and so its own numbers. The batches of a wave must call the modules in the same order (they do:
the code path of a transformers model does not depend on the data); if they do not, the wave fails with
:class:`NotStreamable` instead of hanging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from cocktail_bot.checkpoint import Checkpoint, open_checkpoint
from cocktail_bot.errors import CocktailError
from cocktail_bot.remote import HubModel

MISMATCH = "example-based weights need models of one architecture"
Model = Path | HubModel  # a local folder, or a Hub model whose weights are read by range
T = TypeVar("T")


class NotStreamable(Exception):
    """The model cannot be run with its weights streamed; the message says why."""


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules constructed inside get their parameters on the meta device; buffers are built as usual."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


class Wave:
    """A barrier at every hook event: the last thread to arrive checks that all arrived at the same event and
    runs its load or unload once for all."""

    def __init__(self, count: int) -> None:
        self.events: dict[int, tuple[str, int]] = {}
        self.action: Callable[[], None] = lambda: None
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(count, action=self._act)

    def step(self, event: tuple[str, int], action: Callable[[], None]) -> None:
        with self.lock:
            self.events[threading.get_ident()] = event
            self.action = action
        self.barrier.wait()

    def _act(self) -> None:
        if len(set(self.events.values())) != 1:
            raise NotStreamable("its batches call its modules in different orders")
        self.action()

    def run(self, task: Callable[[], T]) -> T:
        """``task`` in this thread, then a last event that every other thread must reach too."""
        try:
            result = task()
            self.step(("end", 0), lambda: None)
        except BaseException:
            self.barrier.abort()  # the other threads stop waiting (BrokenBarrierError) instead of hanging
            raise
        return result


def checkpoint_key(name: str, names: Mapping[str, object] | set[str], prefix: str) -> str | None:
    """The checkpoint's name for a module's parameter ``name``: as is, or with/without the base model prefix."""
    if name in names:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in names:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in names:
        return f"{prefix}.{name}"
    return None


class StreamedWeights:
    """Hooks that fill a meta-parameter module from one checkpoint at a time (see the module docstring)."""

    def __init__(self, network: torch.nn.Module, device: torch.device, *, resident: bool = False) -> None:
        self.network = network
        self.device = device
        self.resident = resident  # every weight read once per bound model and kept: the hooks do nothing
        self.prefix = getattr(network, "base_model_prefix", "") or ""
        self.checkpoint: Checkpoint | None = None
        self.wave: Wave | None = None
        self.sources: dict[str, str] = {}  # parameter name in the module -> tensor name in the checkpoint
        # every name of each parameter object: tied weights (an embedding and the LM head) have several
        self.aliases: dict[str, list[str]] = {}
        by_object: dict[int, list[str]] = {}
        for name, param in network.named_parameters(remove_duplicate=False):
            by_object.setdefault(id(param), []).append(name)
        for names in by_object.values():
            for name in names:
                self.aliases[name] = names
        # each module that owns parameters: its own parameters' (name, qualified name, meta placeholder)
        self.owned: list[tuple[torch.nn.Module, list[tuple[str, str, torch.nn.Parameter]]]] = []
        for module_name, module in network.named_modules():
            for name, buffer in module._buffers.items():  # built on the CPU; the forward runs on ``device``
                if buffer is not None:
                    module._buffers[name] = buffer.to(device)
            own = [
                (name, f"{module_name}.{name}" if module_name else name, param)
                for name, param in module._parameters.items()
                if param is not None
            ]
            if own:
                self.owned.append((module, own))
                module.register_forward_pre_hook(self._loader(own))
                module.register_forward_hook(self._unloader(own))

    def drop(self) -> None:
        """Every parameter back to its placeholder (a forward that raised leaves some loaded)."""
        for module, own in self.owned:
            for name, _, meta in own:
                module._parameters[name] = meta

    @contextmanager
    def bound(self, folder: Model, *, first: Model) -> Iterator[None]:
        """Point the hooks at ``folder``'s checkpoint (a local folder, or a Hub model read by range), after checking every parameter has a tensor there.

        For the first model a parameter without a tensor means the model cannot be streamed
        (:class:`NotStreamable`); for the others it means the models differ (``CocktailError``).
        """
        with open_checkpoint(folder) as checkpoint:
            self.sources = self._map(checkpoint, folder, first)
            self._load_buffers(checkpoint)
            self.checkpoint = checkpoint
            try:
                if self.resident:
                    self._load_all()
                yield
            finally:
                self.checkpoint = None
                self.drop()

    def _map(self, checkpoint: Checkpoint, folder: Model, first: Model) -> dict[str, str]:
        names = set(checkpoint.names)
        sources = {}
        for name, param in sorted(self.network.named_parameters(remove_duplicate=False)):
            key = next(
                (k for alias in self.aliases[name] if (k := checkpoint_key(alias, names, self.prefix))), None
            )
            if key is None:
                if folder == first:
                    raise NotStreamable(f"its checkpoint has no tensor for the parameter {name!r}")
                raise CocktailError(f"{folder} lacks the tensor {name!r} that {first} has: {MISMATCH}")
            shape = checkpoint.info(key).shape
            if shape != tuple(param.shape):
                if folder == first:
                    raise NotStreamable(
                        f"its tensor {key!r} has shape {list(shape)}, the parameter {list(param.shape)}"
                    )
                raise CocktailError(
                    f"{folder}: tensor {key!r} has shape {list(shape)} "
                    f"but {first} has {list(param.shape)}: {MISMATCH}"
                )
            sources[name] = key
        return sources

    @torch.no_grad()
    def _load_buffers(self, checkpoint: Checkpoint) -> None:
        """Saved buffers (a few, small) are resident, as from_pretrained loads them; the rest keep their init."""
        persistent, names = set(self.network.state_dict(keep_vars=True)), set(checkpoint.names)
        for name, buffer in self.network.named_buffers():
            key = checkpoint_key(name, names, self.prefix) if name in persistent else None
            if key is not None and checkpoint.info(key).shape == tuple(buffer.shape):
                buffer.copy_(checkpoint.read(key))

    def _load_all(self) -> None:
        """Every parameter read once onto the device (tied ones share one tensor, as in the module)."""
        assert self.checkpoint is not None
        loaded: dict[int, torch.nn.Parameter] = {}
        for module, own in self.owned:
            for name, qualified, meta in own:
                if id(meta) not in loaded:
                    value = self.checkpoint.read(self.sources[qualified])
                    loaded[id(meta)] = torch.nn.Parameter(
                        value.to(device=self.device, dtype=meta.dtype), requires_grad=False
                    )
                module._parameters[name] = loaded[id(meta)]

    def together(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``tasks`` (each one or more forward passes) as one wave: each weight read once for all."""
        if len(tasks) == 1:
            return [tasks[0]()]
        self.wave = wave = Wave(len(tasks))
        pool = ThreadPoolExecutor(len(tasks), thread_name_prefix="wave")
        try:
            futures = [pool.submit(wave.run, task) for task in tasks]
            errors = [error for future in futures if (error := future.exception()) is not None]
        except BaseException:  # Ctrl-C, SIGTERM: the batches stop at their next module, not at their end
            wave.barrier.abort()
            raise
        finally:
            pool.shutdown(wait=True)
            self.wave = None
            self.drop()
        if errors:  # the cause, rather than the other threads' BrokenBarrierError
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return [future.result() for future in futures]

    def _event(self, event: tuple[str, int], action: Callable[[], None]) -> None:
        if self.wave is None:
            action()
        else:
            self.wave.step(event, action)

    def _loader(self, own: list[tuple[str, str, torch.nn.Parameter]]):
        def read(module: torch.nn.Module) -> None:
            assert self.checkpoint is not None, "streamed module run outside StreamedWeights.bound()"
            for name, qualified, meta in own:
                value = self.checkpoint.read(self.sources[qualified])
                module._parameters[name] = torch.nn.Parameter(
                    value.to(device=self.device, dtype=meta.dtype), requires_grad=False
                )

        def load(module: torch.nn.Module, args) -> None:
            if not self.resident:
                self._event(("load", id(module)), lambda: read(module))

        return load

    def _unloader(self, own: list[tuple[str, str, torch.nn.Parameter]]):
        def drop(module: torch.nn.Module) -> None:
            for name, _, meta in own:
                module._parameters[name] = meta

        def unload(module: torch.nn.Module, args, output) -> None:
            if not self.resident:
                self._event(("unload", id(module)), lambda: drop(module))

        return unload


def build_skeleton(factory: Callable[..., torch.nn.Module], config, dtype: torch.dtype) -> torch.nn.Module:
    """``factory(config, dtype=...)`` (a transformers from_config), parameters on meta, weights tied."""
    try:
        with parameters_on_meta():
            network = factory(config, dtype=dtype)
        network.tie_weights()  # type: ignore[operator]  # as from_pretrained does (outside: tying re-registers)
    except Exception as error:  # any construction failure: the caller loads the model whole instead
        raise NotStreamable(
            f"building it without its weights failed ({type(error).__name__}: {error})"
        ) from None
    network.eval()
    return network
