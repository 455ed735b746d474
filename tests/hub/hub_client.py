"""The client side of the Hub round trip, run in its own process with ``HF_ENDPOINT`` pointing at
the loopback Hub (``huggingface_hub`` and ``datasets`` read it at import): one step per call,
``python hub_client.py STEP JSON_ARGS``, printing a JSON result on its last line."""

import json
import sys


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
    return {"records": [[image.size, dna, target] for image, dna, target in records]}


def loader(root: str, split: str) -> dict:
    from bioscan5m_hf import make_loader

    batches = make_loader(root, split, batch_size=4, num_workers=2, image_size=32, shuffle=True, seed=1)
    return {"processids": [p for b in batches for p in b["processid"]]}


if __name__ == "__main__":
    step, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[step](**args)))
