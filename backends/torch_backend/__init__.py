"""PyTorch backend: DataLoader fed by the shared BatchPlan, an nn.Module MLP and torch.optim.

Files mirror the other backends: data.py (Dataset + batch_sampler + DataLoader, and the per-row loader the bench
times), model.py (nn.Linear MLP and the canonical ⇄ torch parameter mapping), optim.py (torch.optim with two
parameter groups), execution.py (the step run eager, torch.compile-d or as a CUDA graph), adapter.py (the
common.driver.Adapter), bench.py and reference_loop.py (the throughput target and the hand-fused reference,
common.benchtarget). Importing this package does not import torch; the adapter module does.
"""
