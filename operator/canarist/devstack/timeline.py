"""The demo's timeline picture: the shadow phase, canary weight, canary error rate and judge score
over time, and the comparison gates' evidence toward rollback and toward promotion against the
threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Timeline:
    """Samples taken about once a second while the demo runs; `marks` are labelled moments."""

    t: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    error_rate: list[float | None] = field(default_factory=list)
    judge_score: list[float | None] = field(default_factory=list)
    rollback_evidence: list[float | None] = field(default_factory=list)
    promote_evidence: list[float | None] = field(default_factory=list)
    threshold: float | None = None
    shadow: list[bool] = field(default_factory=list)  # the release was in its shadow phase
    marks: list[tuple[float, str, str, float]] = field(default_factory=list)  # (t, label, colour, height)

    def add(self, t: float, weight: float, error_rate: float | None, judge_score: float | None,
            rollback: float | None = None, promote: float | None = None, threshold: float | None = None,
            shadow: bool = False) -> None:
        self.t.append(t)
        self.weight.append(weight)
        self.error_rate.append(error_rate)
        self.judge_score.append(judge_score)
        self.rollback_evidence.append(rollback)
        self.promote_evidence.append(promote)
        self.threshold = threshold or self.threshold
        self.shadow.append(shadow)

    def shadow_spans(self) -> list[tuple[float, float]]:
        """(start, end) of each stretch sampled in shadow."""
        spans: list[tuple[float, float]] = []
        start = None
        for i, (t, on) in enumerate(zip(self.t, self.shadow)):
            if on and start is None:
                start = t
            if start is not None and (not on or i == len(self.t) - 1):
                spans.append((start, t))
                start = None
        return spans

    def mark(self, t: float, label: str, colour: str = "tab:gray", height: float = 100) -> None:
        self.marks.append((t, label, colour, height))

    def render(self, path: Path, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt

        evidence = self.threshold is not None and any(v is not None for v in self.rollback_evidence)
        if evidence:
            fig, (top, bottom, proof) = plt.subplots(3, 1, sharex=True, figsize=(11, 9), height_ratios=[1.2, 1, 1])
        else:
            fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), height_ratios=[1.2, 1])
        top.step(self.t, self.weight, where="post", color="tab:orange", linewidth=2)
        top.fill_between(self.t, self.weight, step="post", color="tab:orange", alpha=0.15)
        top.set_ylabel("canary weight (%)")
        top.set_ylim(0, 105)
        top.set_title(title)

        def gaps(values):  # NaN breaks the line where there was no rollout to measure
            return [float("nan") if v is None else v for v in values]

        bottom.plot(self.t, gaps(self.judge_score), "o-", color="tab:blue", markersize=3,
                    label="judge: share of head-to-head comparisons the canary lost")
        bottom.plot(self.t, gaps(self.error_rate), "s-", color="tab:red", markersize=3, label="error rate (canary)")
        bottom.set_ylim(-0.05, 1.05)
        bottom.legend(loc="lower left")
        axes = [top, bottom]
        if evidence:
            proof.semilogy(self.t, gaps(self.rollback_evidence), "-", color="tab:red", label="evidence of a regression")
            proof.semilogy(self.t, gaps(self.promote_evidence), "-", color="tab:green",
                           label="evidence of being within tolerance")
            proof.axhline(self.threshold, color="black", linestyle=":", label=f"decision threshold {self.threshold:g}")
            proof.set_ylabel("e-value (log scale)")
            proof.legend(loc="upper left", fontsize=8)
            axes.append(proof)
        axes[-1].set_xlabel("seconds since the demo started")
        for n, (start, end) in enumerate(self.shadow_spans()):
            for axis in axes:  # the canary answered mirrored requests only: no user saw its answers
                axis.axvspan(start, end, color="tab:purple", alpha=0.12, label="shadow (mirrored only)" if n == 0 and
                             axis is top else None)
            top.annotate("shadow", (start, 50), xytext=(2, 0), textcoords="offset points", color="tab:purple",
                         fontsize=9, fontweight="bold")
        for t, label, colour, height in self.marks:
            for axis in axes:
                axis.axvline(t, color=colour, linestyle="--", linewidth=1.2)
            top.annotate(label, (t, height), xytext=(4, -14), textcoords="offset points", color=colour,
                         fontsize=9, fontweight="bold")
        for axis in axes:
            axis.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
