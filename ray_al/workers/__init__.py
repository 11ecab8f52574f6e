"""Ray plumbing: Ray Train fits and the resident group, Ray Data embedding, k-center shard actors. Every Ray call of a round lives here."""
