"""The results file: append-only, parseable, corrupted lines reported and never dropped silently."""
import json

from sparsity_core.sweep import ResultsFile, run_sweep

from .helpers import config, lines


def test_append_only_and_parseable(tmp_path):
    out = tmp_path / "out"
    run_sweep(config(out, methods=("gmp",)), workers=0, progress="none", plots=False)
    first = (out / "results.jsonl").read_bytes()
    assert len(lines(out)) == 4 and all(r["status"] == "ok" for r in lines(out))
    run_sweep(config(out, methods=("gmp", "rand")), workers=0, progress="none", plots=False)
    second = (out / "results.jsonl").read_bytes()
    assert second.startswith(first) and len(lines(out)) == 8  # the old lines untouched, 4 appended
    rec = lines(out)[-1]
    assert {"run_id", "method_config", "sparsity", "seed", "tasks", "metrics", "wall_s", "status", "error"} <= set(rec)


def test_corrupted_line_is_reported_skipped_and_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = config(out, methods=("gmp",), seeds=(0,))
    run_sweep(cfg, workers=0, progress="none", plots=False)
    path = out / "results.jsonl"
    good = path.read_text().splitlines()
    victim = json.loads(good[1])["run_id"]
    path.write_text(good[0] + "\n" + good[1][:40] + "\n")  # the second line cut short
    log = ResultsFile(path).read()
    assert len(log.records) == 1 and [c.lineno for c in log.corrupted] == [2]
    assert "not valid JSON" in log.corrupted[0].reason

    result = run_sweep(cfg, workers=0, progress="plain", plots=False)
    printed = capsys.readouterr().out
    assert "line 2: not valid JSON" in printed and "skipped" in printed
    assert [r["run_id"] for r in result.ran] == [victim]  # its run is not counted as finished
    assert "Corrupted lines of results.jsonl" in result.table and "- line 2: not valid JSON" in result.table
    assert "Counted: 2 finished runs of 2 in the grid" in result.table


def test_a_line_cut_without_newline_stays_on_its_own(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"run_id": "a", "stat')
    rec = {"run_id": "b", "status": "ok", "metrics": {"x": 1.0}, "method": "m", "sparsity": 0.5, "seed": 0,
           "task_set": "t"}
    ResultsFile(path).append(rec)
    log = ResultsFile(path).read()
    assert [r["run_id"] for r in log.records] == ["b"] and log.corrupted[0].lineno == 1
    assert path.read_text().startswith('{"run_id": "a", "stat\n')


def test_records_that_are_json_but_not_records(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('[1, 2]\n{"run_id": "a"}\n{"run_id": "a", "status": "done", "metrics": {}, "method": "m", '
                    '"sparsity": 0.5, "seed": 0, "task_set": "t"}\n')
    reasons = [c.reason for c in ResultsFile(path).read().corrupted]
    assert reasons == ["not a JSON object but a list", "missing key 'status'",
                       "status 'done' is not one of ok, failed"]
