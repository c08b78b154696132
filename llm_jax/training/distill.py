"""Knowledge distillation: a student trained on a teacher's logits (Hinton et al., 2015), `config.stage='distill'`.

Per target token (segment id > 0, as in `next_token_loss`):

    loss = alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) + (1 - alpha) * cross-entropy

The temperature tau > 1 softens both distributions so the student also learns how the teacher ranks the
tokens it does not pick; tau^2 keeps the KL's gradients on the scale of the cross-entropy's (they shrink as
1/tau^2). alpha = 0 is plain next-token training, alpha = 1 learns from the teacher alone. The teacher runs
under `stop_gradient`: only the student's parameters get gradients.

`distill_loss` returns a `jax.tree_util.Partial` that binds the teacher's parameters, so
`training.step.make_train_step` passes them to the compiled step as arguments, sharded as they were restored,
instead of baking them into the program as constants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from llm_jax import config as config_lib


def distill_loss(student_model, teacher_model, teacher_params, tau: float = 2.0,
                 alpha: float = 0.5) -> jax.tree_util.Partial:
  """`loss_fn(params, batch, rng) -> (sum of per-token losses, number of target tokens)` of the student.

  Both models are `llm_jax.model.Transformer`s over the same vocabulary (the student uses the teacher's
  tokenizer); ConfigError naming `distill.teacher` otherwise.
  """
  student_vocab, teacher_vocab = student_model.cfg.vocab_size, teacher_model.cfg.vocab_size
  if student_vocab != teacher_vocab:
    raise config_lib.ConfigError(
        f"distill.teacher: the teacher's vocab_size is {teacher_vocab} but the student's model.vocab_size is "
        f"{student_vocab}; a student must share its teacher's tokenizer (set --config.tokenizer.vocab_size="
        f"{teacher_vocab})")
  tau, alpha = float(tau), float(alpha)

  def loss_fn(teacher_params, params, batch, rng):
    del rng  # no dropout
    inputs = (batch["inputs"], batch["positions"], batch["segment_ids"])
    student_BTV = student_model.apply({"params": params}, *inputs)
    teacher_BTV = jax.lax.stop_gradient(teacher_model.apply({"params": teacher_params}, *inputs))
    log_p_teacher = jax.nn.log_softmax(teacher_BTV / tau)
    log_p_student = jax.nn.log_softmax(student_BTV / tau)
    kl_BT = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(student_BTV, batch["targets"])
    weights_BT = (batch["segment_ids"] > 0).astype(jnp.float32)
    loss_BT = alpha * tau ** 2 * kl_BT + (1.0 - alpha) * ce_BT
    return jnp.sum(loss_BT * weights_BT), jnp.sum(weights_BT)

  return jax.tree_util.Partial(loss_fn, teacher_params)
