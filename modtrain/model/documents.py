"""Documents packed in a row: each token's document and position, and the attention mask.

A store ends every document with EOS (docs/data_format.md), so a row's documents are cut
after each EOS: the ids and positions are computed from the tokens on their device, with
no host read, and travel with the batch into the model. The mask follows megatron-core's
convention for `attention_mask`: True where a query may NOT attend to a key.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Documents(NamedTuple):
    """Per-token document ids (None: attention over the whole row) and RoPE positions
    (None: 0..S-1), each [B, S] int64."""

    ids: torch.Tensor | None
    positions: torch.Tensor | None


def split_documents(tokens: torch.Tensor, eos_id: int, mask: bool, reset_positions: bool
                    ) -> Documents:
    """The documents of rows `tokens` [B, S]: a new one starts after each EOS (the EOS ends
    its own). `mask`: return the ids; `reset_positions`: positions restart at each start."""
    seq = tokens.shape[1]
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 1:] = tokens[:, :-1] == eos_id
    starts[:, 0] = True
    ids = starts.long().cumsum(dim=1) - 1 if mask else None
    positions = None
    if reset_positions:
        arange = torch.arange(seq, device=tokens.device).expand_as(tokens)
        first = torch.where(starts, arange, torch.zeros_like(arange)).cummax(dim=1).values
        positions = arange - first
    return Documents(ids, positions)


class DocumentMask(NamedTuple):
    """Document ids of a block's tokens ([S, B], in sequence order) and their mask."""

    ids: torch.Tensor
    masked: torch.Tensor  # [B, 1, S, S] bool: True where query i must not see key j

    @classmethod
    def of(cls, ids: torch.Tensor) -> DocumentMask:
        """Causal AND same-document: key j is seen by query i iff j <= i and doc(j) == doc(i).
        `ids` [S, B] must be in the tokens' original order (a routed block's are: sorted)."""
        rows = ids.t()  # [B, S]
        seq = rows.shape[1]
        later = torch.ones(seq, seq, dtype=torch.bool, device=ids.device).triu(1)
        other = rows[:, :, None] != rows[:, None, :]
        return cls(ids, (other | later)[:, None])

    def select(self, index: torch.Tensor) -> DocumentMask:
        """The mask among a routed block's tokens `index` [k, B] (sorted): same document and
        causal by original position, which sorted order preserves."""
        return DocumentMask.of(self.ids.gather(0, index))
