"""The MoE layer itself, measured: implementations, this project's Triton kernel, routings
(uniform, Zipf, replayed logs), and the benchmark harness of the `kernels` stage.

Modules: `layer` (shape, weights, the implementations), `triton_moe` (the fused kernel),
`routing` (routing generators), `loads` (per-step expert loads from logs; the
`moe-artifact kernel-loads` tool), `bench` (checks, timings, bounds, EP view, replay),
`plot`. Only `loads` and `routing` import without torch; `triton_moe` needs triton.
"""
