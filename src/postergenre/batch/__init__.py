"""Batch inference over a catalogue: a table of movies (or a folder of posters) in, a Parquet
table of genres out, resumable. `catalogue` reads the rows and owns the output folder;
`local` runs the job on this machine, `ray_engine` the same job on a Ray cluster."""
