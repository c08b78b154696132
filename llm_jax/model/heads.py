"""A scalar head on the transformer trunk: the reward model (stage reward) and PPO's value model (stage ppo).

    model = ScalarModel(cfg)
    scores_BT = model.apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT)  # one scalar per position
    reward_B = last_real(scores_BT, segment_ids_BT)          # at each row's last real token
    params = from_lm(lm_params, head)                       # the trunk of a language model's parameters

The trunk is the decoder without its LM head (`Transformer(..., hidden=True)`: the final-normed hidden
states); the head is one linear map d_model -> 1 with a bias. Parameters: {"trunk": the LM's parameters
minus "head", "score": {"kernel" [d_model, 1], "bias" [1]}}, so an SFT checkpoint starts a reward model.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.model.config import ModelConfig
from llm_jax.model.transformer import Transformer


class ScalarModel(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    x_BTD = Transformer(self.cfg, name="trunk")(tokens_BT, positions_BT, segment_ids_BT, hidden=True)
    d = self.cfg.d_model  # TRL's init of a reward head: normal with std 1 / sqrt(d_model + 1)
    score = nn.Dense(1, name="score", kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(stddev=(d + 1) ** -0.5), ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))
    return score(x_BTD)[..., 0]


def last_real(values_BT, segment_ids_BT):
  """[B] the value at each row's last real (segment id > 0) position; rows may be left- or right-padded."""
  real_BT = segment_ids_BT > 0
  t = real_BT.shape[1]
  last_B = t - 1 - jnp.argmax(real_BT[:, ::-1], axis=1)
  return jnp.take_along_axis(values_BT, last_B[:, None], axis=1)[:, 0]


def from_lm(lm_params: dict, score: dict) -> dict:
  """ScalarModel parameters: the trunk of a Transformer's parameters (its LM head dropped) and `score`."""
  return {"trunk": {k: v for k, v in lm_params.items() if k != "head"}, "score": score}

