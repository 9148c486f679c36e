"""TensorFlow / Keras 3 backend: tf.data pipelines, the layer stack as Keras layers, tf.function + GradientTape, Keras
optimizers.

Keras 3 picks its backend when it is first imported, from KERAS_BACKEND; this package needs "tensorflow", so the
default is set here, before any submodule imports keras (model.py checks that it took effect).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
