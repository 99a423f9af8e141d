"""The library under train.py, predict.py, the notebooks and tools/: data, devices, recipes, the training loop,
evaluation, checkpoints and run records. model.py (the network) sits below it. Importing the package itself
imports nothing (tools/render.py reads records without torch)."""
