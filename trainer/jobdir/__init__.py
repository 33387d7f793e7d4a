"""The job dir: its layout (paths.py), one run at a time (joblock.py), the resumable state (backup.py), and files
written whole or not at all (atomic.py).
"""
