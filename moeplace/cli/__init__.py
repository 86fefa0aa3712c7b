"""The ``moeplace`` command: thin click commands over the library, one module per command group.

Every command turns a :class:`~moeplace.errors.MoeplaceError` into one line on stderr and exit code 2, never
a traceback.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from moeplace.errors import MoeplaceError
from moeplace.infiles import printable
from moeplace.sizes import SIZE_HELP, parse_size

F = TypeVar("F", bound=Callable[..., Any])


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def _stdout_gone() -> None:
    """stdout was closed or is full (``| head``, ``> /dev/full``): nothing more can be said there. Point the
    descriptor at /dev/null so Python's own flush at exit does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real descriptor (CliRunner) or no /dev/null
        pass


def friendly_errors(fn: F) -> F:
    """Reports MoeplaceError as 'Error: <message>' with exit code 2, Ctrl-C as 'interrupted' with exit code 130,
    and a closed or full stdout as one line on stderr with exit code 1: never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MoeplaceError as e:
            ctx = click.get_current_context(silent=True)
            if ctx is not None:  # the error is the one line: drop what hardware detection would have reported
                ctx.meta.pop("moeplace.detected_lines", None)
            click.echo(f"Error: {printable(str(e))}", err=True)  # messages quote names read from files
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as e:
            if _stdout_broken(e):
                _stdout_gone()
                if not isinstance(e, BrokenPipeError):  # a closed pipe is the reader's choice, not an error
                    click.echo(f"Error: cannot write to standard output ({e.strerror or e})", err=True)
                sys.exit(1)
            # A file the library did not wrap (the lead's rule: name the file and the problem, no traceback).
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"Error: {where}{e.strerror or e}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _stdout_broken(e: OSError) -> bool:
    """Whether ``e`` came from writing stdout (a closed pipe, ENOSPC on /dev/full) rather than from a file: a
    file error names its file, and every line for stdout goes through ``click.echo`` without ``err``."""
    if isinstance(e, BrokenPipeError):
        return True
    if getattr(e, "filename", None) is not None:
        return False
    tb = e.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is click.echo.__code__ and not frame.f_locals.get("err") and frame.f_locals.get(
                "file") in (None, sys.stdout):
            return True
        tb = tb.tb_next
    return False


class SizeType(click.ParamType):
    """A byte size such as 24G (GiB) or 24GB (10^9 bytes); ``positive`` refuses 0."""

    name = "SIZE"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            n = parse_size(str(value))
        except MoeplaceError as e:
            self.fail(str(e), param, ctx)
        if self.positive and n <= 0:
            self.fail(f"'{value}' is no memory at all: give a positive size such as 32G", param, ctx)
        return n


SIZE = SizeType()
POSITIVE_SIZE = SizeType(positive=True)

# llama.cpp reads its integer options with std::stoi: anything past a 32-bit int is refused there.
INT32_MAX = (1 << 31) - 1


class FiniteFloat(click.FloatRange):
    """click's FloatRange, which lets NaN through (every comparison with NaN is false) and inf when there is no
    maximum, refusing both."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    """Rows of text in aligned columns; columns in ``right`` are right-aligned (default: all but the first)."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    right = set(range(1, len(headers))) if right is None else right
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="moeplace")
def main() -> None:
    """Place the tensors of a Mixture-of-Experts model in GPU memory or system RAM for llama.cpp.

    \b
      moeplace inspect model.gguf                  what is in the file
      moeplace profile model.gguf --prompts p.txt  how often each expert is routed to
      moeplace solve model.gguf --vram 24G         the fastest placement that fits, as llama.cpp arguments
      moeplace choose owner/repo --vram 24G        which quant of a Hub repository to download

    Sizes: """


main.help = (main.help or "") + SIZE_HELP + "."


def _register() -> None:
    # Imported here so each command module can import SIZE and friendly_errors from this package.
    from moeplace.cli import bench_cmd, choose_cmd, estimate_cmd, inspect_cmd, profile_cmd, solve_cmd

    main.add_command(inspect_cmd.inspect)
    main.add_command(solve_cmd.solve)
    main.add_command(estimate_cmd.estimate)
    main.add_command(profile_cmd.profile)
    main.add_command(bench_cmd.bench)
    main.add_command(choose_cmd.choose)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
