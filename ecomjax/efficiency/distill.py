"""Knowledge distillation: a small recommender learns the catalogue distribution of a large one.

A next-item label names one item; the teacher's softmax over the whole catalogue also says which
other items were nearly as likely, a much richer target for a student with a fraction of the
parameters (Hinton et al. 2015). The student's loss is

    (1 - weight) * next-item cross-entropy + weight * T^2 * KL(teacher_T || student_T)

over every position with a target, where ``_T`` is the softmax at temperature ``T`` (the ``T^2``
keeps the gradient scale of the soft term independent of ``T``). The teacher is a finished run
(``efficiency.distill.teacher: WORKDIR``) on the same data: its best parameters are fixed
inputs of the student's update step and get no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ecomjax.eval.ranking import full_ranking_scores


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array, weight: jax.Array,
                    temperature: float, num_items: int) -> jax.Array:
    """Mean ``T^2 * KL(teacher_T || student_T)`` over positions with ``weight > 0``.

    ``*_logits``: ``[T, R]`` scores of every table row (padding rows are masked out here),
    ``weight``: ``[T]`` 1 for positions with a target, 0 for padding."""
    student = full_ranking_scores(student_logits.astype(jnp.float32) / temperature, None, num_items)
    teacher = full_ranking_scores(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature,
                                  None, num_items)
    real = teacher > -jnp.inf  # the padding id and table rows past num_items are -inf
    log_p_teacher = jax.nn.log_softmax(teacher, axis=-1)
    log_p_student = jax.nn.log_softmax(student, axis=-1)
    kl = jnp.sum(jnp.where(real, jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), 0.0), axis=-1)
    return (temperature ** 2) * jnp.sum(kl * weight) / jnp.maximum(jnp.sum(weight), 1.0)
