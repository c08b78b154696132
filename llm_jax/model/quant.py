"""int8 quantization of a trained model's matmul kernels: weight-only ("int8") or with activations ("w8a8").

    qmodel, qparams = quant.quantize(model, params)            # or quant.quantize(model, params, "w8a8")
    logits = qmodel.apply({"params": qparams}, tokens)

Every `Projection` kernel (attention q/k/v/o, MLP, conv mixer projections, the output head) becomes int8
with a float32 scale per output channel: scale = max |w| over the contracted dimensions / 127, and
w ~= int8 * scale. Embedding tables, norms and biases stay as they are. Which dimensions are contracted
comes from the logical axis names the model gives its parameters (the kernel's names that its scale does
not have), so stacked (scanned) layers and multi-axis kernels need no special cases.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def quantize(model, params, mode: str = "int8"):
  """(model with cfg.quant=mode, its int8 parameters) from a float model; mode "int8" (weight-only) or
  "w8a8" (activations quantized per token too); both use the same parameters."""
  if mode not in ("int8", "w8a8"):
    raise ValueError(f"quantization mode {mode!r}: 'int8' (weight-only) or 'w8a8'")
  qmodel = model.clone(cfg=model.cfg.replace(quant=mode))
  boxed = jax.eval_shape(lambda: qmodel.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
  return qmodel, _quantize_tree(boxed, params)


def _names(box) -> tuple:
  return tuple(box.names) if isinstance(box, nn.Partitioned) else ()


def _quantize_tree(boxed: dict, params: dict) -> dict:
  out = {}
  for key, sub in boxed.items():
    if isinstance(sub, dict):
      out[key] = _quantize_tree(sub, params[key])
    elif key == "scale" and "kernel" in boxed and nn.unbox(boxed["kernel"]).dtype == jnp.int8:
      continue  # made together with its kernel
    elif key == "kernel" and nn.unbox(sub).dtype == jnp.int8:
      kernel_names, scale_names = _names(sub), _names(boxed["scale"])
      axes = tuple(i for i, name in enumerate(kernel_names) if name not in scale_names)
      out["kernel"], out["scale"] = quantize_kernel(params["kernel"], axes)
    else:
      out[key] = params[key]
  return out


def absmax_int8(x, axes: tuple[int, ...]):
  """(int8 values, float32 scale with `axes` kept as size 1): scale = max |x| over `axes` / 127, x ~= q * scale.

  The one int8 format of the project: kernels (per output channel), w8a8 activations (per token) and the
  int8 KV cache (per row, slot and kv head) all use it.
  """
  x32 = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x32), axis=axes, keepdims=True) / 127.0
  q = jnp.clip(jnp.round(x32 / jnp.maximum(scale, 1e-30)), -127, 127).astype(jnp.int8)
  return q, scale


def quantize_kernel(w, axes: tuple[int, ...]):
  """(int8 kernel, float32 scale) with absmax scaling over `axes` (the contracted ones)."""
  q, scale = absmax_int8(w, axes)
  return q, jnp.squeeze(scale, axis=axes)
