"""The client side of the Hub round trip, run in its own process with ``HF_ENDPOINT`` pointing at
the loopback Hub (``huggingface_hub`` and ``datasets`` read it at import): one step per call,
``python hub_client.py STEP JSON_ARGS``, printing a JSON result on its last line."""

import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path


def push(out: str, namespace: str) -> dict:
    from bioscan5m_hf.hub.push import push

    result = push(out, namespace, echo=lambda line: None)
    return {"commits": result.commits}


def load_dataset(repo_id: str, config: str, split: str) -> dict:
    import datasets

    ds = datasets.load_dataset(repo_id, config, split=split, streaming=True)
    keys = [r["__key__"] if "__key__" in r else r["processid"] for r in ds]
    return {"keys": keys, "features": sorted(ds.features)}


def bioscan(root: str, split: str) -> dict:
    from bioscan5m_hf import BIOSCAN5M

    ds = BIOSCAN5M(root, split=split, modality=("image", "dna"), target_type="species")
    records = [ds[i] for i in range(len(ds))]
    return {"records": [[image.size, dna, int(target)] for image, dna, target in records]}


def loader(root: str, split: str) -> dict:
    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    batches = make_loader(StreamingBIOSCAN5M(root, split, shuffle=True, seed=1), batch_size=4, num_workers=2,
                          image_size=32)
    return {"processids": [p for b in batches for p in b["processid"]]}


def python_blocks(markdown: str) -> list[str]:
    """The fenced ``python`` code blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def snippets(folder: str, docs: dict[str, str], cards: list[str]) -> dict:
    """Run every Python block of ``docs`` (name -> Markdown) and of the cards of the Hub repos
    ``cards`` (downloaded as a user's client would), each in a fresh namespace, in ``folder``: the
    outcome of each, and the traceback of each failure. A block that imports a library not installed
    here (DALI) is reported as skipped, naming it."""
    from huggingface_hub import hf_hub_download

    for repo_id in cards:
        docs[f"{repo_id} card"] = Path(hf_hub_download(repo_id, "README.md", repo_type="dataset")).read_text()
    os.chdir(folder)
    results = []
    for name, markdown in docs.items():
        for k, code in enumerate(python_blocks(markdown)):
            where = f"{name}, python block {k + 1}"
            try:
                exec(compile(code, where, "exec"), {"__name__": "__main__"})
                results.append({"where": where, "outcome": "passed"})
            except ModuleNotFoundError as e:
                if e.name and e.name.split(".")[0] in ("nvidia",):
                    results.append({"where": where, "outcome": f"skipped: {e.name} is not installed"})
                else:
                    results.append({"where": where, "outcome": "failed", "error": traceback.format_exc()})
            except Exception:  # noqa: BLE001 - reported with its traceback
                results.append({"where": where, "outcome": "failed", "error": traceback.format_exc()})
    return {"results": results}


def client_env(hub, home: Path) -> dict:
    """The environment of a client process pointed at the loopback Hub ``hub``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HOME=str(home), HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1",
               HF_HOME=str(home / "hf"), HF_DATASETS_CACHE=str(home / "datasets"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    return env


def run(hub, home: Path, step: str, **args) -> dict:
    """One step of this client in its own process, pointed at ``hub``: its JSON result."""
    result = subprocess.run([sys.executable, __file__, step, json.dumps(args)], env=client_env(hub, home),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    step, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[step](**args)))
