"""Whole-history training windows: every event of a user's stored history becomes a supervised
position once per epoch, not only the last `max_len`.

A generative training row is the user's most recent `max_len` events, so a user with 10^4
events contributes `max_len` supervised positions and the rest of the history is never a
label. With `data.train_windows`, each training sample is cut into rows of at most `max_len`
events that end at `n, n − s, n − 2s, …` (n = stored events, stride s = `max_len − context`):

    window k = history[max(0, e_k − max_len) : e_k],  e_k = n − k·s
    supervised positions: the last s of the window (all of the first window)

so the supervised parts tile the history exactly, and each supervised position sees at least
`context` earlier events of its own history (or all of them, near the start). The label of a
window's last position is the event that follows it (`history[e_k]`), given as a one-target
sample, so the collate code labels it as it labels any row. Evaluation never uses windows.

Cost: each event is encoded in about `max_len / s` rows, so a window's context costs compute;
`context: 0` gives disjoint windows (models whose state does not need earlier events).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifeseq.pipeline.sample_codec import UserSample


@dataclass(frozen=True)
class TrainingWindows:
    """YAML `data.train_windows:`.

    Attributes:
        context: leading events of each window (but the first) that only give context and are
            not supervised; None = half of `max_len`. Must be < `max_len`.
    """

    context: int | None = None

    def __post_init__(self) -> None:
        if self.context is not None and (
            not isinstance(self.context, int) or isinstance(self.context, bool) or self.context < 0
        ):
            raise ValueError(
                f"data.train_windows.context: expected an int >= 0 or null, got {self.context!r}"
            )

    def stride(self, max_len: int) -> int:
        """Supervised positions per window, `max_len − context`.

        Raises:
            ValueError: `context` >= `max_len` (no position would be supervised).
        """
        context = max_len // 2 if self.context is None else self.context
        if context >= max_len:
            raise ValueError(
                f"data.train_windows.context: {context} leaves no supervised position in windows "
                f"of data.max_len {max_len}; use a context < max_len"
            )
        return max_len - context


def window_ends(stored: int, stride: int) -> list[int]:
    """Ends of a history of `stored` events' windows, oldest first: `stored − k·stride` > 0."""
    return sorted(range(stored, 0, -stride))


def window_samples(
    samples: list[UserSample], max_len: int, windows: TrainingWindows
) -> tuple[list[UserSample], np.ndarray]:
    """Cut each training sample into whole-history windows (see the module docstring).

    Args:
        samples: decoded training samples, one per user.
        max_len: events per row.
        windows: the context setting.

    Returns:
        (window samples, oldest first per user; (R,) int64 leading context-only positions of
        each window's row once capped at `max_len`). A window sample shares its user's arrays
        (views, no copies); all but a user's last window carry one positive target, the event
        after the window, and the last keeps the sample's own targets.
    """
    stride = windows.stride(max_len)
    out: list[UserSample] = []
    context: list[int] = []
    for sample in samples:
        history = sample.history
        stored = int(history["item"].shape[0])
        ends = window_ends(stored, stride)
        for index, end in enumerate(ends):
            row = min(end, max_len)
            context.append(0 if index == 0 else row - (end - ends[index - 1]))
            if end == stored:
                out.append(sample)
                continue
            following = {
                "target_item": history["item"][end : end + 1],
                "target_category": history["category"][end : end + 1],
                "target_ts": history["ts"][end : end + 1],
                "target_label": np.ones(1, dtype=np.float32),
                "target_hist_len": np.array([end], dtype=np.int64),
            }
            window = {key: values[:end] for key, values in history.items()}
            out.append(UserSample(sample.user, sample.split, window, following))
        if not ends:  # an empty history: the sample as it is (no supervised position)
            out.append(sample)
            context.append(0)
    return out, np.asarray(context, dtype=np.int64)
