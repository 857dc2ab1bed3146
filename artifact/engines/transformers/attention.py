"""The attention kernels the embedded engine runs with.

transformers' paged attention calls `scaled_dot_product_attention` with an explicit mask
whose shape changes every step (the key length grows by one per decode step, the query
length follows each batch's prefill chunk). On CUDA, torch (2.11) prefers cuDNN's attention
for that call, and cuDNN builds a new execution graph for every shape it has not seen: on an
H200, 41 ms for a first-seen shape against 0.05 ms for a seen one. A serving run then pays it
on nearly every step (measured: 70-90 ms decode steps at 16 sequences instead of 16-27 ms,
the first time a prompt set is served), so its timing depends on which shapes earlier runs
happened to meet. The memory-efficient kernel takes any shape at once (0.08 ms), so cuDNN's
is turned off, in the server and in the offline replay alike.
"""

from __future__ import annotations


def use_shape_independent_attention() -> None:
    """Turn off cuDNN's attention kernel for this process."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def sdpa_kernels() -> dict[str, bool]:
    """Which SDPA kernels this process may use (the server's provenance records them)."""
    import torch

    backends = torch.backends.cuda
    return {
        "flash": backends.flash_sdp_enabled(),
        "mem_efficient": backends.mem_efficient_sdp_enabled(),
        "cudnn": backends.cudnn_sdp_enabled(),
        "math": backends.math_sdp_enabled(),
    }
