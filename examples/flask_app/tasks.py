"""The example's task: runs inside the Flask app context (`current_app` works), reports progress and logs."""

from __future__ import annotations

from collections import Counter

from flask import current_app

from decortask import TaskContext, task, task_log


@task(retries=1, delay=0.5)
def summarize(ctx: TaskContext, text: str) -> dict[str, object]:
    """Count the words of `text` and find the most common ones."""
    top = int(current_app.config["SUMMARY_TOP_WORDS"])  # the app context is active inside every task
    task_log(f"summarizing: {text[:60]}")
    words = [word.strip(".,;:!?\"'()").lower() for word in text.split()]
    counts: Counter[str] = Counter()
    step = max(1, len(words) // 4)
    for start in range(0, len(words), step):
        counts.update(word for word in words[start : start + step] if word)
        ctx.set_progress(min(1.0, (start + step) / len(words)), f"{min(start + step, len(words))} words")
    common = [word for word, _ in counts.most_common(top)]
    task_log("done", words=len(words), common=", ".join(common))
    return {"words": len(words), "common": common}
