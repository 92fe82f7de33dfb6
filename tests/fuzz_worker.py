"""Runs fuzz cases through the Python API in a child process (so that a crash by signal
would fail the test instead of killing pytest), under the memory limit the test sets.

    python fuzz_worker.py CASES.json    →  one JSON line per case on stdout

A case is {"id", "kind": "model"|"image", "path", "model", "exact"}: a model case opens
`path` and classifies the photo `image`; an image case classifies `path` with `model`.
Outcome per case: "result" (top index; for a model case the whole top-5 answer), "error" (the exception's type and message) or
"unexpected" (any other exception, with its traceback's last line).
"""
from __future__ import annotations

import json
import sys
import traceback
import warnings

from effnet_lite import (BackendUnavailableError, Classifier, ClassifierOptions, ImageError,
                     ModelError)
from effnet_lite.benchmarks.peak_memory import own_peak_rss_mb

EXPECTED = {"model": (ModelError, BackendUnavailableError), "image": (ImageError,)}


def run(case: dict, classifiers: dict) -> dict:
    kind = case["kind"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if kind == "model":
                with Classifier.from_file(case["path"], ClassifierOptions(num_threads=1)) as clf:
                    result = clf.classify(case["image"])
                    top = result.categories[0].index
                    answer = [[c.index, c.label, round(c.score, 6)] for c in result.categories]
            else:
                key = (case["model"], bool(case.get("exact")))
                if key not in classifiers:
                    classifiers[key] = Classifier.from_file(
                        case["model"], ClassifierOptions(num_threads=1, exact=key[1]))
                top, answer = classifiers[key].classify(case["path"]).categories[0].index, None
        return {"outcome": "result", "top": top, "answer": answer, "warnings": [str(w.message) for w in caught]}
    except EXPECTED[kind] as e:
        return {"outcome": "error", "type": type(e).__name__, "message": str(e)}
    except Exception as e:  # noqa: BLE001 - the point: report anything else
        return {"outcome": "unexpected", "type": type(e).__name__,
                "message": traceback.format_exception_only(e)[-1].strip()}


def main() -> None:
    cases = json.load(open(sys.argv[1]))
    classifiers = {}
    for case in cases:
        print(json.dumps({"id": case["id"], **run(case, classifiers)}), flush=True)
    print(json.dumps({"id": "<done>", "maxrss_mb": own_peak_rss_mb()}), flush=True)   # its own, not pytest's


if __name__ == "__main__":
    main()
