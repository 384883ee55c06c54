"""The batch's key/value cache for step-wise decoding: rows leave it when they stop, new rows join between steps.

transformers' ``DynamicCache`` keeps one ``[batch, heads, width, head_dim]`` tensor pair per layer, which
``generate`` never reshapes mid-call; a server that lets short answers leave and new requests join must. Rows are
right-aligned (every running row gains one token per step, so all end at the last column) and left-padded; the
attention mask says which columns are real, and each row's position ids count its own real tokens only, so a row
computes exactly what it would alone. Only full-attention caches (GPT-2, Llama-style models) are supported: a
sliding-window or recurrent layer is refused when a batch is joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    import torch
    from transformers import Cache


@dataclass
class Batch:
    """The running rows' cache, attention mask ``[rows, width]`` and next position id per row."""

    cache: Cache
    mask: torch.Tensor
    positions: torch.Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in order), then drop the columns that are padding in every row left."""
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def join(self, other: Batch) -> None:
        """Append ``other``'s rows, left-padding the narrower of the two to the other's width."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
        self.mask = torch.cat([_pad(self.mask, width), _pad(other.mask, width)])
        self.positions = torch.cat([self.positions, other.positions])

    def advance(self) -> None:
        """Account for one more token per row (the one the step just fed)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        self.positions = self.positions + 1


def _pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` left-padded with zeros along its width (dim 2 of a cache tensor, dim 1 of a mask)."""
    import torch.nn.functional as F

    dim = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    pad = [0, 0, missing, 0] if dim == 2 else [missing, 0]
    return F.pad(tensor, pad)


def _layers(cache: Cache) -> list:
    layers = list(getattr(cache, "layers", []))
    if not layers or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise PeftGpt2Error("step-wise decoding supports full-attention key/value caches only")
    return layers
