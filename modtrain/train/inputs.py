"""Checks of the user's files, cheap enough to run before DeepSpeed and megatron-core load."""

from __future__ import annotations

from modtrain.config import Config
from modtrain.data.read.loading import DataSources, open_sources
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError


def check_inputs(config: Config) -> DataSources:
    """Everything that can be wrong with the user's files, checked before any work starts.

    Returns the opened stores (one, or a blend), which build_training_data takes.
    """
    sources = open_sources(config)
    tokenizer = Tokenizer(config.data.tokenizer)
    for store in sources.stores:
        if store.tokenizer_sha256 != tokenizer.sha256:
            raise ModtrainError(
                f"store {store.path} was tokenized with a different tokenizer than "
                f"{tokenizer.path} (sha256 {store.tokenizer_sha256[:12]} vs "
                f"{tokenizer.sha256[:12]}); re-run 'modtrain data prepare' with this tokenizer "
                "or point data.tokenizer at the one used"
            )
        documents = config.data.document_mask or config.data.reset_positions
        if documents and store.attrs.get("eos_id") != tokenizer.eos_id:
            raise ModtrainError(
                f"data.document_mask and data.reset_positions cut documents after the "
                f"tokenizer's EOS id {tokenizer.eos_id}, but store {store.path} ends its "
                f"documents with eos_id {store.attrs.get('eos_id')}; re-run 'modtrain data "
                "prepare' with this tokenizer or set both false"
            )
        if store.vocab_size != tokenizer.vocab_size:
            raise ModtrainError(
                f"store {store.path} has vocab_size {store.vocab_size} but tokenizer "
                f"{tokenizer.path} has {tokenizer.vocab_size}; re-run 'modtrain data prepare'"
            )
    vocab = tokenizer.vocab_size
    if config.model.vocab_size == 0:
        config.model.vocab_size = vocab
    elif config.model.vocab_size < vocab:
        raise ModtrainError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the store's vocabulary "
            f"({vocab}); set model.vocab_size=0 to take it from the store"
        )
    return sources
