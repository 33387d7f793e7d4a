"""The names of the epoch logs' columns (history.csv, TensorBoard, the progress line, the report's curves, the
tuning metric), defined once; plain strings, so that modules that must not import Keras (submitting a Vertex AI
job) use them too.

    python -c "from trainer.objective.log_keys import MONITOR; print(MONITOR)"
"""

ACCURACY = "accuracy"  # every softmax head's metric; Keras logs it as <head>_accuracy and val_<head>_accuracy
VAL = "val_"  # the prefix of a metric's key in the epoch logs when it is computed on the validation split
# what MeanBalancedAccuracy adds to the epoch logs (and VAL + each)
MEAN_BALANCED_ACCURACY = "mean_balanced_accuracy"
MEAN_ACCURACY = "mean_accuracy"
# The quantity the best checkpoint, the tuning metric and the pipeline's metrics are chosen by.
MONITOR = VAL + MEAN_BALANCED_ACCURACY
LR, MOMENTUM = "lr", "momentum"  # the schedule's columns in the epoch logs (LogSchedule)
