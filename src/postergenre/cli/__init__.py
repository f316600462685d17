"""The `postergenre` command: a Typer app whose subcommands are thin wrappers over the library.

Exit codes: 0 success; 1 an error explained in one line (bad input, missing file) or, for
commands over many inputs, at least one input failed; 2 a usage error (unknown option...).
Any other exception is a bug: `main` prints one line saying so, with the path of a log file in
the cache folder that holds the traceback, and exits 1 (docs/errors.md lists the messages).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from postergenre import __version__
from postergenre.cli import batch, data, demo, evaluate, explain, export, predict, serve, train
from postergenre.errors import PosterGenreError

app = typer.Typer(
    name="postergenre",
    help="Build, evaluate and serve multi-label movie-genre classifiers from poster images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)
app.command("explain")(explain.explain)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("batch")(batch.batch)
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"postergenre {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Build, evaluate and serve multi-label movie-genre classifiers from poster images."""


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    import warnings

    warnings.showwarning = _one_line_warning  # the library's warnings, without source lines
    try:
        app()
    except PosterGenreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # anything else is a bug: one line here, the traceback in a log
        log = write_crash_log(e)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"error: unexpected {type(e).__name__}{': ' + first if first else ''}; "
              f"this is a bug, please report it with the traceback in {log}", file=sys.stderr)
        sys.exit(1)


def write_crash_log(error: BaseException) -> str:
    """Write the traceback of an unexpected error to CACHE/logs/crash-*.log; return its path."""
    import os
    import tempfile
    import time
    import traceback

    from postergenre.paths import cache_dir

    text = (f"postergenre {__version__}\nargv: {sys.argv!r}\n\n"
            + "".join(traceback.format_exception(error)))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return str(folder / name)
        except OSError:
            continue
    return "(no log: the cache folder and the temp folder are not writable)"
