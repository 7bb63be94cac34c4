"""From diffshot's outputs to pictures: read an input, pick the picture, draw it, write it atomically."""

from __future__ import annotations

import csv
import dataclasses
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
        raise DiffshotError(f"{path}: method and baseline are both {a}")
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


UNKNOWN_ROW = "unknown"  # the row of truths outside the support and the column of rejected predictions
MAX_ROWS = 40  # above this many true classes, only the TOP_ROWS with the most errors are drawn
TOP_ROWS = 30


@dataclasses.dataclass(frozen=True)
class Confusion:
    """Counts [R, C] of true classes (rows) × predicted classes (columns), known classes first, then ``unknown``.

    Truth outside the support classes is the ``unknown`` row; rejected predictions are the ``unknown`` column.
    """

    counts: np.ndarray
    rows: list[str]
    columns: list[str]
    known: int  # how many of ``rows`` are support classes (the unknown row, when there, comes after them)

    @property
    def known_accuracy(self) -> float | None:
        """Percent of the rows of support classes predicted as their own class (a rejected one counts as wrong)."""
        known = self.counts[: self.known]
        total = known.sum()
        right = sum(known[i, self.columns.index(c)] for i, c in enumerate(self.rows[: self.known]) if c in self.columns)
        return None if total == 0 else float(100.0 * right / total)

    @property
    def known_rows(self) -> int:
        return int(self.counts[: self.known].sum())

    @property
    def unknown_rows(self) -> int:
        return int(self.counts[self.known :].sum())

    def own(self) -> np.ndarray:
        """Per row, the count in its own column (right predictions; for ``unknown``, the rejected rows)."""
        return np.array(
            [self.counts[i, self.columns.index(c)] if c in self.columns else 0.0 for i, c in enumerate(self.rows)]
        )


def confusion_counts(
    predicted: Sequence[str], truth_names: Sequence[str], support: Sequence[str] | None, unknown_name: str = "unknown"
) -> Confusion:
    """The confusion of a predict output, with rows and columns of no count dropped.

    Known classes: ``support`` (a predict JSON names them; for a CSV, the support file's) or else the classes
    predicted, in the order they first occur as truth. Predictions named ``unknown_name`` (rejected rows) and
    truths outside the known classes map to one ``unknown`` row and column.
    """
    if support is not None:
        known = list(support)
    else:
        said = set(predicted) - {unknown_name}
        known = [c for c in dict.fromkeys(truth_names) if c in said]
        known += [c for c in dict.fromkeys(predicted) if c in said - set(known)]
    position = {c: i for i, c in enumerate(known)}
    other = len(known)
    t = np.array([position.get(name, other) for name in truth_names], dtype=np.int64)
    p = np.array([position.get(name, other) for name in predicted], dtype=np.int64)
    counts = np.zeros((other + 1, other + 1))
    np.add.at(counts, (t, p), 1)
    names = [*known, UNKNOWN_ROW if UNKNOWN_ROW not in position else f"{UNKNOWN_ROW} (outside the support)"]
    rows = np.flatnonzero(counts.sum(axis=1) > 0)
    columns = np.flatnonzero(counts.sum(axis=0) > 0)
    return Confusion(
        counts[np.ix_(rows, columns)], [names[i] for i in rows], [names[j] for j in columns], int((rows < other).sum())
    )


def top_confused(confusion: Confusion, limit: int = TOP_ROWS) -> Confusion:
    """The ``limit`` known classes with the most wrong rows (and the unknown row), with the columns they reach:
    their own classes first, in the same order, then the others by count."""
    errors = confusion.counts[: confusion.known].sum(axis=1) - confusion.own()[: confusion.known]
    keep = sorted(np.argsort(-errors, kind="stable")[:limit].tolist(), key=lambda i: -errors[i])
    keep += list(range(confusion.known, len(confusion.rows)))
    counts = confusion.counts[keep]
    reached = np.flatnonzero(counts.sum(axis=0) > 0)
    names = [confusion.rows[i] for i in keep]
    own = [
        confusion.columns.index(c) for c in names if c in confusion.columns and confusion.columns.index(c) in reached
    ]
    rest = sorted(set(reached.tolist()) - set(own), key=lambda j: -counts[:, j].sum())
    order = own + rest
    return Confusion(counts[:, order], names, [confusion.columns[j] for j in order], min(limit, confusion.known))


def draw_predict(payload: object, source: Path, labels: Path | None, support: Path | None = None) -> Drawn:
    """Confusion matrix and per-class accuracy of a predict output against the query file's labels.

    Unknown truth and rejected rows share one ``unknown`` row and column; the title gives the accuracy on the
    rows of support classes (what ``predict`` prints); above :data:`MAX_ROWS` classes the classes with the
    most errors are drawn.
    """
    if labels is None:
        raise DiffshotError(f"{source}: a predict output; give the query file with labels=QUERY so truth is known")
    from diffshot.features import load_features, read_features

    rows, predicted, classes = _predictions(payload, source)
    if rows.size == 0:
        raise DiffshotError(f"{source}: holds no predictions")
    query = load_features(labels)
    if rows.min() < 0 or rows.max() >= query.num_rows:
        raise DiffshotError(f"{source}: row {int(rows.max())} is beyond the {query.num_rows} rows of {labels}")
    if classes is None and support is not None:
        classes = list(read_features(support).class_names)
    unknown_name = _unknown_name(payload)
    truth = [query.class_names[c] for c in query.labels[rows]]
    confusion = confusion_counts(predicted, truth, classes, unknown_name)
    accuracy = confusion.known_accuracy
    parts = [f"{source.name} against the labels of {labels.name}"]
    if accuracy is not None:
        parts.append(f"accuracy {accuracy:.2f}% on the {confusion.known_rows} rows of support classes")
    if confusion.unknown_rows:
        recall = confusion.own()[confusion.known :].sum() / confusion.unknown_rows * 100
        parts.append(f"{confusion.unknown_rows} rows of other classes, {recall:.1f}% rejected")
    shown = confusion
    if confusion.known > MAX_ROWS:
        shown = top_confused(confusion)
        parts.append(f"the {shown.known} of {confusion.known} classes with the most errors")
    title = " · ".join(parts[:2]) + ("\n" + " · ".join(parts[2:]) if parts[2:] else "")
    drawn = figures.confusion_figure(shown.counts, shown.rows, title, shown.columns)
    drawn.data.update(known_accuracy=accuracy, known=shown.known, all_rows=confusion.rows)
    return drawn


def _unknown_name(payload: object) -> str:
    """The class name predict gave rejected rows (a JSON says it; a CSV's default is ``unknown``)."""
    if isinstance(payload, dict) and isinstance(payload.get("reject"), dict):
        return str(payload["reject"].get("unknown_name", "unknown"))
    return "unknown"


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
    support: Path | None = None,
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
        return kind, draw_predict(payload, path, None if labels is None else Path(labels), support)
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
