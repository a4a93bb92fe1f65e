"""Writing token stores: corpora -> tokens -> a sharded zarr v3 store (`modtrain data prepare`)."""
