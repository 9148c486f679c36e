"""PyTorch backend: a DataLoader fed by the shared BatchPlan, the layer stack as torch modules, torch.optim.

Files mirror the other backends: data.py (the DataLoader pipelines yielding common.batching.Rows, and the bench's
per-row loader), core.py / norm.py / image.py / sequence.py (each layer kind as a torch module), model.py (the
stack's nn.Module and the canonical ⇄ torch mapping), optim.py (torch.optim, converted settings), execution.py
(the step eager, torch.compile-d or as a CUDA graph), adapter.py (the common.driver.Adapter), bench.py and
reference_loop.py (the throughput target and the hand-fused reference), probes.py (the trap probes). Importing
this package does not import torch; the adapter module does.
"""
