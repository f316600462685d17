"""Batch inference over a catalogue: a table of movies (or a folder of posters) in, a Parquet
table of genres out, resumable. `catalogue` reads the rows and owns the output folder;
`local` runs the job on this machine, `ray_engine` the same job on a Ray cluster."""

ENGINES = ("local", "ray")
FORMATS = ("parquet", "csv", "jsonl")  # the parts always; csv/jsonl: the whole table too
BATCH_SIZE = 32  # posters per model call
PART_ROWS = 1000  # rows per part file: a killed run scores at most this many again
