"""A name -> tensor mapping that builds each tensor when asked, so a checkpoint can be
read one tensor at a time (convert streams it into the export in bounded memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch


class LazyTensors(Mapping[str, torch.Tensor]):
    """Shapes are known up front; `self[name]` builds the tensor anew at each access (and
    keeps nothing), so iterating holds one tensor at a time."""

    def __init__(self) -> None:
        self._build: dict[str, Callable[[], torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> LazyTensors:
        if isinstance(tensors, LazyTensors):
            return tensors
        lazy = cls()
        for name, tensor in tensors.items():
            lazy.add_tensor(name, tensor)
        return lazy

    def add(self, name: str, shape: tuple[int, ...], build: Callable[[], torch.Tensor]) -> None:
        self._build[name] = build
        self._shapes[name] = tuple(shape)

    def add_tensor(self, name: str, tensor: torch.Tensor,
                   convert: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """`tensor` as it is, or `convert(tensor)` built at each access (e.g. an fp32 copy)."""
        self.add(name, tuple(tensor.shape), lambda: convert(tensor))

    def update_lazy(self, other: LazyTensors) -> None:
        self._build.update(other._build)
        self._shapes.update(other._shapes)

    def alias(self, name: str, source: str) -> None:
        """`name` reads the tensor of `source`."""
        self.add(name, self._shapes[source], self._build[source])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._build[name]()
        if tuple(tensor.shape) != self._shapes[name]:
            raise ValueError(f"{name} was built as {tuple(tensor.shape)}, announced as "
                             f"{self._shapes[name]}")
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._build)

    def __len__(self) -> int:
        return len(self._build)

    def __contains__(self, name: object) -> bool:
        return name in self._build
