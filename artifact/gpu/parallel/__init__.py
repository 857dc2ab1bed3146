"""One Mixtral MoE layer sharded over R ranks with torch.distributed: tensor parallel vs
expert parallel (all-gather + reduce-scatter, and all-to-all), under uniform, skewed and
replayed routing, with vLLM's linear and an EPLB-style rebalanced expert placement.

Modules: `options` (options and names; torch-free), `placement` (linear and EPLB-style
placements; numpy), `layer` (the sharded layers, phase marks, bytes), `bench` (the driver
on every rank), `report` (tables, cost model, figure, summary; numpy), `run` (what torchrun
starts), `study_loads` (the study's gate logs -> a small replay file). See docs/parallel.md.
"""
