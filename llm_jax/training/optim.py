"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

Weight decay applies to matrices that multiply activations (attention q/k/v/o, MLP, output head). It is
*not* applied to RMSNorm scales (decaying them toward 0 fights the normalisation they implement) nor to
the token embedding (a row is only updated when its token occurs, while decay shrinks every row every
step, so rare tokens' embeddings would drift to zero).
"""

from __future__ import annotations

import jax
import optax


def schedule(train_config) -> optax.Schedule:
  t = train_config
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=min(t.warmup_steps, t.steps - 1),
      decay_steps=t.steps,
      end_value=t.lr * t.min_lr_ratio)


def decay_mask(params):
  """True for parameters that get weight decay (see module docstring)."""
  def decays(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    return names[-1] == "kernel"
  return jax.tree_util.tree_map_with_path(decays, params)


def make(train_config) -> optax.GradientTransformation:
  t = train_config
  adamw = optax.adamw(schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw) if t.grad_clip > 0 else adamw
