"""The network: one head per schema attribute around a backbone (network.py), the backbones (backbones.py,
scratch_nets.py) and in-model augmentation (augment.py). Keras only, so it builds under KERAS_BACKEND=jax too.
"""
