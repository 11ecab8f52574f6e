"""Optional dependencies, imported where first needed with an error that says what to install. Pure."""
from __future__ import annotations


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message names the pip extra."""


def require_faiss():
    """The faiss module (k-center, TypiClust, ProbCover, BADGE's distances), or a MissingDependencyError."""
    try:
        import faiss
    except ImportError as e:
        raise MissingDependencyError(
            "this selection method needs faiss, which is not installed in this Python environment. Install "
            "ray_al's CPU extra, pip install -e '.[cpu]' (faiss-cpu), or on GPU nodes the gpu extra, "
            "pip install -e '.[gpu]' (faiss-gpu-cu12): one of the two, they provide the same module."
        ) from e
    return faiss
