"""Checks of the user's files, cheap enough to run before DeepSpeed and megatron-core load."""

from __future__ import annotations

from modtrain.config import Config
from modtrain.data.store import TokenStore
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError


def check_inputs(config: Config) -> TokenStore:
    """Everything that can be wrong with the user's files, checked before any work starts."""
    store = TokenStore(config.data.store)
    tokenizer = Tokenizer(config.data.tokenizer)
    if store.tokenizer_sha256 != tokenizer.sha256:
        raise ModtrainError(
            f"store {store.path} was tokenized with a different tokenizer than "
            f"{tokenizer.path} (sha256 {store.tokenizer_sha256[:12]} vs {tokenizer.sha256[:12]}); "
            "re-run 'modtrain data prepare' with this tokenizer or point data.tokenizer at the "
            "one used"
        )
    if config.model.vocab_size == 0:
        config.model.vocab_size = store.vocab_size
    elif config.model.vocab_size < store.vocab_size:
        raise ModtrainError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the store's vocabulary "
            f"({store.vocab_size}); set model.vocab_size=0 to take it from the store"
        )
    return store
