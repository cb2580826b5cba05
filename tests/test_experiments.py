"""The absl experiment scripts, end to end on tiny settings."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from larq_engrams.run_lock import RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A user's environment: none of the variables that quiet TensorFlow (the scripts must).
ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "LARQ_ENGRAMS_QUIET_STARTUP")}


def run_script(name, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args],
                          capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def test_run_writes_results_summary_and_tensorboard(tmp_path):
    proc = run_script("run.py", "--scenario=split_mnist", "--setting=task", "--num_tasks=2", "--method=xdg,bnn",
                      "--hidden=16", "--epochs=1", "--batch_size=64", "--source=bundled", "--seeds=0,1",
                      f"--outdir={tmp_path}/out", f"--logdir={tmp_path}/logs", "--verbose=0", "--noisolate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", "only our own output: no TensorFlow, TFDS or absl lines"
    root = tmp_path / "out" / "split_mnist-task"
    for method in ("xdg", "bnn"):
        for seed in (0, 1):
            run = root / method / f"seed_{seed}"
            result = json.load(open(run / "result.json"))
            assert len(result["accuracy_matrix"]) == 2
            assert result["config"]["method"]["name"] == method
            assert result["config"]["scenario"]["source"] == "bundled:mnist-t10k[8000/2000]"
            assert (run / "accuracy_matrix.png").exists() and (run / "result.csv").exists()
    summary = json.load(open(root / "summary.json"))
    assert set(summary["methods"]) == {"xdg", "bnn"} and summary["methods"]["xdg"]["seeds"] == 2
    assert "| xdg |" in open(root / "summary.md").read()
    assert any(f.startswith("events.out") for _, _, files in os.walk(tmp_path / "logs") for f in files)
    assert "tensorboard --logdir" in proc.stdout
    assert "| xdg |" in proc.stdout and "— (shared process)" in proc.stdout  # --noisolate: one process
    # The same folder with other settings: one clear line, exit 1, nothing overwritten.
    stale = run_script("run.py", "--scenario=split_mnist", "--setting=task", "--num_tasks=2", "--method=bnn",
                       "--hidden=16", "--epochs=2", "--batch_size=64", "--source=bundled", "--seeds=0",
                       f"--outdir={tmp_path}/out", f"--logdir={tmp_path}/logs", "--verbose=0")
    assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr[-3000:]
    assert "holds a run with other settings (experiment.epochs: 1 there, 2 here)" in stale.stderr
    assert json.load(open(root / "bnn" / "seed_0" / "result.json"))["config"]["trainer"]["epochs"] == 1


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--method=oracle", "--method"),
        ("--hidden=10,x", "--hidden"),
        ("--m=-2", "--m"),
        ("--activation_probability=1.5", "--activation_probability"),
        ("--scenario=core50_ni", "--data_dir"),
        ("--data_dir=/nonexistent", "--data_dir '/nonexistent' is not a folder"),
        ("--engram_fraction=1.5", "--engram_fraction must be in (0, 1], got 1.5"),
        ("--epochs=x", "flag --epochs=x: invalid literal for int()"),
        ("--log_level=loud", "flag --log_level=loud: value should be one of"),
        ("--router_conv=5", "--router_conv must be 'k,p'"),
        ("--router_conv=3,4", "--router_conv: engram_bnn keep the default 5,4"),
        ("--router_patch_floor=0", "--router_patch_floor must be a float > 0 or 'none', got '0'"),
    ],
)
def test_invalid_flags_fail_before_training(flag, message, tmp_path):
    proc = run_script("run.py", flag, f"--outdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    # One line naming the problem, one pointing at --help: not the help, no log lines.
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert lines[1] == f"(`python {os.path.join(ROOT, 'experiments', 'run.py')} --help` lists every flag)"  # as typed
    assert not os.path.exists(tmp_path / "split_mnist-class"), "nothing ran"


def test_a_missing_data_set_is_one_line(tmp_path):
    proc = run_script("run.py", "--source=local", f"--data_dir={tmp_path}", "--num_tasks=1", "--epochs=1",
                      f"--outdir={tmp_path / 'out'}", f"--logdir={tmp_path / 'logs'}", timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: missing IDX files in") and "yann.lecun.com" in errors[0]


def test_help_prints_the_flags_and_nothing_else():
    proc = run_script("tune.py", "--help", timeout=120)
    assert proc.stderr == ""  # (absl exits with status 1 after --help)
    assert proc.stdout.startswith("Choose settings") and "--log_level" in proc.stdout


def test_reproduce_smoke_grid_resumes(tmp_path):
    args = ("--grid=smoke", "--seeds=0", "--source=bundled", f"--outdir={tmp_path}")
    proc = run_script("reproduce.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", "each run's own process is as quiet as the script"
    table = open(tmp_path / "table.md").read()
    assert "| engram_bnn |" in table and "| bnn |" in table
    assert "| data | bundled:mnist-t10k[8000/2000] |" in table  # each column's source
    inference = table.split("Task-inference accuracy")[1]  # only the model that infers the task
    assert "| engram_bnn |" in inference and "| bnn |" not in inference
    assert (tmp_path / "acc.png").exists() and (tmp_path / "memory.png").exists()
    assert "Command: `" in table and "Compute, all sittings: " in table  # provenance, from the run records
    provenance = json.load(open(tmp_path / "table.json"))["provenance"]
    assert len(provenance["machines"]) == 1 and f"{os.cpu_count()} CPU cores" in provenance["machines"][0]
    assert not list(tmp_path.rglob("checkpoints")), "finished runs drop their checkpoints"
    again = run_script("reproduce.py", *args)  # finished runs are loaded, not re-run
    assert again.returncode == 0 and open(tmp_path / "table.md").read() == table


def test_grid_provenance_orders_recorded_commits_and_lists_library_changes(tmp_path):
    """Records from two commits of a small repository (newest found first), two of them
    "-dirty" (one from before records listed their edited files): the note orders them by
    history, names the library file that changed and the library files edited uncommitted."""
    repo = tmp_path / "repo"
    (repo / "larq_engrams").mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    commits = []
    for i, name in enumerate(("a.py", "b.py")):
        (repo / "larq_engrams" / name).write_text(f"x = {i}\n")
        (repo / "notes.md").write_text(f"{i}\n")  # changes outside the library are not listed
        git("add", "-A")
        git("commit", "-q", "-m", name)
        commits.append(git("rev-parse", "HEAD"))
    env = {"processor": "x86_64", "cpu_count": 2, "device": "CPU", "tensorflow": "2.21.0", "larq": "0.14.0"}
    for method, commit, modified in (("a", commits[1] + "-dirty", None), ("b", commits[0], []),
                                     ("c", commits[1], []),
                                     ("d", commits[1] + "-dirty", ["README.md", "larq_engrams/a.py"])):
        run = tmp_path / "out" / "s-class" / method / "seed_0"
        run.mkdir(parents=True)
        recorded = dict(env, git_commit=commit)
        if modified is not None:
            recorded["git_modified"] = modified
        (run / "result.json").write_text(json.dumps({"config": {"wall_seconds": 3600.0},
                                                     "environment": recorded}))
    code = ("import json, sys; sys.argv = ['reproduce']; import reproduce; "
            f"p = reproduce.recorded_provenance({str(tmp_path / 'out')!r}, ['s-class'], root={str(repo)!r}); "
            "print(json.dumps(p)); "
            "print(reproduce.provenance_note('cmd', p, reproduce.recorded_compute("
            f"{str(tmp_path / 'out')!r}, ['s-class']))[2])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120,
                          cwd=os.path.join(ROOT, "experiments"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    found, note = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(found) == {"commits": commits, "dirty": 2, "dirty_library": ["larq_engrams/a.py"],
                                 "dirty_unlisted": 1, "library_changes": ["larq_engrams/b.py"],
                                 "machines": ["x86_64, 2 CPU cores, device CPU, TensorFlow 2.21.0, Larq 0.14.0"]}
    assert note.startswith(f"Code: runs recorded at 2 commits, {commits[0][:7]} to {commits[1][:7]} (2 records "
                           '"-dirty"') and "differs between the first and last in: larq_engrams/b.py" in note
    assert "of the 1 that list their files, edits to `larq_engrams/`: larq_engrams/a.py)" in note
    assert "4.00 h of test runs" in note


def test_sync_readme_refills_stale_blocks_and_flags_missing_files(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.md").write_text("preamble\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    readme = tmp_path / "README.md"
    readme.write_text('Intro\n<!-- include: results/t.md from "| a |" -->\nold\n<!-- end include -->\n'
                      '![plot](results/t.md)\n')
    check = run_script("sync_readme.py", f"--readme={readme}", "--check", timeout=60)
    assert check.returncode == 1 and "block from results/t.md is stale" in check.stdout
    assert "old" in readme.read_text()  # --check changes nothing
    fill = run_script("sync_readme.py", f"--readme={readme}", timeout=60)
    assert fill.returncode == 0, fill.stderr
    assert readme.read_text() == ('Intro\n<!-- include: results/t.md from "| a |" -->\n| a | b |\n|---|---|\n'
                                  '| 1 | 2 |\n<!-- end include -->\n![plot](results/t.md)\n')
    assert run_script("sync_readme.py", f"--readme={readme}", "--check", timeout=60).returncode == 0
    readme.write_text(readme.read_text() + "![gone](results/gone.png)\n")
    missing = run_script("sync_readme.py", f"--readme={readme}", "--check", timeout=60)
    assert missing.returncode == 1 and "results/gone.png, which does not exist" in missing.stdout


def test_readme_results_are_those_of_the_results_files():
    """The README's generated blocks equal the files under results/ that they name, and every
    results file it links exists (after a new run: `python experiments/sync_readme.py`)."""
    proc = run_script("sync_readme.py", "--check", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tune_ranks_settings_on_validation_data_only(tmp_path):
    proc = run_script("tune.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=2", "--method=engram",
                      "--grid=engram_fraction=0.2,0.5", "--hidden=16", "--epochs=1", "--batch_size=64",
                      "--source=bundled", f"--outdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "split_mnist-class-engram"
    rows = json.load(open(root / "selection.json"))["rows"]
    assert [r["setting"]["engram_fraction"] for r in rows] in ([0.2, 0.5], [0.5, 0.2])
    assert rows[0]["mean_validation_acc"] >= rows[1]["mean_validation_acc"]
    assert json.load(open(root / "chosen.json")) == rows[0]["setting"]
    for point in ("point_engram_fraction=0.2", "point_engram_fraction=0.5"):
        result = json.load(open(root / point / "engram" / "seed_0" / "result.json"))
        assert result["config"]["scenario"]["evaluated_on"] == "validation"
        assert "validation[0.1 of train, seed 0]" in result["config"]["scenario"]["source"]
    assert "test split was not read" in open(root / "selection.md").read()


def test_paper_grid_chooses_per_family_on_validation_then_runs_on_test(tmp_path):
    args = ("--grid=paper_smoke", "--methods=bnn,ncm,finetune,joint", "--seeds=0", "--source=bundled", "--hidden=16",
            "--selection_grid=epochs=1,2", f"--outdir={tmp_path}/out", f"--selection_dir={tmp_path}/sel",
            "--noisolate")
    proc = run_script("reproduce.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label = tmp_path / "out" / "split_mnist-class-2tasks"
    chosen = json.load(open(label / "selection" / "bnn" / "chosen.json"))
    assert chosen["epochs"] in (1, 2)
    # the family's choice weighs all its learners, mbnn too, though --methods leaves it out on test
    assert json.load(open(label / "selection" / "bnn" / "selection.json"))["methods"] == ["bnn", "mbnn"]
    assert not (label / "mbnn").exists()
    for point in (1, 2):  # the selection ran every point on validation data
        run = json.load(open(tmp_path / "sel" / "split_mnist-class-2tasks" / "bnn" / f"point_epochs={point}"
                             / "bnn" / "seed_0" / "result.json"))
        assert run["config"]["scenario"]["evaluated_on"] == "validation"
    test = json.load(open(label / "bnn" / "seed_0" / "result.json"))
    assert test["config"]["scenario"]["evaluated_on"] == "test"
    assert test["config"]["trainer"]["epochs"] == chosen["epochs"]
    assert json.load(open(label / "ncm" / "seed_0" / "result.json"))["config"]["trainer"]["epochs"] == 1
    assert not (label / "selection" / "class_statistics").exists()  # nothing to choose
    # joint, the upper reference, is not run on validation: it follows its family's choice
    mlp = json.load(open(label / "selection" / "mlp" / "selection.json"))
    assert mlp["methods"] == ["finetune"]
    assert not list((tmp_path / "sel").rglob("joint"))
    mlp_chosen = json.load(open(label / "selection" / "mlp" / "chosen.json"))
    assert json.load(open(label / "joint" / "seed_0" / "result.json"))["config"]["trainer"]["epochs"] == \
        mlp_chosen["epochs"]
    table = json.load(open(tmp_path / "out" / "table.json"))
    assert table["chosen"]["split_mnist-class-2tasks"] == {"mlp": mlp_chosen, "bnn": chosen,
                                                           "class_statistics": {"epochs": 1}}
    assert table["compute_seconds"]["selection"] > 0 and table["machine"]["cpu_count"] >= 1
    markdown = open(tmp_path / "out" / "table.md").read()
    assert f"| bnn | epochs {chosen['epochs']} |" in markdown and "| class_statistics | epochs 1 |" in markdown

    # A later sitting (a fresh checkout: no selection runs) reuses the committed choice
    # and the finished runs, and its table still covers the scenario.
    shutil.rmtree(tmp_path / "sel")
    again = run_script("reproduce.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the setting chosen for bnn" in again.stdout
    assert not (tmp_path / "sel").exists()  # nothing was run on validation again
    table2 = json.load(open(tmp_path / "out" / "table.json"))
    assert table2["summaries"] == table["summaries"] and table2["chosen"] == table["chosen"]
    assert max(table2["compute_seconds"].values()) < 0.5 * table["compute_seconds"]["selection"]  # nothing ran
    assert min(table2["compute_seconds_all_sittings"].values()) > 0  # from the earlier sitting's records
    # Another command's --methods adds its rows: it reuses the family's choice and keeps the others' rows.
    more = run_script("reproduce.py", *args[:1], "--methods=mbnn", *args[2:])
    assert more.returncode == 0, more.stderr[-3000:]
    assert "reusing the setting chosen for bnn" in more.stdout and "choosing" not in more.stdout
    assert json.load(open(label / "selection" / "bnn" / "chosen.json")) == chosen
    assert json.load(open(label / "mbnn" / "seed_0" / "result.json"))["config"]["trainer"]["epochs"] == \
        chosen["epochs"]
    table3 = json.load(open(tmp_path / "out" / "table.json"))
    rows = table3["summaries"]["split_mnist-class-2tasks"]
    assert list(rows) == ["finetune", "joint", "bnn", "mbnn", "ncm"]  # grid order
    assert {m: r for m, r in rows.items() if m != "mbnn"} == table["summaries"]["split_mnist-class-2tasks"]
    assert table3["chosen"] == table["chosen"]
    wrong = run_script("reproduce.py", *args, "--scenarios=split_mnist-domain")
    assert wrong.returncode != 0 and "--scenarios: unknown ['split_mnist-domain']" in wrong.stderr


def test_claims_compares_engram_bnn_with_the_baselines_per_claim(tmp_path):
    """Hand-made numbers with known verdicts: each claim holding in one place and failing in another."""
    def entry(acc, sem, rss, kept=None):
        return {"acc": [acc, sem], "bwt": [0.0, 0.0], "peak_rss_bytes": rss, "peak_gpu_bytes": None,
                "state_bytes": kept}

    mib = lambda learn, predict: {"learn": learn * 2**20, "predict": predict * 2**20}  # noqa: E731

    summaries = {
        "split_mnist-class": {"engram_bnn": entry(0.90, 0.01, 100, mib(8, 1)), "ewc": entry(0.21, 0.01, 1000),
                              "si": entry(0.25, 0.02, 1000), "finetune": entry(0.20, 0.0, 400),
                              "bnn": entry(0.20, 0.0, 200), "engram": entry(0.90, 0.01, 100),
                              # the router alone level with engram_bnn; DER++ 0.88 at most, below 0.89
                              "slda_rf": entry(0.90, 0.01, 100), "er@equal": entry(0.85, 0.01, 100, mib(8, 0)),
                              "derpp@equal": entry(0.87, 0.01, 100, mib(8, 0)),
                              "er@200": entry(0.80, 0.01, 100, mib(0.25, 0))},
        # 0.22 - 0.01 > 0.20 but not above SI's 0.20 + 0.02: too close to call
        "split_fashion_mnist-class": {"engram_bnn": entry(0.22, 0.01, 100), "si": entry(0.20, 0.02, 100)},
        "split_mnist-domain": {"engram_bnn": entry(0.80, 0.0, 100), "lwf": entry(0.819, 0.0, 100),
                               "joint": entry(0.97, 0.0, 100), "bnn": entry(0.5, 0.0, 80),  # 1.9 points below
                               "slda_rf": entry(0.75, 0.0, 100), "er@equal": entry(0.81, 0.0, 100)},
        "permuted_mnist-domain-10tasks": {"engram_bnn": entry(0.80, 0.0, 100), "si": entry(0.83, 0.0, 100)},
    }
    (tmp_path / "table.json").write_text(json.dumps({"command": "reproduce.py --grid=paper", "hidden": [1024, 1024],
                                                     "summaries": summaries}))
    # Recorded R matrices (one seed each): learning accuracy = mean of the diagonal, forgetting = drop on task 0.
    matrices = {("split_mnist-class", "engram_bnn"): [[0.98, 0.0], [0.97, 0.96]],  # LA 0.97, F 0.01
                ("split_mnist-class", "bnn"): [[0.99, 0.0], [0.0, 0.98]],  # LA 0.985, F 0.99
                ("split_mnist-class", "engram"): [[0.98, 0.0], [0.95, 0.96]],  # F 0.03: more than engram_bnn
                ("split_mnist-domain", "engram_bnn"): [[0.90, 0.0], [0.89, 0.90]],  # LA 0.90, F 0.01
                ("split_mnist-domain", "bnn"): [[1.0, 0.0], [0.5, 0.998]]}  # LA 0.999: 9.9 points more plastic
    for (label, method), R in matrices.items():
        folder = tmp_path / label / method / "seed_0"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"accuracy_matrix": R}))
    memory = {m: {"peak": peak, "tiny": tiny, "gpu": None, "state": state, "state_tiny": 0}
              for m, peak, tiny, state in (("engram_bnn", 1000, 990, 10), ("ewc", 1200, 900, 100),
                                           ("si", 1300, 900, 100), ("finetune", 1100, 900, 100),
                                           ("bnn", 990, 900, 50))}
    steps = {"1024": {"engram_bnn": 1.0, "bnn": 4.0}, "2048": {"engram_bnn": 3.0, "bnn": 2.0}}
    fit = {"engram_bnn": [9.0, 1.0, 2.0], "bnn": [9.0, 4.0, 8.0]}  # medians 2 and 8
    (tmp_path / "benchmark.json").write_text(json.dumps({"device": "CPU", "memory": memory, "step_seconds": steps,
                                                         "epoch_seconds": {"fit": fit}}))
    def variant(method, acc, forgetting, m=None, rho=0.2, task_given=None):
        row = {"method": method, "seeds": 3, "acc": [acc, 0.005], "forgetting": [forgetting, 0.005]}
        if m is not None:
            row.update(factors={"m": m, "engram_fraction": rho, "excitability": 6.0}, acc_task_given=[task_given, 0.0])
        return row

    ablation = {"split_fashion_mnist-class": {  # gated: the same; ungated: m = 5 forgets 5 points less
        "m=0 rho=0.2 beta=6": variant("engram_bnn", 0.858, 0.082, 0.0, task_given=0.99),
        "m=1.3 rho=0.2 beta=6": variant("engram_bnn", 0.858, 0.082, 1.3, task_given=0.989),
        "m=0 rho=1 beta=6": variant("engram_bnn", 0.80, 0.10, 0.0, 1.0, 0.65),
        "m=1.3 rho=1 beta=6": variant("engram_bnn", 0.79, 0.09, 1.3, 1.0, 0.65),
        "m=5 rho=1 beta=6": variant("engram_bnn", 0.82, 0.05, 5.0, 1.0, 0.70),
        "bnn": variant("bnn", 0.20, 0.99), "mbnn m=1.3": variant("mbnn", 0.20, 0.99)},
        "permuted_mnist-50x3": {  # one seed: no spread, no verdict
            "m=0 rho=0.2 beta=6": {**variant("engram_bnn", 0.89, 0.03, 0.0, task_given=0.5), "seeds": 1},
            "m=10 rho=0.2 beta=6": {**variant("engram_bnn", 0.89, 0.02, 10.0, task_given=0.6), "seeds": 1}}}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    proc = run_script("claims.py", f"--grid_dir={tmp_path}", f"--benchmark={tmp_path}/benchmark.json",
                      f"--ablation={tmp_path}/ablation.json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.load(open(tmp_path / "claims.json"))["claims"]
    class_il, domain_il, router, replay, trade_off, metaplasticity, memory_rows, against_bnn = (found[c] for c in found)
    assert [(r["where"], r["holds"]) for r in router] == [("split_mnist-class", False), ("split_mnist-domain", True)]
    assert router[0]["measured"] == "engram_bnn 90.0 ± 1.0 %, 9.00 MiB; its router alone (slda_rf) 90.0 ± 1.0 %"
    assert [(r["where"], r["holds"]) for r in replay] == [("split_mnist-class", True), ("split_mnist-domain", False)]
    assert replay[0]["measured"] == ("engram_bnn 90.0 ± 1.0 %, 9.00 MiB; best at equal bytes: derpp@equal 87.0 ± 1.0 %, "
                                     "8.00 MiB; best at 200 examples: er@200 80.0 ± 1.0 %, 0.25 MiB")
    assert [(r["where"], r["holds"]) for r in trade_off] == [("split_mnist-class", True), ("split_mnist-domain", False)]
    assert "engram_bnn 97.0 ± 0.0 % / 1.0 ± 0.0 %; bnn 98.5 ± 0.0 % / 99.0 ± 0.0 %" in trade_off[0]["measured"]
    assert [(r["where"], r["holds"]) for r in metaplasticity] == [
        ("split_mnist-class", True),
        ("ablation split_fashion_mnist-class, engram fraction 0.2, excitability 6", False),
        ("ablation split_fashion_mnist-class, engram fraction 1, excitability 6", True),
        ("ablation split_fashion_mnist-class, no engrams", False),
        ("ablation permuted_mnist-50x3, engram fraction 0.2, excitability 6", None)]
    assert metaplasticity[2]["measured"] == ("m=0 / m=5: ACC 80.0 ± 0.5 % / 82.0 ± 0.5 %; forgetting 10.0 ± 0.5 % / "
                                             "5.0 ± 0.5 %; the networks alone, task given, 65.0 ± 0.0 % / 70.0 ± 0.0 % "
                                             "(3 seeds)")
    assert (tmp_path / "stability_plasticity.png").stat().st_size > 1000
    summary = open(tmp_path / "claims_summary.md").read()
    assert "| holds in 1 of 2 | not in split_fashion_mnist-class |" in summary
    assert ("| metaplastic optimization enhances synaptic stability further (engram_bnn against engram; the ablation) "
            "| holds in 2 of 4 | not in ablation split_fashion_mnist-class, engram fraction 0.2, excitability 6, "
            "ablation split_fashion_mnist-class, no engrams |") in summary
    assert [(r["where"], r["holds"]) for r in class_il] == [("split_mnist-class", True),
                                                            ("split_fashion_mnist-class", False)]
    assert "best regularization method (si) 25.0 ± 2.0 %" in class_il[0]["measured"]
    assert [(r["where"], r["holds"]) for r in domain_il] == [("split_mnist-domain", True),
                                                             ("permuted_mnist-domain-10tasks", False)]
    assert "difference -1.9 points" in domain_il[0]["measured"] and "joint" in domain_il[0]["measured"]
    # peak RSS in split_mnist-class: 100 / 1000 (ewc, si) and 100 / 400 (finetune) = x0.25: not < 20 %
    by_measure = {(r["where"], r["measured"].split(":")[0]): r for r in memory_rows}
    grid_rss = by_measure[("split_mnist-class", "peak RSS of each run's process")]
    assert "x0.10 of ewc, x0.10 of si, x0.25 of finetune" in grid_rss["measured"] and grid_rss["holds"] is False
    model = by_measure[("benchmark", "model memory (width minus 16-16)")]  # 10 / 300, 10 / 400, 10 / 200
    assert "x0.03 of ewc, x0.03 of si, x0.05 of finetune" in model["measured"] and model["holds"] is True
    assert by_measure[("benchmark", "whole-process peak RSS")]["holds"] is False  # 1000 / 1100 ...
    assert by_measure[("benchmark", "peak GPU memory")]["holds"] is None  # not measured: not a pass
    assert "| not measured |" in open(tmp_path / "claims.md").read()
    # against the plain BNN: peak RSS 100 / 200 and 100 / 80 over the grid (x0.50-1.25: does not hold);
    # the step at the grid's width, 1024 (1 / 4), the median fit epoch (2 / 8), model memory (10 / 90) hold
    assert [(r["where"], r["measured"], r["holds"]) for r in against_bnn] == [
        ("grid, 2 scenarios", "peak RSS of each run's process: x0.50-1.25 of bnn", False),
        ("benchmark", "training step at 1024-1024: x0.25 of bnn", True),
        ("benchmark", "model.fit epoch (median of its epochs): x0.25 of bnn", True),
        ("benchmark", "model memory (width minus 16-16): x0.11 of bnn", True)]


def test_export_script_checks_agreement_and_reports_the_targets(tmp_path):
    proc = run_script("export.py", "--hidden=32,32", "--repeats=1", "--rounds=3", f"--output={tmp_path}",
                      timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / "export.json"))
    assert report["agreement"]["argmax"] >= 0.99 and report["agreement"]["engram_choice"] >= 0.99
    rss = report["ratio_ranges"]["runtime_peak_rss_vs_tensorflow_process"]
    assert rss["min"] <= rss["median"] <= rss["max"] < 0.5  # TensorFlow loaded in one process only (asserted there)
    assert report["ratios"]["runtime_peak_rss_vs_tensorflow_process"] == rss["median"]
    assert "| artifact size |" in open(tmp_path / "export.md").read()
    assert "median of 3 alternating rounds" in open(tmp_path / "export.md").read()
    learned = report["device_learning"]  # the last task's classes, on the device, against slda_rf in TensorFlow
    assert not learned["tensorflow_loaded"] and abs(learned["device_accuracy"] - learned["slda_rf_accuracy"]) <= 0.01
    if shutil.which("cc"):
        assert report["c_export"]["class_agreement"] == report["c_export"]["engram_agreement"] == 1.0


def test_router_statistics_script_compares_float32_with_float64(tmp_path):
    proc = run_script("router_statistics.py", "--dataset=mnist", "--features=64", f"--outdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / "mnist.json"))
    assert report["covariance_max_error_relative_to_max"] < 1e-5
    assert report["validation_agreement"] >= 0.99
    assert report["router_bytes_held"] * 8 == sum(report["memory_bits"].values())


def test_accuracy_vs_bytes_reads_the_recorded_bytes_of_every_class_il_run(tmp_path):
    summaries = {"split_mnist-class": {"er@200": {"acc": [0.5, 0.01], "seeds": 3},
                                       "joint": {"acc": [0.97, 0.0], "seeds": 3}},
                 "split_mnist-domain": {"er@200": {"acc": [0.9, 0.0], "seeds": 3}}}
    (tmp_path / "table.json").write_text(json.dumps({"summaries": summaries}))
    for label in summaries:
        for method in summaries[label]:
            folder = tmp_path / label / method / "seed_0"
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"memory": {"state_bytes": {"learn": 3 * 2**20,
                                                                                         "predict": 2**19}}}))
    proc = run_script("accuracy_vs_bytes.py", f"--grid_dir={tmp_path}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = open(tmp_path / "accuracy_vs_bytes.md").read()
    assert "| er@200 | 50.0 ± 1.0 | 3.00 MiB | 0.50 MiB | recorded by the run |" in text
    assert "joint" not in text and "split_mnist-domain" not in text  # class-IL continual learners only
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 1000


def test_record_state_bytes_rebuilds_the_count_each_run_recorded(tmp_path):
    proc = run_script("run.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=2", "--method=ewc,er@50",
                      "--hidden=16", "--epochs=1", "--batch_size=64", "--source=bundled", "--seeds=0",
                      f"--outdir={tmp_path}", f"--logdir={tmp_path}/logs", "--verbose=0", "--noisolate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = {}
    for method in ("ewc", "er@50"):
        path = tmp_path / "split_mnist-class" / method / "seed_0" / "result.json"
        result = json.loads(path.read_text())
        recorded[method] = result["memory"].pop("state_bytes")  # as a run saved before the count existed
        path.write_text(json.dumps(result))
    proc = run_script("record_state_bytes.py", f"--grid_dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs given their bytes." in proc.stdout
    for method, kept in recorded.items():
        memory = json.loads((tmp_path / "split_mnist-class" / method / "seed_0" / "result.json").read_text())["memory"]
        assert memory["state_bytes"] == kept and memory["state_bytes_rebuilt_at"]
    assert recorded["er@50"]["learn"] == 50 * (784 + 4) and recorded["ewc"]["learn"] > 0


def test_run_takes_a_random_class_order_seeded_by_the_run(tmp_path):
    proc = run_script("run.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=2", "--method=slda_rf",
                      "--class_order=random", "--source=bundled", "--seeds=3", f"--outdir={tmp_path}/out",
                      f"--logdir={tmp_path}/logs", "--verbose=0", "--noisolate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(tmp_path / "out" / "split_mnist-class" / "slda_rf" / "seed_3" / "result.json"))
    order = result["config"]["scenario"]["class_order"]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert result["config"]["experiment"]["class_order"] == "random"


def test_run_skips_a_run_another_process_trains(tmp_path):
    """In a fresh child process (the default) the lock is found there; the parent is told
    by the child's exit status, skips that run and goes on with the next."""
    out = tmp_path / "out" / "split_mnist-class"
    with RunLock(str(out / "bnn" / "seed_0")):
        proc = run_script("run.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=1", "--method=bnn",
                          "--hidden=16", "--epochs=1", "--source=bundled", "--seeds=0,1", f"--outdir={tmp_path}/out",
                          f"--logdir={tmp_path}/logs", "--verbose=0", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped: split_mnist-class bnn seed 0: another process is training it" in proc.stdout, proc.stdout
    assert f"bnn/seed_0 is being trained by process {os.getpid()}" in proc.stderr  # the child's line
    assert not (out / "bnn" / "seed_0").exists() and (out / "bnn" / "seed_1" / "result.json").exists()
    # Every seed asked for skipped: the summary keeps the method's finished run from before
    with RunLock(str(out / "bnn" / "seed_0")):
        again = run_script("run.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=1", "--method=bnn",
                           "--hidden=16", "--epochs=1", "--source=bundled", "--seeds=0", f"--outdir={tmp_path}/out",
                           f"--logdir={tmp_path}/logs", "--verbose=0", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| bnn |" in again.stdout and json.load(open(out / "summary.json"))["methods"]["bnn"]["seeds"] == 1


def test_ablation_splits_each_score_and_reuses_finished_runs(tmp_path):
    args = ["--scenarios=split_mnist-class", "--seeds=0", "--num_tasks=2", "--epochs=1", "--hidden=16,16",
            "--m=1.3", "--engram_fraction=0.2", "--excitability=6", "--noplain", f"--outdir={tmp_path}",
            "--source=bundled"]
    proc = run_script("ablation.py", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.load(open(tmp_path / "table.json"))["split_mnist-class"]["m=1.3 rho=0.2 beta=6"]
    assert row["factors"] == {"m": 1.3, "engram_fraction": 0.2, "excitability": 6.0}
    for column in ("acc", "acc_networks", "acc_router", "acc_task_given", "task_inference", "learning_acc"):
        assert 0.5 < row[column][0] <= 1.0, (column, row)
    assert (tmp_path / "ablation.png").exists() and "| m=1.3 rho=0.2 beta=6 | 1 |" in open(tmp_path / "table.md").read()
    assert "seed 0  (elapsed 0.0 min)" in proc.stdout and "; trained in " in proc.stdout  # progress on long grids
    again = run_script("ablation.py", *args, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout
    # A run another process trains (it holds the run's lock) is skipped, not trained twice
    seed_1 = tmp_path / "split_mnist-class" / "m=1.3_rho=0.2_beta=6" / "seed_1"
    with RunLock(str(seed_1)):
        shared = run_script("ablation.py", *[a.replace("--seeds=0", "--seeds=0,1") for a in args], timeout=600)
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert f"    skipped: {seed_1} is being trained by process {os.getpid()}" in shared.stdout, shared.stdout[-2000:]
    assert not os.path.exists(f"{seed_1}.json") and "| m=1.3 rho=0.2 beta=6 | 1 |" in open(tmp_path / "table.md").read()
    # --notrain tabulates what is there: seed 1 is not trained, the row keeps its one run
    table_only = run_script("ablation.py", *[a.replace("--seeds=0", "--seeds=1") for a in args], "--notrain",
                            timeout=600)
    assert table_only.returncode == 0 and "seed 1" not in table_only.stdout, table_only.stdout[-2000:]
    assert not (tmp_path / "split_mnist-class" / "m=1.3_rho=0.2_beta=6" / "seed_1.json").exists()
    markdown = open(tmp_path / "table.md").read()
    assert "| m=1.3 rho=0.2 beta=6 | 1 |" in markdown and "Runs: 1, at commit " in markdown
    # --plan: variants that differ only in m run next to each other, seed by seed; the
    # finished run (same settings) is marked, and nothing is trained
    plan = run_script("ablation.py", *[a.replace("--seeds=0", "--seeds=0,1").replace("--m=1.3", "--m=0,1.3")
                                       for a in args], "--plain", "--plan", timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.splitlines() == [
        "[1/8] split_mnist-class m=0 rho=0.2 beta=6 seed 0",
        "[2/8] split_mnist-class m=1.3 rho=0.2 beta=6 seed 0  (finished)",
        "[3/8] split_mnist-class m=0 rho=0.2 beta=6 seed 1",
        "[4/8] split_mnist-class m=1.3 rho=0.2 beta=6 seed 1",
        "[5/8] split_mnist-class bnn seed 0",
        "[6/8] split_mnist-class mbnn m=1.3 seed 0",
        "[7/8] split_mnist-class bnn seed 1",
        "[8/8] split_mnist-class mbnn m=1.3 seed 1"]


def test_ablation_takes_per_layer_strengths(tmp_path):
    """An `--m` entry 'layer=value+...' is a variant of its own, next to the float ones of
    the same engram setting; a malformed entry is one line, before anything runs."""
    args = ["--scenarios=split_mnist-class", "--seeds=0", "--engram_fraction=0.2", "--excitability=6",
            f"--outdir={tmp_path}", "--plan"]
    plan = run_script("ablation.py", *args, "--m=0,output=2+hidden_1=3", "--noplain", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.splitlines() == ["[1/2] split_mnist-class m=0 rho=0.2 beta=6 seed 0",
                                        "[2/2] split_mnist-class m=output=2+hidden_1=3 rho=0.2 beta=6 seed 0"]
    bad = run_script("ablation.py", *args, "--m=0,output=x", timeout=120)
    assert bad.returncode == 2 and "error: --m: each entry is a float >= 0 or 'layer=value+...', got 'output=x'" \
        in bad.stderr, bad.stderr[-2000:]


def test_ablation_forgetting_sources_put_back_exactly_the_networks_at_task_end(tmp_path):
    """With every part put back as it was when task k ended, task k scores exactly what it
    scored then (nothing the networks read is missing from the parts)."""
    proc = run_script("ablation.py", "--scenarios=split_mnist-class", "--seeds=0", "--num_tasks=3", "--epochs=1",
                      "--hidden=32,32", "--m=0", "--engram_fraction=0.5", "--excitability=6", "--noplain",
                      f"--outdir={tmp_path}", "--source=bundled", "--forgetting_sources", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = json.load(open(tmp_path / "split_mnist-class" / "m=0_rho=0.5_beta=6" / "seed_0.json"))["sources"]
    assert list(sources) == ["end", "at task end", "hidden kernels", "hidden BatchNorm", "output kernel",
                             "output BatchNorm", "all parts"]
    assert all(len(values) == 2 for values in sources.values())  # the past tasks: all but the last
    assert sources["all parts"] == sources["at task end"]
    assert sources["end"] != sources["at task end"]  # something was forgotten: the check has teeth here
    assert "Where the networks forget" in open(tmp_path / "table.md").read()
    assert (tmp_path / "forgetting_sources.png").exists()
    assert not list(tmp_path.rglob("*.npz"))  # the snapshots go with the run's checkpoints


def test_ablation_source_columns_pair_each_part_with_the_same_runs_end():
    """Forgotten = at task end - end; a part gives back (its put-back mean - end), per run."""
    code = ("import json, sys; sys.path.insert(0, 'experiments'); import ablation; print(json.dumps(ablation.source_columns("
            "{'end': [0.5, 0.7], 'at task end': [0.9, 0.9], 'hidden kernels': [0.6, 0.9], 'all parts': [0.9, 0.9]})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    columns = json.loads(out.stdout.strip().splitlines()[-1])
    # end 0.6, at task end 0.9: forgotten 0.3; kernels put back 0.75 -> 0.15; all parts 0.9 -> 0.3
    assert columns == pytest.approx({"end": 0.6, "at task end": 0.9, "forgotten": 0.3,
                                     "given back: hidden kernels": 0.15, "given back: all parts": 0.3})


def test_evidence_weight_scores_every_weight_on_one_trained_model(tmp_path):
    args = ["--scenarios=split_mnist-class", "--seeds=0", "--num_tasks=2", "--epochs=1", "--hidden=16",
            "--weights=0,0.2,1000", f"--outdir={tmp_path}"]
    proc = run_script("evidence_weight.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.load(open(tmp_path / "split_mnist-class" / "seed_0.json"))
    scores = record["validation_acc"]
    assert list(scores) == ["0", "0.2", "1000", "router"] and all(0.5 < v <= 1.0 for v in scores.values())
    # a weight that drowns the network gives the router's own choice
    assert abs(scores["1000"] - scores["router"]) < 0.01
    assert record["router_class_covariance"] == "shared"  # class-IL's default
    assert "| w = 0 | w = 0.2 | w = 1000 | router alone |" in open(tmp_path / "table.md").read()
    again = run_script("evidence_weight.py", *args)  # resumable: the finished seed is not trained again
    assert again.returncode == 0 and "split_mnist-class 0 {" not in again.stdout


def test_paper_grid_names_only_methods_that_can_learn_each_row():
    """Every method of every Split MNIST row of the paper grid accepts its scenario (replay
    raises in task-IL), so `reproduce.py --grid=paper` does not stop part-way."""
    code = (
        "import sys; sys.path.insert(0, 'experiments'); import reproduce\n"
        "from larq_engrams import experiment, methods, protocol\n"
        "for scenario, setting, num_tasks, names, _, _ in reproduce.GRIDS['paper']:\n"
        "    if scenario != 'split_mnist': continue\n"
        "    config = experiment.ExperimentConfig(scenario=scenario, setting=setting, num_tasks=2, source='bundled',\n"
        "                                         hparams=methods.HyperParameters(hidden=(8,)))\n"
        "    data = experiment.make_scenario(config, 0)\n"
        "    for name in names:\n"
        "        protocol.check_scenario(methods.build(name, data, config.hparams).model, data)\n"
        "        print(setting, name)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    checked = out.stdout.split()
    assert ("task" in checked and "xdg" in checked) and "derpp@equal" in checked, out.stdout[-500:]


def test_router_shortlist_script_routes_as_every_group_once_k_holds_every_engram(tmp_path):
    proc = run_script("router_shortlist.py", "--scenario=split_mnist", "--setting=class", "--num_tasks=3",
                      "--shortlist=none,1,3", f"--output={tmp_path / 'shortlist'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.load(open(tmp_path / "shortlist.json"))["rows"]
    assert rows["3"] == rows["None"] and rows["1"][0] <= rows["None"][0]  # k = K is every group
    assert 50 < rows["None"][0] <= 100
    assert "| every group |" in open(tmp_path / "shortlist.md").read()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on this machine")
def test_routing_cost_script_times_the_c_export_with_and_without_a_shortlist(tmp_path):
    proc = run_script("routing_cost.py", "--engrams=2,4", "--shortlist=2", "--features=32", "--hidden=8",
                      "--inputs=30", "--rounds=1", f"--output={tmp_path / 'cost'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = open(tmp_path / "cost.md").read()
    # K = 2 and 4 with every group, K = 4 with a shortlist of 2 (K = 2 already holds k engrams)
    assert table.count("| every group |") == 2 and table.count("| shortlist 2 |") == 1
    # D M + K C M + C M, and D M + K M + k C M + C M (M = 32, D = 784, C = 10)
    assert f"| {(784 * 32 + 4 * 10 * 32 + 10 * 32) / 1e6:.2f} M |" in table
