"""One training run: run(config) (train.py), its step loop under a tf.distribute strategy (loop.py), the callbacks,
history and progress output, the strategy and the cluster it spans, and the metric a Vertex AI tuning trial
reports.
"""
