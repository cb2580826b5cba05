"""What the experiment scripts print, in one place. Import it before `larq_engrams`.

A script's terminal carries its own progress and results; library noise is off unless
asked for with `--log_level`:

- TensorFlow's start-up lines (CUDA probing on machines without a GPU, CPU-feature
  notes, absl's "before absl::InitializeLog()" warning) are C++ logs written straight
  to the process's stderr. This module imports `larq_engrams` with
  `LARQ_ENGRAMS_QUIET_STARTUP=1` (see `larq_engrams/__init__.py`) unless
  `--log_level=info` or `debug` is on the command line or the variable is set. Later
  C++ INFO and WARNING lines stay off through `TF_CPP_MIN_LOG_LEVEL=2` unless the user
  set that variable.
- `run(main)` is absl's `app.run` with Python loggers set by `--log_level` (default
  "warning": this package's warnings are kept; TensorFlow's, TFDS' and absl's INFO and
  WARNING lines, such as tf.function retracing notes, are not) and with flag errors
  printed as one line plus a pointer to `--help`, exit status 2; a data source that
  cannot give its data set (`benchmarks.DataSourceError`) is one line too, exit status 2;
  a run another process is training (`run_lock.RunInProgressError`) is one line, exit
  status 75 (EX_TEMPFAIL: try again once that process is done).
"""
import os
import sys

from absl import app, flags

_DEFAULT_LEVEL = "warning"


def _level_on_command_line(argv):
    """`--log_level` read from argv before absl parses flags (the import below needs it)."""
    level = _DEFAULT_LEVEL
    for i, arg in enumerate(argv):
        if arg.startswith("--log_level="):
            level = arg.split("=", 1)[1]
        elif arg == "--log_level" and i + 1 < len(argv):
            level = argv[i + 1]
    return level


_SHOW_STARTUP = _level_on_command_line(sys.argv) in ("debug", "info")
os.environ.setdefault("LARQ_ENGRAMS_QUIET_STARTUP", "0" if _SHOW_STARTUP else "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if _SHOW_STARTUP else "2")
import larq_engrams  # noqa: E402,F401  (TensorFlow, quietly; tf.keras bound to Keras 2)
from larq_engrams.benchmarks import DataSourceError  # noqa: E402
from larq_engrams.experiment import LOG_LEVELS, set_log_level  # noqa: E402,F401  (scripts use both)
from larq_engrams.run_lock import RunInProgressError  # noqa: E402

flags.DEFINE_enum("log_level", _DEFAULT_LEVEL, list(LOG_LEVELS),
                  "Log lines shown: 'warning' keeps this package's warnings and hides TensorFlow's, TFDS' "
                  "and absl's below ERROR; 'info'/'debug' show everything, TensorFlow's start-up included.")
# Listed by the script's own --help (absl lists only the main module's flags there).
flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["log_level"])


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _usage_error(error)


def _usage_error(error):
    lines = str(error).strip().splitlines() or ["bad command line"]
    sys.stderr.write("".join(f"error: {line}\n" for line in lines))
    sys.stderr.write(f"(`python {sys.argv[0]} --help` lists every flag)\n")  # the script as typed
    sys.exit(2)


def require_known(flag, values, known):
    """`app.UsageError` naming the values of --`flag` that are not in `known`."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise app.UsageError(f"--{flag}: unknown {unknown}; choose from {', '.join(known)}")


def report_table(title, table, output=None):
    """Prints a script's markdown `table` under its `title`, and with `output` (a path
    without suffix) writes both to `output`.md; returns that path or None."""
    print(title + "\n\n" + table)
    if not output:
        return None
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output + ".md", "w") as f:
        f.write(f"{title}:\n\n{table}\n")
    return output + ".md"


def run(main):
    """`app.run(main)` with the conventions above. `main` may raise `app.UsageError`
    for invalid flag combinations: it is printed as one line per problem."""

    def main_with_conventions(argv):
        set_log_level(flags.FLAGS.log_level)
        try:
            return main(argv)
        except app.UsageError as error:
            _usage_error(error)
        except DataSourceError as error:  # its message says what was expected and how to get it
            sys.stderr.write(f"error: {error}\n")
            sys.exit(2)
        except RunInProgressError as error:  # another process trains that run: not ours to touch
            sys.stderr.write(f"error: {error}\n")
            sys.exit(75)

    app.run(main_with_conventions, flags_parser=_parse_flags)
