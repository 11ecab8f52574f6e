"""The round loop and the selection orchestration: the only code that orders stages.

rounds (`Cycle`: the order of a run's steps, `open_run`, `finish`), backend (a round's training and
embedding behind one interface: per-round fits or a resident worker group), features (what a run computes
once: the pre-trained encoder and its features), selection (a round's embeddings -> the ids to query),
rules (the config rules that join several keys)."""
