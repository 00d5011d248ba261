"""The `mathtune` command line. Thin: each command parses flags and calls a library function.

Bad input (a `UserError`) is printed as one line and exits with code 2, no traceback.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from mathtune.errors import UserError
from mathtune.openmp import configure_openmp

# errno values that mean "the machine's state", not "a bug": shown as one line (see main()).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

app = typer.Typer(
    name="mathtune",
    help="LoRA fine-tuning on math word problems, with generation-based evaluation and an analysis report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """LoRA fine-tuning on math word problems, with generation-based evaluation and an analysis report."""


def _register() -> None:
    # Each command lives in its own module; importing it registers it on `app`.
    from mathtune.cli import env_cmd, eval_cmd, report_cmd, run_cmd, train_cmd  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    # Hub loading code stays real for users with the Hub; its progress bars and telemetry are noise.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch is imported (commands import it lazily): see mathtune.openmp.
    configure_openmp()
    _register()
    try:
        code = app(args=argv, standalone_mode=False)
        # Outside standalone mode, typer (0.29) turns Ctrl-C and `typer.Exit` into a returned exit
        # code (130 for Ctrl-C) instead of raising them; the commands themselves return None.
        if isinstance(code, int) and code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except UserError as e:
        print(f"mathtune: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        # A full disk or a directory that became unwritable mid-run is the user's to fix, not a crash:
        # one line, exit 2. Finished work is already on disk (atomic artifacts, fsynced logs).
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"mathtune: error: {where}{e.strerror}; finished work is kept, fix this and rerun", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mathtune: interrupted; finished work is on disk, rerun to resume", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as e:
        # Usage errors (unknown flag, bad value): click's own message, exit code 2.
        show = getattr(e, "show", None)
        if show is None:
            raise
        show()
        sys.exit(getattr(e, "exit_code", 2))
