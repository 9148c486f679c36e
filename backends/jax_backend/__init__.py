"""JAX backend: manual numpy batching (data.py), a flax.linen MLP (model.py), optax chains (optim.py) and one
jax.jit-ed train step (adapter.py). Importing this package does not import JAX; the adapter module does."""
