"""Writing a run's results: results.json (everything), results.md (tables), one PNG per scenario."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .runner import ScenarioResult

__all__ = ["write_report", "markdown"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(result: ScenarioResult) -> list[str]:
    cols = list(result.columns)
    # min/max columns exist only when repeats > 1; show them next to their metric.
    for row in result.rows:
        for key in row:
            if key.endswith(("_min", "_max")) and key not in cols and key[:-4] in cols:
                cols.insert(cols.index(key[:-4]) + 1, key)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in result.rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    return lines


def markdown(meta: dict[str, Any], results: list[ScenarioResult]) -> str:
    m = meta["machine"]
    out = [
        f"# imgproxy benchmark — {meta['started']}",
        "",
        f"Mode: {'quick' if meta['quick'] else 'full'}; {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, "
        f"kernel {m['kernel']}, Python {m['python']}, nginx {m['nginx']}; commit {meta.get('commit', '?')}; "
        f"wall {meta.get('wall_s', '?')} s.",
    ]
    if meta.get("hash_speed"):
        out.append(f"Hashing on one core (MB/s): {meta['hash_speed']}.")
    for r in results:
        out += ["", f"## {r.name}: {r.title}", ""] + _table(r)
        for note in r.notes:
            out.append(f"\n_{note}_")
        for failure in r.failures:
            out.append(f"\n**FAILED: {failure}**")
    return "\n".join(out) + "\n"


def _panels(spec: dict[str, Any]) -> list[dict[str, str]]:
    """A plot spec's panels: ``panels`` (a list of ``{"y", "ylabel"}``) or its one ``y``."""
    panels = spec.get("panels")
    if panels:
        return list(panels)
    return [{"y": spec["y"], "ylabel": spec.get("ylabel", spec["y"])}] if spec.get("y") else []


def _caption(meta: dict[str, Any]) -> str:
    m = meta.get("machine", {})
    return (f"{m.get('cores', '?')} cores ({m.get('cpu', '?')}), {m.get('ram_gib', '?')} GiB; "
            f"commit {meta.get('commit', '?')}; {meta.get('started', '')}")


def _plot(result: ScenarioResult, path: Path, meta: dict[str, Any]) -> bool:
    """One row of bar panels (one per metric), systems side by side, named by machine and commit."""
    spec = result.plot
    if not spec:
        return False
    panels = _panels(spec)
    ok_rows = [r for r in result.rows if str(r.get("status", "ok")) == "ok"]
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    measured = [p for p in panels if any(isinstance(r.get(p["y"]), (int, float)) for r in ok_rows)]
    if not measured:  # still write the file, so a reader sees the scenario ran and produced nothing
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{result.name}: no system produced a measurement", ha="center", va="center")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return True

    fig, axes = plt.subplots(1, len(measured), figsize=(6 * len(measured), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], measured):
        rows = [r for r in ok_rows if isinstance(r.get(panel["y"]), (int, float))]
        # x values in the order the scenario measured them (N ascending, runs as listed).
        xs = list(dict.fromkeys(r.get(spec["x"]) for r in rows)) if spec.get("x") else [""]
        series = list(dict.fromkeys(str(r.get(spec["series"])) for r in rows))
        width = 0.8 / max(1, len(series))
        for i, s in enumerate(series):
            ys = []
            for x in xs:
                match = [r[panel["y"]] for r in rows
                         if str(r.get(spec["series"])) == s and (not spec.get("x") or r.get(spec["x"]) == x)]
                ys.append(match[0] if match else 0)
            bars = ax.bar([j + i * width for j in range(len(xs))], ys, width, label=s)
            ax.bar_label(bars, fmt="%.3g", fontsize="x-small")
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(xs))], [str(x) for x in xs],
                      fontsize="small")
        ax.set_xlabel(spec.get("x", ""))
        ax.set_ylabel(panel.get("ylabel", panel["y"]))
        ax.set_title(panel.get("ylabel", panel["y"]), fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{result.name}: {result.title}\n{_caption(meta)}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(out: Path, meta: dict[str, Any], results: list[ScenarioResult]) -> dict[str, Path]:
    """Write results.json, results.md and ``<scenario>.png``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "scenarios": [asdict(r) for r in results]}, indent=2, default=str))
    paths["md"].write_text(markdown(meta, results))
    for r in results:
        png = out / f"{r.name}.png"
        if _plot(r, png, meta):
            paths[r.name] = png
    return paths
