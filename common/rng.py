"""Random stream ids: every seeded draw in Parity, in one table (docs/design.md, "Randomness").

Numpy draws use `default_rng([seed, STREAM, ...])`; the framework-native draws of native mode (a Keras initializer
or Dropout seed, a JAX `fold_in`, the tf reference loop's stateless seeds) key their own generators from the ids
below, so no two consumers share a stream.
"""

# numpy streams: default_rng([seed, id, ...])
DATA = 0  # synthetic feature datasets (doughnuts)
SPLIT = 1  # the train/test permutation
ORDER = 2  # the plan's epoch order: [seed, ORDER, epoch]
MASKS = 3  # shared dropout masks: [seed, MASKS, step, k] for the k-th dropout layer
INIT = 4  # canonical init: [seed, INIT, sub-stream] (INIT_EMBED, INIT_RNN, INIT_CONV + i, or the dense index)
SEQUENCES = 6  # synthetic token sequences

# sub-streams of INIT (the dense layers use their index 0, 1, ... below these)
INIT_EMBED = 1000
INIT_RNN = 1001
INIT_CONV = 2000  # conv layer i draws from INIT_CONV + i

# `default_rng(seed)` itself, no stream id, is one framework-like global generator drawn in call order: the numpy
# oracle's native-mode dropout (backends.numpy_backend); nothing else uses it

# framework-native streams (native mode and the hand-fused reference loops)
KERAS_DROPOUT = 5  # Keras Dropout(seed=...) of dropout layer i
KERAS_INIT = 7  # Keras initializers of native mode
JAX_DROPOUT = 0x64726F70  # "drop": fold_in(fold_in(PRNGKey(seed), JAX_DROPOUT), step)
TF_REFERENCE_DROPOUT = 2  # the tf reference loop's stateless dropout seed
