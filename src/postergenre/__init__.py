"""postergenre: multi-label movie-genre classifiers from poster images."""

__version__ = "0.1.0"
