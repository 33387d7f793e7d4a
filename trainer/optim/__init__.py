"""How the weights move: the optimizer with its learning-rate and momentum schedules (schedules.py) and the weight
EMA (ema.py). Keras only.
"""
