"""MoBYv2AL (Caramalau et al., 2022): MoBY-style contrastive learning trained jointly with the task.

Paper defaults (the MoBYv2AL paper, Caramalau et al. 2022, its implementation details):
* query branch: the encoder shared with the classifier + projector + predictor, each a single layer
  Linear -> BN -> ReLU ("we reduce the MLP projectors and the query discriminator to a single layer
  with batch normalisation and ReLU activation");
* key branch: deep copies of encoder + projector, updated by EMA with momentum rising from 0.99 to 1
  on a cosine schedule over training (``momentum=0.99``);
* two queues of 4096 L2-normalised keys, one per view (``queue_size=4096``);
* loss = InfoNCE(pred(q1), k2 vs queue2) + InfoNCE(pred(q2), k1 vs queue1) at T = 0.2
  (``temperature=0.2``), negatives = the queue only (MoCo);
* alternating weak / strong views (view 1 weak and view 2 strong on even steps, swapped on odd);
* total = CE(labeled) + lambda_c * contrastive(labeled + unlabeled): the trainer adds the CE;
  SGD lr 0.01, batch 128, 200 epochs, lr / 10 at 60% and 80% of training (trainer config).

BN: the query and key branches have separate BN layers and each view is normalised on its own
(one forward per view and branch, as MoBY), so no batch statistics flow between query and key.
The key branch runs in train mode on its own batch. Under DDP the trainer converts BN to global
(sync) BN, so the key statistics are those of the global batch, and keys are gathered across ranks
in rank order before they enter the queue: N workers x b == 1 worker x N*b (given equal views,
see ``SSLMethod.loss(views=..., seeds=...)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ray_al.core import augment
from ray_al.ssl.base import KeyQueue, MomentumContrast, Views, concat_all_gather, cosine_momentum, info_nce, mlp


class MoBY(MomentumContrast):
    """MoBYv2AL contrastive head. See the module docstring for the paper defaults."""

    name = "moby"
    view_kind = "weak_strong"
    query_heads = ("projector", "predictor")
    key_heads = ("projector",)  # the predictor is query-only (MoBY)

    def setup(
        self,
        proj_dim: int = 256,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        alternate_views: bool = True,
    ) -> None:
        self.init_contrast(temperature, momentum)
        self.alternate_views = bool(alternate_views)
        self.projector = mlp([self.feature_dim, proj_dim], last_bn=True, last_relu=True)  # Linear-BN-ReLU
        self.predictor = mlp([proj_dim, proj_dim], last_bn=True, last_relu=True)
        self.init_key_branch()  # encoder_k, projector_k
        self.queue1 = KeyQueue(queue_size, proj_dim)  # keys of view 1
        self.queue2 = KeyQueue(queue_size, proj_dim)  # keys of view 2
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("momentum", torch.tensor(float(momentum), dtype=torch.float64))

    def make_views(self, x: Tensor, generator: torch.Generator | None = None, seeds: Tensor | None = None) -> Views:
        """(weak, strong) on even steps, (strong, weak) on odd steps when ``alternate_views``."""
        rng = augment.RandomSource.of(x, generator, seeds)
        w, s = augment.weak(x, rng, self.aug), augment.strong(x, rng, self.aug)
        if self.alternate_views and int(self.steps) % 2 == 1:
            return s, w
        return w, s

    def _loss(self, views: Views) -> Tensor:
        v1, v2 = views
        q1, q2 = self.query(v1), self.query(v2)
        k1, k2 = self.key(v1), self.key(v2)
        # clone: the queues are updated in place below but the graph needs their current values
        loss = info_nce(q1, k2, self.queue2.keys.clone(), self.temperature) + info_nce(
            q2, k1, self.queue1.keys.clone(), self.temperature
        )
        self.queue1.enqueue(concat_all_gather(k1))
        self.queue2.enqueue(concat_all_gather(k2))
        return loss

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """EMA of the key branch with momentum m = cosine_momentum(0.99, progress) (MoBY schedule)."""
        m = cosine_momentum(self.base_momentum, progress)
        self.ema_key_branch(m)
        self.momentum.fill_(m)
        self.steps += 1
