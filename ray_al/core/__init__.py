"""Pure building blocks: config, ids, registry, storage, the embeddings file contract, reports, augmentations, fault points. Never imports ray."""
