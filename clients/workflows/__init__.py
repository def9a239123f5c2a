"""What a command does, as plain functions over typed configs: the compositions of library calls.

Each workflow composes ``training``, ``serving``, ``index`` and the shared contract directly (never argv), returns
a plain result the caller prints, and is what the demo and retraining string together.
"""
