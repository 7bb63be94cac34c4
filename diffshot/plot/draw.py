"""From diffshot's outputs to pictures: read an input, pick the picture, draw it, write it atomically."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.plot import figures
from diffshot.plot.backend import figure_format, save_figure
from diffshot.plot.detect import EPISODES, PREDICT, RESULTS, SEPARABILITY, TUNE, detect
from diffshot.plot.figures import Drawn, Paired, Point

LABEL_KEYS = ("features", "seed", "episodes", "ways", "queries", "imbalance")


def _name(path: object) -> str:
    """The file name of a features path as titles show it."""
    return Path(str(path)).name


def _join(values: Sequence[object]) -> str:
    """Distinct values, in order of appearance, joined by '/'."""
    return "/".join(dict.fromkeys(str(v) for v in values))


def protocol_title(head: str, split: object, seed: object, episodes: object, protocol: str) -> str:
    """The title every figure carries: what was read, the split, seed, episodes and the protocol."""
    return f"{head} · {split} classes · seed {seed} · {episodes} episodes · {protocol}"


# --- evaluate / batch JSON ---------------------------------------------------------------------------


def _records(documents: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> list[dict[str, Any]]:
    """Every result record with its features file and split attached, checked to have what the figure needs."""
    out = []
    for doc, source in zip(documents, sources, strict=True):
        feats = doc.get("features") if isinstance(doc.get("features"), dict) else {}
        for record in doc["results"]:
            if not isinstance(record, dict) or not all(k in record for k in ("method", "shots", "ways", "accuracy")):
                raise DiffshotError(f"{source}: a result record lacks method, ways, shots or accuracy")
            if record.get("accuracy") is None:
                continue
            out.append({**record, "features": _name(feats.get("path", "?")), "split": feats.get("split", "?")})
    if not out:
        raise DiffshotError(f"{sources[0]}: holds no results to draw")
    return out


def results_data(
    documents: Sequence[Mapping[str, Any]], sources: Sequence[str]
) -> tuple[list[Point], list[Paired], str, str, str | None]:
    """Points per series, paired differences, the x axis (shots or ways), the title and the baseline name."""
    records = _records(documents, sources)
    shots = {r["shots"] for r in records}
    ways = {r["ways"] for r in records}
    x_name = "ways" if len(ways) > 1 and len(shots) == 1 else "shots"
    varying = [k for k in LABEL_KEYS if len({json.dumps(r.get(k)) for r in records}) > 1]
    if x_name == "ways":
        varying = [k for k in varying if k != "ways"] + (["shots"] if len(shots) > 1 else [])
    params_vary = {
        m
        for m in {r["method"] for r in records}
        if len({json.dumps(r.get("params"), sort_keys=True) for r in records if r["method"] == m}) > 1
    }

    def label(r: Mapping[str, Any]) -> str:
        parts = [str(r["method"])]
        if r["method"] in params_vary:
            others = [x.get("params") or {} for x in records if x["method"] == r["method"]]
            keys = sorted(k for k in (r.get("params") or {}) if len({json.dumps(o.get(k)) for o in others}) > 1)
            parts.append("(" + ", ".join(f"{k}={r['params'][k]}" for k in keys) + ")")
        for key in varying:
            if key not in ("ways",):
                parts.append(f"{key} {r.get(key)}" if key != "features" else str(r["features"]))
            else:
                parts.append(f"{r['ways']}-way")
        return " ".join(parts)

    points = [Point(label(r), int(r[x_name]), float(r["accuracy"]), float(r.get("ci95") or 0.0)) for r in records]
    paired = []
    baselines = []
    for r in records:
        block = r.get("paired")
        if not isinstance(block, dict) or block.get("difference") is None:
            continue
        baselines.append(str(block.get("baseline")))
        if r["method"] == block.get("baseline"):
            continue
        setting = f"{r['shots']}-shot" if x_name == "shots" else f"{r['ways']}-way"
        paired.append(
            Paired(
                f"{label(r)} · {setting}", str(r["method"]), float(block["difference"]), float(block.get("ci95") or 0.0)
            )
        )
    imbalance = _join([r.get("imbalance") or "balanced" for r in records])
    x_fixed = f"{_join([r['ways'] for r in records])}-way" if x_name == "shots" else f"{_join(sorted(shots))}-shot"
    protocol = f"{x_fixed}, {_join([r['queries'] for r in records])} queries/class, {imbalance}"
    title = protocol_title(
        _join([r["features"] for r in records]),
        _join([r["split"] for r in records]),
        _join([r.get("seed") for r in records]),
        _join([r.get("episodes") for r in records]),
        protocol,
    )
    return points, paired, x_name, title, _join(baselines) if baselines else None


def draw_results(documents: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> Drawn:
    """Accuracy against shots (or ways) per method, with a forest plot when the results are paired."""
    points, paired, x_name, title, baseline = results_data(documents, sources)
    return figures.accuracy_figure(points, x_name, title, paired, baseline)


# --- --save-episodes .npz ----------------------------------------------------------------------------


def draw_episodes(path: Path, method: str | None = None, baseline: str | None = None) -> Drawn:
    """Per-episode paired differences (method − baseline) for every shots value both ran at."""
    from diffshot.report.episodes_file import load_episode_accuracies

    meta, runs = load_episode_accuracies(path)
    methods = list(dict.fromkeys(r.method for r in runs))
    if len(methods) < 2:
        raise DiffshotError(f"{path}: holds one method ({methods[0]}); paired differences need two")
    a = baseline or methods[0]
    b = method or next(m for m in methods if m != a)
    for name in (a, b):
        if name not in methods:
            raise DiffshotError(f"{path}: no method {name!r} in it (it has {', '.join(methods)})")
    if a == b:
        raise DiffshotError(f"{path}: --method and --baseline are both {a}")
    panels = []
    queries = int(meta.get("ways", 1)) * int(meta.get("queries", 1))
    for shots in dict.fromkeys(r.shots for r in runs):
        first = {r.method: r for r in runs if r.shots == shots}
        if a in first and b in first:
            diffs = first[b].accuracies - first[a].accuracies
            panels.append((f"{b} − {a}, {shots}-shot", diffs, 100.0 / queries))
    if not panels:
        raise DiffshotError(f"{path}: {a} and {b} never ran at the same shots")
    imbalance = "balanced" if meta.get("imbalance") is None else f"dirichlet:{meta['imbalance']:g}"
    if meta.get("zipf") is not None:
        imbalance = f"zipf:{meta['zipf']:g}"
    title = protocol_title(
        _name(meta.get("features_path", path)),
        meta.get("split"),
        meta.get("seed"),
        meta.get("episodes"),
        f"{meta.get('ways')}-way, {meta.get('queries')} queries/class, {imbalance}",
    )
    return figures.differences_figure(panels, title)


# --- tune --grid-json ---------------------------------------------------------------------------------


def tune_grid(
    document: Mapping[str, Any], source: str
) -> tuple[list[float], list[int], np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """τ values, T values, and on the τ × T grid (other parameters at the best's values; NaN where not run)
    the paired difference to the best, accuracy and the difference's 95% interval; and the chosen cell."""
    try:
        taus = [float(t) for t in document["grid"]["step_size"]]
        depths = [int(d) for d in document["grid"]["layers"]]
        best = document["best"]
        ranked = document["ranked"]
        fixed = {k: v for k, v in best.items() if k in document["grid"] and k not in ("step_size", "layers")}
        gain = np.full((len(taus), len(depths)), np.nan)
        accuracy, gain_ci = np.full_like(gain, np.nan), np.full_like(gain, np.nan)
        for entry in ranked:
            p = entry["params"]
            if all(p.get(k) == v for k, v in fixed.items()):
                i, j = taus.index(float(p["step_size"])), depths.index(int(p["layers"]))
                diff = entry["versus_best"]["difference"]
                gain[i, j] = np.nan if diff is None else float(diff)
                gain_ci[i, j] = np.nan if entry["versus_best"]["ci95"] is None else float(entry["versus_best"]["ci95"])
                accuracy[i, j] = np.nan if entry["accuracy"] is None else float(entry["accuracy"])
        chosen = (taus.index(float(best["step_size"])), depths.index(int(best["layers"])))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DiffshotError(f"{source}: malformed tune JSON ({type(exc).__name__}: {exc})") from None
    return taus, depths, gain, accuracy, gain_ci, chosen


def draw_tune(document: Mapping[str, Any], source: str) -> Drawn:
    """The τ × T heat map of the paired difference to the chosen configuration, the chosen cell outlined."""
    taus, depths, gain, accuracy, gain_ci, chosen = tune_grid(document, source)
    proto = document.get("protocol", {})
    best = document["best"]
    title = protocol_title(
        "tune: " + _name(document.get("features", {}).get("path", source)),
        proto.get("split"),
        proto.get("seed"),
        proto.get("episodes"),
        f"{proto.get('ways')}-way {proto.get('shots')}-shot, {proto.get('queries')} queries/class; "
        f"chosen τ {best['step_size']:g}, T {best['layers']}",
    )
    return figures.heatmap_figure(taus, depths, gain, accuracy, chosen, title, "the chosen τ, T", gain_ci)


# --- predict CSV/JSON + the query file's labels ------------------------------------------------------


def _predictions(kind_payload: object, source: Path) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Row numbers and predicted class names of a predict output, and its support classes (JSON only)."""
    if isinstance(kind_payload, dict):
        try:
            records = kind_payload["predictions"]
            rows = np.array([int(r["row"]) for r in records], dtype=np.int64)
            names = [str(r["class"]) for r in records]
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffshotError(f"{source}: malformed predict JSON ({type(exc).__name__})") from None
        return rows, names, [str(c) for c in kind_payload["classes"]]
    rows_list, names = [], []
    try:
        with open(source, encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle):
                rows_list.append(int(record["row"]))
                names.append(str(record["class"]))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DiffshotError(f"{source}: malformed predict CSV ({type(exc).__name__})") from None
    return np.asarray(rows_list, dtype=np.int64), names, None


def confusion_counts(
    predicted: Sequence[str], truth_names: Sequence[str], support: Sequence[str] | None
) -> tuple[np.ndarray, list[str], int]:
    """Counts [C, C] (true rows × predicted columns) over the support classes, and the rows left out.

    Class order: the support classes (predict JSON) or, for a CSV, the query file's classes that occur
    as truth or prediction. Rows whose true class is not among them are left out (no column to be right in).
    """
    present = set(predicted) | set(truth_names)
    classes = list(support) if support is not None else [c for c in dict.fromkeys(truth_names) if c in present]
    classes += [c for c in dict.fromkeys(predicted) if c not in set(classes)]
    position = {c: i for i, c in enumerate(classes)}
    t = np.array([position.get(name, -1) for name in truth_names], dtype=np.int64)
    p = np.array([position[name] for name in predicted], dtype=np.int64)
    keep = t >= 0
    counts = np.zeros((len(classes), len(classes)))
    np.add.at(counts, (t[keep], p[keep]), 1)
    return counts, classes, int((~keep).sum())


def draw_predict(payload: object, source: Path, labels: Path | None) -> Drawn:
    """Confusion matrix and per-class accuracy of a predict output against the query file's labels."""
    if labels is None:
        raise DiffshotError(f"{source}: a predict output; give the query file with --labels QUERY so truth is known")
    from diffshot.features import load_features

    rows, predicted, support = _predictions(payload, source)
    if rows.size == 0:
        raise DiffshotError(f"{source}: holds no predictions")
    query = load_features(labels)
    if rows.min() < 0 or rows.max() >= query.num_rows:
        raise DiffshotError(f"{source}: row {int(rows.max())} is beyond the {query.num_rows} rows of {labels}")
    truth = [query.class_names[c] for c in query.labels[rows]]
    counts, classes, left_out = confusion_counts(predicted, truth, support)
    correct = float(np.trace(counts) / max(counts.sum(), 1) * 100)
    shown = int(counts.sum())
    note = f" ({left_out} rows of classes outside the support left out)" if left_out else ""
    title = f"{source.name} against the labels of {labels.name} · {shown} query rows{note} · accuracy {correct:.2f}%"
    return figures.confusion_figure(counts, classes, title)


# --- separability JSON -------------------------------------------------------------------------------


def draw_separability(document: Mapping[str, Any], source: str) -> Drawn:
    """Ratio and accuracy against the layer from a ``diffshot separability --output`` JSON."""
    try:
        layers = [int(entry["layer"]) for entry in document["layers"]]
        summaries = {
            q: ([e[q]["mean"] for e in document["layers"]], [e[q]["ci95"] for e in document["layers"]])
            for q in ("min_inter", "max_diameter", "mean_intra", "ratio", "accuracy")
        }
        summaries = {k: tuple(np.asarray(v, dtype=float) for v in pair) for k, pair in summaries.items()}
        title = separability_title(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise DiffshotError(f"{source}: malformed separability JSON ({type(exc).__name__})") from None
    return figures.separability_figure(layers, summaries, title)


def separability_title(document: Mapping[str, Any]) -> str:
    """The title of a separability figure from its JSON document."""
    proto, params = document["protocol"], document["params"]
    return protocol_title(
        "separability: " + _name(document["features"]["path"]),
        proto["split"],
        proto["seed"],
        proto["episodes"],
        f"{proto['ways']}-way {proto['shots']}-shot {proto['queries']}-query; τ {params['step_size']:g}, "
        f"n_top {params['n_top']}, sigma {params['sigma']}",
    )


# --- entry points ------------------------------------------------------------------------------------


def render(
    inputs: Sequence[str | Path],
    labels: str | Path | None = None,
    method: str | None = None,
    baseline: str | None = None,
) -> tuple[str, Drawn]:
    """The picture kind of ``inputs`` and the figure drawn from them (several inputs only for results JSON)."""
    if not inputs:
        raise DiffshotError("no input file given")
    detected = [(Path(p), *detect(p)) for p in inputs]
    kinds = {kind for _, kind, _ in detected}
    if len(kinds) > 1 or (len(detected) > 1 and kinds != {RESULTS}):
        listing = ", ".join(f"{p} ({k})" for p, k, _ in detected)
        raise DiffshotError(f"only evaluate/batch JSON files can be drawn together; got {listing}")
    kind = detected[0][1]
    path, payload = detected[0][0], detected[0][2]
    if kind == RESULTS:
        return kind, draw_results([d for _, _, d in detected], [str(p) for p, _, _ in detected])  # type: ignore[misc]
    if kind == EPISODES:
        return kind, draw_episodes(path, method, baseline)
    if kind == TUNE:
        return kind, draw_tune(payload, str(path))  # type: ignore[arg-type]
    if kind == PREDICT:
        return kind, draw_predict(payload, path, None if labels is None else Path(labels))
    if kind == SEPARABILITY:
        return kind, draw_separability(payload, str(path))  # type: ignore[arg-type]
    raise DiffshotError(f"{path}: cannot draw {kind}")


def draw(
    inputs: Sequence[str | Path],
    output: str | Path,
    labels: str | Path | None = None,
    method: str | None = None,
    baseline: str | None = None,
) -> Path:
    """Draw the picture that ``inputs`` call for and write it to ``output`` (png/svg/pdf from its suffix)."""
    figure_format(output)
    _, drawn = render(inputs, labels, method, baseline)
    return save_figure(drawn.figure, output)


def draw_for_results(document: Mapping[str, Any] | str | Path, output: str | Path) -> Path:
    """For ``evaluate --plot FIG``: accuracy (and paired differences) from a JSON document or its path."""
    figure_format(output)
    if isinstance(document, Mapping):
        if not isinstance(document.get("results"), list):
            raise DiffshotError("the document has no results to draw")
        drawn = draw_results([document], ["results"])
    else:
        kind, drawn = render([document])
        if kind != RESULTS:
            raise DiffshotError(f"{document}: not an evaluate/batch JSON result")
    return save_figure(drawn.figure, output)


def draw_batch(json_paths: Sequence[str | Path], out_dir: str | Path, fmt: str = "png") -> list[Path]:
    """For ``batch --plots DIR``: one figure per entry JSON (``<entry>.png``), and ``summary.png`` of all
    entries together when there are several. Returns the files written, in that order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DiffshotError(f"{out_dir}: folder does not exist")
    written = []
    for path in json_paths:
        written.append(draw_for_results(Path(path), out_dir / f"{Path(path).stem}.{fmt}"))
    if len(json_paths) > 1:
        written.append(draw(list(json_paths), out_dir / f"summary.{fmt}"))
    return written


__all__ = ["draw", "draw_batch", "draw_for_results", "render"]
