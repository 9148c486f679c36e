"""PyTorch backend: DataLoader fed by the shared BatchPlan, an nn.Module MLP and torch.optim.

Files mirror the other backends: data.py (Dataset + batch_sampler + DataLoader), model.py (nn.Linear MLP and the
canonical ⇄ torch parameter mapping), optim.py (torch.optim with two parameter groups), adapter.py (the
common.driver.Adapter). Importing this package does not import torch; the adapter module does.
"""
