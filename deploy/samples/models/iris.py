"""Trains the demo's iris classifier and packs it the way MLServer's scikit-learn runtime
loads it: a `.tar.gz` holding `model.joblib` and `model-settings.json`.

    python3 iris.py OUT.tar.gz [VERSION]

Runs where scikit-learn and MLServer are installed (the model-server image: deploy/demo.sh
runs it there, so the pickle matches the server that loads it). The result is byte-for-byte
reproducible (a decision tree needs no random numbers or BLAS; the archive has fixed times,
owners and order), so its sha256 can be pinned in the sample manifest.
"""

import gzip
import io
import json
import sys
import tarfile

import joblib
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier


def main() -> None:
    out = sys.argv[1]
    version = sys.argv[2] if len(sys.argv) > 2 else "v1"
    features, labels = load_iris(return_X_y=True)
    depth = 3 if version == "v1" else 2
    model = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(features, labels)

    pickled = io.BytesIO()
    joblib.dump(model, pickled)
    # No "name": the server takes it from MLSERVER_MODEL_NAME, which the operator sets to the
    # MLModel's name, so the artifact serves under any name.
    settings = {
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
    }
    files = {
        "model-settings.json": (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(),
        "model.joblib": pickled.getvalue(),
    }

    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(packed.getvalue())


if __name__ == "__main__":
    main()
