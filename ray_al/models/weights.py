"""Building a learner from a config and moving its weights as bytes (pure torch: no Ray).

The one home for this: training workers, embedding actors, the cycle and the benchmarks all build the
learner from `learner_kwargs(cfg, pool)` and ship weights with `state_to_bytes` / `state_from_bytes`.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # types only: the model layer does not depend on the data or config layers
    from ray_al.core.config import Config
    from ray_al.data.pool import PoolSpec


def ssl_defaults(method: str, pool: PoolSpec) -> dict:
    """Options we set on top of the papers' defaults; explicit train.ssl_options win.

    * single-channel pools (the built-in digits, handwriting, scans): no horizontal flips in the views,
      since a mirrored glyph is another glyph or none (colour pools keep the papers' flips);
    * barlow_twins: the loss starts near proj_dim (512), far above the CE it is added to, so it is scaled
      by 1/32 as in the first Barlow Twins reference code (`scale-loss`); without it SGD at lr 0.05
      diverges in the first steps of the joint objective.
    """
    if method == "none":
        return {}
    out: dict = {}
    if pool.channels == 1:
        out["flip"] = False
    if method == "barlow_twins":
        out["scale"] = 1.0 / 32.0
    return out


def learner_kwargs(cfg: Config, pool: PoolSpec, method: str | None = None) -> dict:
    """The learner's LearnerSpec fields as a plain dict (what travels to the workers; `build_learner`)."""
    method = cfg.train.method if method is None else method
    return {
        "backbone": cfg.model.backbone, "num_classes": pool.num_classes, "in_channels": pool.channels,
        "image_size": pool.image_size, "mean": tuple(pool.mean), "std": tuple(pool.std),
        "ssl": method, "ssl_options": {**ssl_defaults(method, pool), **dict(cfg.train.ssl_options)},
        "dropout": cfg.model.dropout,
    }


def build_learner(kwargs: dict) -> torch.nn.Module:
    from ray_al.models.learner import JointLearner, LearnerSpec

    return JointLearner(LearnerSpec(**kwargs))


def state_to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def encoder_digest(state: dict, dtype: str = "float32") -> str:
    """A digest of a learner state's encoder tensors (weights and batch-norm statistics) and the inference
    dtype: equal digests, equal features. Rounds that train only the head keep their encoder's digest."""
    import hashlib

    h = hashlib.sha1(dtype.encode())
    for name in sorted(k for k in state if k.startswith("encoder.")):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def checkpoint_for(state: dict, kwargs: dict, source: str) -> tuple[dict, str]:
    """(the tensors of `state` this learner can load, a note on what was left out). A classifier for
    another class count is left out (the head is trained from scratch on this pool's classes); any other
    tensor that is missing or of another shape means another model: ValueError naming it."""
    model = build_learner(kwargs).state_dict()
    wrong = [k for k, v in state.items() if k in model and tuple(v.shape) != tuple(model[k].shape)]
    head = [k for k in wrong if k.startswith("classifier.")]
    body = [k for k in wrong if k not in head]
    missing = [k for k in model if k not in state and not k.startswith(("classifier.", "ssl."))]
    if body or missing:
        shown = "; ".join([f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(model[k].shape)}"
                           for k in body[:3]] + [f"{k}: not in the checkpoint" for k in missing[:3]])
        raise ValueError(
            f"{source} was written for another model than model.backbone={kwargs['backbone']} with "
            f"{kwargs['in_channels']} channel(s) at {kwargs['image_size']} px ({len(body) + len(missing)} tensors "
            f"differ: {shown}). Use a checkpoint of this backbone, or set model.backbone to the one it was "
            "trained with.")
    note = (f"{source}: its classifier ({tuple(state[head[0]].shape)[0]} classes) is not used; the head is "
            f"trained for this pool's {kwargs['num_classes']} classes" if head else "")
    return {k: v for k, v in state.items() if k not in head}, note


def pretrained_learner_state(kwargs: dict, weights: str, seed: int = 0) -> tuple[dict, str]:
    """(the state of a learner whose encoder holds model.weights, a note): the weights of
    ray_al.models.pretrained.weights_state loaded strictly into the backbone, or an earlier ray_al model.pt
    checked by `checkpoint_for`. The classifier (sized to the pool's classes) and any SSL head keep a seeded
    random init."""
    from ray_al.models.pretrained import load_backbone_weights, weights_state

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        learner = build_learner(kwargs)
    raw = weights_state(kwargs["backbone"], weights)
    source = f"model.weights='{weights}'"
    note = ""
    if any(k.startswith("encoder.") for k in raw):  # an earlier ray_al model.pt: the whole learner's layout
        state, note = checkpoint_for(raw, kwargs, source)
        learner.load_state_dict(state, strict=False)
    else:
        load_backbone_weights(learner.encoder[1], raw, source)
    return learner.state_dict(), note
