"""The coordinate check's verdict: do the measured scales stay flat over width and over depth?

For each parameterization (and optimizer) the log2-log2 slope against width (at the cross's depth)
and against depth (at its width) of four scales after the last step, averaged over seeds: the last
block's output h, its update Δh since initialisation, the logits' update, and the MLP hidden layer's
own update ΔW1 x averaged over the blocks. Under a parameterization that transfers each stays Θ(1),
slope 0; one wrong rule makes some scale grow like a power of the size (no 1/r_n output multiplier:
the logits' update grows with width; no 1/r_L block multiplier: the residual stream grows with depth;
SP's hidden lr on muP: ΔW1 x grows ~ sqrt(r_n); k = 1's rules on these k = 2 blocks: ΔW1 x shrinks
~ 1/sqrt(r_L), the inner layer stops learning features as the model deepens, C2.3). The verdict
keeps a margin between the two sides: every |slope| at most FLAT is "flat", any |slope| from STEEP up
is "not flat", and anything between is "unclear".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLAT = 0.2
STEEP = 0.35

# (name, site, which block: -1 the last, None the logits, ALL every block (their mean), column)
ALL = "all"
SCALES = (("h (last block)", "block", -1, "rms"),
          ("Δh (last block)", "block", -1, "delta_rms"),
          ("Δlogits", "logits", None, "delta_rms"),
          ("ΔW1·x (MLP, every block)", "mlp_update", ALL, "rms"))


@dataclass
class Verdict:
    param: str
    optimizer: str
    slopes: dict[tuple[str, str], float]  # (axis, scale name) -> log2-log2 slope
    verdict: str  # "flat" | "not flat" | "unclear"

    def worst(self) -> tuple[tuple[str, str], float]:
        return max(self.slopes.items(), key=lambda item: abs(item[1]))


def _final(rows: list[dict]) -> list[dict]:
    last = {}
    for r in rows:
        cell = (r["param"], r["optimizer"], r["width"], r["depth"])
        last[cell] = max(last.get(cell, -1), r["step"])
    return [r for r in rows if r["step"] == last[(r["param"], r["optimizer"], r["width"], r["depth"])]]


def _slope(points: dict[int, list[float]]) -> float:
    sizes = sorted(points)
    means = [np.mean(points[s]) for s in sizes]
    return float(np.polyfit(np.log2(sizes), np.log2(means), 1)[0])


def final_points(rows: list[dict]) -> dict[tuple[str, str], dict[tuple[str, str], dict[int, list[float]]]]:
    """Per (param, optimizer): per (axis, scale name), each size's values after the last step (one per
    seed), widths at the cross's depth and depths at its width. A scale the rows do not hold (an
    older file: block rows without delta_rms) is left out."""
    final = _final(rows)
    out = {}
    for param, optimizer in dict.fromkeys((r["param"], r["optimizer"]) for r in final):
        own = [r for r in final if r["param"] == param and r["optimizer"] == optimizer]
        width0, depth0 = min(r["width"] for r in own), min(r["depth"] for r in own)
        found = {}
        for axis, other, fixed in (("width", "depth", depth0), ("depth", "width", width0)):
            for name, site, block, column in SCALES:
                points: dict[int, list[float]] = {}
                for r in own:
                    if r[other] == fixed and r.get("site", "block") == site and column in r and \
                            (block in (None, ALL) or r["block"] == r["depth"] + block):
                        points.setdefault(r[axis], []).append(r[column])
                if len(points) > 1:
                    found[(axis, name)] = points
        out[(param, optimizer)] = found
    return out


def verdicts(rows: list[dict]) -> list[Verdict]:
    """One verdict per (param, optimizer) in rows (written by trainer.coord_check)."""
    out = []
    for (param, optimizer), found in final_points(rows).items():
        slopes = {scale: _slope(points) for scale, points in found.items()}
        worst = max((abs(s) for s in slopes.values()), default=None)
        verdict = ("unclear" if worst is None else "flat" if worst <= FLAT
                   else "not flat" if worst >= STEEP else "unclear")
        out.append(Verdict(param, optimizer, slopes, verdict))
    return out


def verdict_text(found: list[Verdict]) -> str:
    lines = [f"coordinate check: log2-log2 slopes after the last step (flat: every |slope| <= {FLAT}; "
             f"not flat: any >= {STEEP}; between: unclear)"]
    for v in found:
        if not v.slopes:
            lines.append(f"  {v.param} ({v.optimizer}): unclear (one size only: nothing to compare)")
            continue
        (axis, name), slope = v.worst()
        parts = ", ".join(f"{a} {n} {s:+.2f}" for (a, n), s in v.slopes.items())
        lines.append(f"  {v.param} ({v.optimizer}): {v.verdict} (steepest: {name} over {axis} {slope:+.2f}); {parts}")
    return "\n".join(lines)
