"""fgresq-cli against the Python CLI on the same files: rank (one group, per folder, a single image), score,
compare (symmetrised and --raw); and fgresq-cli on the release-parity PNGs against the reference forward.

Usage: test_cli.py FGRESQ_CLI TESTDATA_DIR  (run by ctest with the venv's python)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOL = 1e-4


def run(cmd: list[str], cwd: Path) -> tuple[int, dict | list, str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{cmd}: stdout is not JSON (rc {res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.returncode, out, res.stderr


def python_cli(args: list[str], cwd: Path):
    return run([sys.executable, "-c", "from fgresq_sdk.cli import main; main()", *args, "--format", "json"], cwd)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL


def main() -> int:
    cli, data = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    bundle = str(data / "bundle")
    failures: list[str] = []
    worst = {"score": 0.0, "win_rate": 0.0, "strength": 0.0}

    def check(cond: bool, what: str) -> None:
        if not cond:
            failures.append(what)

    for extra in (["photos", "--recursive"], ["photos", "--group-by", "parent"], ["photos/scene_b", "--top", "2"],
                  ["photos"]):
        # Relative paths from the test-data folder, so printed paths must match exactly.
        args = ["rank", *extra, "--model", bundle]
        rc_c, c, err_c = run([str(cli), *args], data)
        rc_p, p, err_p = python_cli(args, data)
        check(rc_c == rc_p == 1, f"{extra}: exit codes C++ {rc_c}, Python {rc_p} (1 expected)")
        if extra == ["photos"]:
            check(c == p, f"no images: {c} vs {p}")
        else:
            check("error: photos/scene_b/broken.png:" in err_c, f"{extra}: stderr lacks the broken file: {err_c!r}")
        check([e["path"] for e in c["errors"]] == [e["path"] for e in p["errors"]],
              f"{extra}: errors differ: {c['errors']} vs {p['errors']}")
        check([g["name"] for g in c["groups"]] == [g["name"] for g in p["groups"]],
              f"{extra}: groups {[g['name'] for g in c['groups']]} vs {[g['name'] for g in p['groups']]}")
        for gc, gp in zip(c["groups"], p["groups"]):
            check([r["path"] for r in gc["ranking"]] == [r["path"] for r in gp["ranking"]],
                  f"{extra} {gc['name']}: order {[r['path'] for r in gc['ranking']]} vs {[r['path'] for r in gp['ranking']]}")
            for rc_, rp in zip(gc["ranking"], gp["ranking"]):
                check(list(rc_) == list(rp), f"keys {list(rc_)} vs {list(rp)}")
                check(rc_["rank"] == rp["rank"] and rc_["tier"] == rp["tier"], f"{rp['path']}: rank/tier differ")
                for k in worst:
                    worst[k] = max(worst[k], abs(rc_[k] - rp[k]))
                    check(close(rc_[k], rp[k]), f"{extra} {rp['path']}: {k} {rc_[k]} vs {rp[k]}")

    files = ["photos/scene_a/astronaut.png", "photos/scene_b/chelsea.jpg", "photos/missing.png",
             "photos/scene_a/camera.png"]
    rc_c, c, _ = run([str(cli), "score", *files, "--model", bundle], data)
    rc_p, p, _ = python_cli(["score", *files, "--model", bundle], data)
    check(rc_c == rc_p == 1, f"score: exit codes {rc_c}, {rc_p}")
    check([r["path"] for r in c["results"]] == [r["path"] for r in p["results"]], "score: result paths differ")
    for a, b in zip(c["results"], p["results"]):
        worst["score"] = max(worst["score"], abs(a["score"] - b["score"]))
        check(close(a["score"], b["score"]), f"score {a} vs {b}")
    check(c["errors"] == [{"path": "photos/missing.png", "error": "no such file"}], f"score errors {c['errors']}")

    pair = ["photos/scene_a/astronaut_rgba.png", "photos/scene_b/coffee_p.png"]
    answers = {}
    for extra in ([], ["--raw"]):
        rc_c, c, _ = run([str(cli), "compare", *pair, "--model", bundle, *extra], data)
        rc_p, p, _ = python_cli(["compare", *pair, "--model", bundle, *extra], data)
        check(rc_c == rc_p == 0, f"compare {extra}: exit codes {rc_c}, {rc_p}")
        check(list(c) == list(p) and c["verdict"] == p["verdict"], f"compare {extra}: {c} vs {p}")
        for k in ("p_first_better", "p_second_better", "p_similar"):
            check(close(c[k], p[k]), f"compare {extra} {k}: {c[k]} vs {p[k]}")
        answers[bool(extra)] = c
    check(max(abs(answers[True][k] - answers[False][k]) for k in ("p_first_better", "p_second_better")) > 1e-3,
          f"--raw changes nothing: {answers}")
    res = subprocess.run([str(cli), "rank", "photos", "--raw", "--model", bundle], cwd=data, capture_output=True,
                         text=True)
    check(res.returncode == 2 and "no such option: --raw" in res.stderr, f"rank --raw: {res.returncode} {res.stderr!r}")

    # One image: no win rate (null in JSON, an empty CSV field), as the Python CLI.
    rc_c, c, _ = run([str(cli), "rank", "single", "--model", bundle], data)
    rc_p, p, _ = python_cli(["rank", "single", "--model", bundle], data)
    check(rc_c == rc_p == 0, f"single: exit codes {rc_c}, {rc_p}")
    entry = c["groups"][0]["ranking"][0] if c.get("groups") else {}
    check(entry.get("win_rate", 0) is None and entry.get("tier") == 1, f"single: {c}")
    check(list(entry) == list(p["groups"][0]["ranking"][0]), f"single: keys {c} vs {p}")
    check(entry.get("strength") == 0.0, f"single: strength {entry.get('strength')}")
    csv_c = subprocess.run([str(cli), "rank", "single", "--model", bundle, "--format", "csv"], cwd=data,
                           capture_output=True, text=True).stdout
    csv_p = subprocess.run([sys.executable, "-c", "from fgresq_sdk.cli import main; main()", "rank", "single",
                            "--model", bundle, "--format", "csv"], cwd=data, capture_output=True, text=True).stdout
    check(csv_c == csv_p and csv_c.splitlines()[1].split(",")[4] == "", f"single csv: {csv_c!r} vs {csv_p!r}")

    # The release parity photos through the CLI's own PNG decoder: scores and compare --raw against the
    # reference forward (tests/official_format.py) that make_test_data.py wrote.
    release = data / "release"
    if (release / "cases.tsv").exists():
        rows = [line.split("\t") for line in (release / "cases.tsv").read_text().splitlines()]
        pngs = [f"release/photos/{r[0]}.png" for r in rows]
        rc_c, c, _ = run([str(cli), "score", *pngs, "--model", str(release / "bundle")], data)
        check(rc_c == 0 and [r["path"] for r in c["results"]] == pngs, f"release score: {rc_c} {c}")
        for r, want in zip(c["results"], rows):
            worst["release score"] = max(worst.get("release score", 0.0), abs(r["score"] - float(want[4])))
            check(abs(r["score"] - float(want[4])) <= TOL, f"release {r['path']}: {r['score']} vs {want[4]}")
        for line in (release / "compare_raw.tsv").read_text().splitlines():
            a, b, *probs = line.split("\t")
            rc_c, c, _ = run([str(cli), "compare", pngs[int(a)], pngs[int(b)], "--raw", "--model",
                              str(release / "bundle")], data)
            for k, want in zip(("p_first_better", "p_second_better", "p_similar"), probs):
                worst["release raw prob"] = max(worst.get("release raw prob", 0.0), abs(c[k] - float(want)))
                check(abs(c[k] - float(want)) <= TOL, f"release compare --raw {a} {b} {k}: {c[k]} vs {want}")
    else:
        check(False, f"no release data in {release} (see release/why.txt)")

    res = subprocess.run([str(cli), "rank", "photos/none", "--model", bundle], cwd=data, capture_output=True, text=True)
    check(res.returncode == 2 and "error: photos/none: no such directory" in res.stderr, f"missing dir: {res.stderr!r}")
    res = subprocess.run([str(cli), "rank", "photos", "-r", "--model", str(data / "nowhere")], cwd=data,
                         capture_output=True, text=True)
    check(res.returncode == 2 and "model bundle not found" in res.stderr, f"missing model: {res.stderr!r}")

    print(f"cli: max |d| vs the Python CLI: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
