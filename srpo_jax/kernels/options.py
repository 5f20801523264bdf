"""Names of the fused distillation kernel's implementations and gradient modes.

Kept apart from the kernels (which import jax) so that config validation can list them.
"""

IMPLEMENTATIONS = ("auto", "reference", "xla", "pallas_gpu", "pallas_tpu")
# "auto" picks per backend; "recompute" re-runs the chunk in the backward pass, "forward"
# contracts the gradient during the forward pass.
GRAD_MODES = ("auto", "recompute", "forward")
