"""Input: the built TFDS dataset as tf.data pipelines (data.py) and the per-image decode (preprocess_ops.py).
TensorFlow.
"""
