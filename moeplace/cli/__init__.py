"""The ``moeplace`` command: thin click commands over the library, one module per command group.

Every command turns a :class:`~moeplace.errors.MoeplaceError` into one line on stderr and exit code 2, never
a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from moeplace.errors import MoeplaceError
from moeplace.sizes import SIZE_HELP, parse_size

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Reports MoeplaceError as 'Error: <message>' with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MoeplaceError as e:
            ctx = click.get_current_context(silent=True)
            if ctx is not None:  # the error is the one line: drop what hardware detection would have reported
                ctx.meta.pop("moeplace.detected_lines", None)
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


class SizeType(click.ParamType):
    """A byte size such as 24G (GiB) or 24GB (10^9 bytes)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except MoeplaceError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()


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

    Sizes: """


main.help = (main.help or "") + SIZE_HELP + "."


def _register() -> None:
    # Imported here so each command module can import SIZE and friendly_errors from this package.
    from moeplace.cli import bench_cmd, estimate_cmd, inspect_cmd, profile_cmd, solve_cmd

    main.add_command(inspect_cmd.inspect)
    main.add_command(solve_cmd.solve)
    main.add_command(estimate_cmd.estimate)
    main.add_command(profile_cmd.profile)
    main.add_command(bench_cmd.bench)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
