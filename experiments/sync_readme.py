"""Fill the generated blocks of README.md and docs/results.md from the results files
they name, or check them.

A block is the text between two HTML comments (invisible on GitHub):

    <!-- include: results/paper/table.md -->
    ...the file's text, written by this script...
    <!-- end include -->

`<!-- include: PATH from "TEXT" -->` takes the file from its first line that starts with
TEXT (e.g. a table's header, leaving out the file's preamble); `... to "END" -->` stops
before the next line that starts with END. Paths are relative to the markdown file's
folder. `--check` changes nothing and exits with status 1, naming every block
that differs from its file and every `results/` file the README links that does not
exist: the test suite runs it, so a README figure cannot drift from the run that made it.

    python experiments/sync_readme.py            # after reproduce.py / claims.py
    python experiments/sync_readme.py --check
"""
import os
import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list("readme", [os.path.join(_ROOT, "README.md"), os.path.join(_ROOT, "docs", "results.md")],
                  "The markdown files with the blocks.")
flags.DEFINE_bool("check", False, "Change nothing; exit 1 if a block is stale or a linked results file is missing.")

BLOCK = re.compile(r'(?P<open><!-- include: (?P<path>\S+)(?: from "(?P<start>[^"]*)")?(?: to "(?P<end>[^"]*)")? -->\n)'
                   r'(?P<body>.*?)(?P<close><!-- end include -->)', re.S)
# Relative links and images into results/: [text](results/...) or ![alt](../results/...).
LINK = re.compile(r'\]\((?P<path>(?:\.\./)*results/[^)\s#]+)')


def included_text(path, start=None, end=None):
    """The file's text from its first line starting with `start` (all of it without one)
    to the line before the next one starting with `end` (the end without one), ending in
    exactly one newline."""
    with open(path) as f:
        lines = f.read().splitlines()
    if start is not None:
        first = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
        if first is None:
            raise ValueError(f'{path} has no line starting with "{start}"')
        lines = lines[first:]
    if end is not None:
        last = next((i for i, line in enumerate(lines) if i > 0 and line.startswith(end)), None)
        if last is None:
            raise ValueError(f'{path} has no line starting with "{end}"')
        lines = lines[:last]
    return "\n".join(lines).strip("\n") + "\n"


def sync(text, folder):
    """(the text with every block refilled, [paths of the blocks that changed])."""
    changed = []

    def refill(match):
        body = included_text(os.path.join(folder, match["path"]), match["start"], match["end"])
        if body != match["body"]:
            changed.append(match["path"])
        return match["open"] + body + match["close"]

    return BLOCK.sub(refill, text), changed


def missing_links(text, folder):
    """The `results/` paths the text links to that do not exist."""
    return sorted({m["path"] for m in LINK.finditer(text) if not os.path.exists(os.path.join(folder, m["path"]))})


def check_or_sync(readme, check):
    """Refills (or, with `check`, checks) one markdown file; returns its exit status."""
    folder = os.path.dirname(os.path.abspath(readme))
    with open(readme) as f:
        text = f.read()
    try:
        new, changed = sync(text, folder)
    except (OSError, ValueError) as error:
        print(f"{readme}: {error}", file=sys.stderr)
        return 1
    missing = missing_links(new, folder)
    if check:
        for path in changed:
            print(f"{readme}: the block from {path} is stale (run experiments/sync_readme.py)")
        for path in missing:
            print(f"{readme}: links {path}, which does not exist")
        return 1 if changed or missing else 0
    if changed:
        with open(readme, "w") as f:
            f.write(new)
    print(f"{readme}: {len(changed)} block(s) refilled" + (f": {', '.join(changed)}" if changed else ""))
    for path in missing:
        print(f"{readme}: links {path}, which does not exist", file=sys.stderr)
    return 1 if missing else 0


def main(argv):
    del argv
    return max(check_or_sync(readme, FLAGS.check) for readme in FLAGS.readme)


if __name__ == "__main__":
    app.run(main)  # exits with main's status
