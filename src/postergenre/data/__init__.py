"""Data: labels files, poster download, dataset preparation, the poster loader."""
