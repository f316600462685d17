"""Training: `fit` (fit.py) trains a run in one of three modes (recipes.py) with one engine
(engine.py) fed by the mode's data source (sources.py); losses, sampling, augmentation, the
decoded-poster and feature caches and the DDP helpers are its parts."""
