"""What training optimises and how it is scored: the per-head losses, the Keras metrics and the multi-label decision
threshold. Keras and numpy only.
"""
