"""MoCo-v2 (Chen et al., 2020, "Improved baselines with momentum contrastive learning").

Defaults: 2-layer MLP head (Linear -> ReLU -> Linear, hidden = feature_dim, out 128); momentum
encoder m = 0.999 (constant; ``cosine=True`` for a BYOL-style rise to 1); one queue of keys
(65536 in the paper on ImageNet, ``queue_size=4096`` here for CIFAR-sized pools, as MoBY);
InfoNCE at T = 0.2; both views from the MoCo-v2 augmentation set (``augment.strong``). Used by the
zero-shot AL paper as pre-training for k-center ordering. Asymmetric loss (q from view 1, k from
view 2) as in the paper; ``symmetric=True`` adds the swapped term.

DDP: keys are gathered across ranks in rank order before they are enqueued; the key encoder runs
in train mode on its own batch (global BN statistics once BN is converted to sync BN).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ray_al.ssl.base import KeyQueue, MomentumContrast, Views, concat_all_gather, cosine_momentum, info_nce, projection_head


class MoCoV2(MomentumContrast):
    """MoCo-v2: query encoder + MLP head, momentum key encoder + head, one queue."""

    name = "mocov2"
    view_kind = "strong"
    query_heads = key_heads = ("head",)

    def setup(
        self,
        proj_dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.999,
        cosine: bool = False,
        symmetric: bool = False,
    ) -> None:
        self.init_contrast(temperature, momentum)
        self.cosine = bool(cosine)
        self.symmetric = bool(symmetric)
        self.head = projection_head(self.feature_dim, hidden_dim, proj_dim)
        self.init_key_branch()  # encoder_k, head_k
        self.queue = KeyQueue(queue_size, proj_dim)

    def _loss(self, views: Views) -> Tensor:
        v1, v2 = views
        queue = self.queue.keys.clone()  # the graph needs the pre-enqueue values
        k2 = self.key(v2)
        loss = info_nce(self.query(v1), k2, queue, self.temperature)
        self.queue.enqueue(concat_all_gather(k2))
        if self.symmetric:
            k1 = self.key(v1)
            loss = loss + info_nce(self.query(v2), k1, queue, self.temperature)
            self.queue.enqueue(concat_all_gather(k1))  # gathered per view: same order as one worker
        return loss

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        m = cosine_momentum(self.base_momentum, progress) if self.cosine else self.base_momentum
        self.ema_key_branch(m)
