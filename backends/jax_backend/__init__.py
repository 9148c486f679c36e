"""JAX backend: manual numpy batching (data.py), the layer families as flax.linen (core.py, norm.py, sequence.py)
composed into one stack (model.py), optax chains (optim.py), one pure step run eager, jitted or scanned
(execution.py) behind the adapter's run_epoch (adapter.py). Importing this package does not import JAX."""
