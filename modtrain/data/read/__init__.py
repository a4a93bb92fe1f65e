"""Reading token stores: random access, sample indices, blends and the loaders training uses."""
